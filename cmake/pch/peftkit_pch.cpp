// The translation unit that carries cmake/pch/peftkit_pch.hpp's precompiled form.

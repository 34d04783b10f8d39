# One precompiled header of LibTorch's headers (cmake/pch/peftkit_pch.hpp), built once and reused by
# the core, the kernels' C++, the program, the benchmarks and the tests.
# Reuse needs the same compile flags as the target that built it; the plugins compile without it,
# since its declarations would carry default visibility into them and export LibTorch's inline
# functions that -fvisibility-inlines-hidden keeps inside (21 more exported symbols in lora.o).
# ccache caches these compiles with the sloppiness set in the top-level CMakeLists.txt.
option(PEFTKIT_PCH "Precompile LibTorch's headers once for the core, kernels, program and tests" ON)
# Two builds of it: libraries compile with -fPIC, programs with -fPIE, and GCC refuses a header
# precompiled with the other one.
if(PEFTKIT_PCH)
  foreach(kind library program)
    set(target peftkit_pch_for_${kind})
    add_library(${target} OBJECT ${CMAKE_CURRENT_LIST_DIR}/pch/peftkit_pch.cpp)
    target_link_libraries(${target} PRIVATE torch)
    target_precompile_headers(${target} PRIVATE ${CMAKE_CURRENT_LIST_DIR}/pch/peftkit_pch.hpp)
    # -Wpedantic changes the predefined macros (GCC then refuses the header), so the same warnings.
    peftkit_warnings(${target})
  endforeach()
  set_target_properties(peftkit_pch_for_program PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  target_compile_options(peftkit_pch_for_program PRIVATE -fPIE)
endif()

# Makes target compile with the shared precompiled header (nothing when PEFTKIT_PCH is OFF).
function(peftkit_precompiled target)
  if(PEFTKIT_PCH)
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      target_precompile_headers(${target} REUSE_FROM peftkit_pch_for_program)
    else()
      target_precompile_headers(${target} REUSE_FROM peftkit_pch_for_library)
    endif()
  endif()
endfunction()

# Sources (of the calling folder) that never see LibTorch compile without it: loading the 0.6 GB
# header costs them ten times their own compile (error.cpp: 0.9 s alone, 10 s with it), while a
# source that includes ATen compiles in a third of its time.
function(peftkit_without_pch)
  set_source_files_properties(${ARGN} PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
endfunction()

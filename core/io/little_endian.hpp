// little_endian.hpp (internal): appending fixed-size little-endian values to a byte buffer, for
// the binary formats peftkit writes (zip records, binidx indexes).
#pragma once

#include <string>
#include <type_traits>

namespace peftkit::io {

template <class T>
void append_le(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  out.append(reinterpret_cast<const char*>(&value),
             sizeof(T));  // x86-64 and ARM64 are little-endian
}

}  // namespace peftkit::io

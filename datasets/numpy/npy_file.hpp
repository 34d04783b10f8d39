// npy_file.hpp: a read-only, memory-mapped NumPy .npy array of token ids (spec formats §3.2).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "mapped_bytes.hpp"

namespace peftkit::numpy {

enum class TokenType { kUint16, kInt32, kInt64 };

class NpyFile {
 public:
  // Maps the file; throws peftkit::Error naming the file and the problem (magic, version, header,
  // dtype, byte order, Fortran order, size).
  explicit NpyFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return bytes_.path(); }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t element_count() const { return element_count_; }
  TokenType type() const { return type_; }
  std::string type_name() const;
  int version() const { return version_; }
  // Element `index` (flat, C order) as a 64-bit integer.
  int64_t at(int64_t index) const;
  // The raw little-endian elements and their size in bytes.
  const unsigned char* data() const { return data_; }
  int element_bytes() const;

 private:
  datasets::MappedBytes bytes_;
  const unsigned char* data_ = nullptr;
  std::vector<int64_t> shape_;
  int64_t element_count_ = 0;
  TokenType type_ = TokenType::kUint16;
  int version_ = 1;
};

}  // namespace peftkit::numpy

// mapped_bytes.hpp: a whole file mapped read-only, so a 20 GB dataset opens at once and costs
// page cache, not memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace peftkit::datasets {

class MappedBytes {
 public:
  // Throws peftkit::Error naming the file when it is missing, empty or cannot be mapped.
  explicit MappedBytes(const std::filesystem::path& path);
  ~MappedBytes();
  MappedBytes(const MappedBytes&) = delete;
  MappedBytes& operator=(const MappedBytes&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace peftkit::datasets

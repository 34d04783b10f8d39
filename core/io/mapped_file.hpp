// mapped_file.hpp (internal): a whole file mapped copy-on-write, shared by the tensors viewing it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

namespace peftkit::io {

class MappedFile {
 public:
  // Throws peftkit::Error naming the file when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  size_t size() const { return size_; }
  // Writable copy-on-write pages: writes stay private to this process.
  uint8_t* data() const { return data_; }

 private:
  MappedFile() = default;
  std::filesystem::path path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes a file atomically: `write` fills a temporary file beside `path`, which is then fsynced
// and renamed over `path`. On any error the temporary file is removed and `path` is untouched.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE*)>& write);

}  // namespace peftkit::io

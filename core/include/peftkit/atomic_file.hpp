// atomic_file.hpp: writing a file so that readers see the old one or the finished new one, never a
// half-written file (dataset writers, exports).
//
//   peftkit::AtomicFile bin("data.bin");   // writes into a temporary file beside it
//   bin.write(tokens.data(), tokens.size() * 2);
//   bin.commit();                           // fsync, then rename over data.bin
// Destroyed without commit() (an exception), the temporary file is removed and data.bin untouched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>

namespace peftkit {

class AtomicFile {
 public:
  // Throws peftkit::Error naming the path when the temporary file cannot be created.
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Writes every byte or throws naming the file, how far it got and the system's reason.
  void write(const void* data, size_t size);
  uint64_t bytes_written() const { return written_; }
  void commit();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_, temporary_;
  std::FILE* out_ = nullptr;
  uint64_t written_ = 0;
};

}  // namespace peftkit

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

// Throws peftkit::Error naming `path` (and `what` it should be, e.g. "recipe file") unless it is a
// regular file or a link to one: a FIFO or a device would block a reader forever or never end.
void require_regular_file(const std::filesystem::path& path, const std::string& what = "");

// The whole content of a small regular file (a recipe, a JSON config, a vocabulary), refusing one
// larger than `max_bytes`; `what` names it in messages ("recipe", "adapter config").
std::string read_small_file(const std::filesystem::path& path, size_t max_bytes,
                            const std::string& what);

// Writes a file atomically: `write` fills a temporary file beside `path`, which is then fsynced
// and renamed over `path`. On any error the temporary file is removed and `path` is untouched.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE*)>& write);

// The two halves of it, for writers that fill the file over many calls (peftkit::AtomicFile):
// a temporary file beside `path`, opened for writing; and its completion: flushed, fsynced, closed
// and renamed over `path`, or removed (and `path` untouched) when any of that fails. `out` is
// closed either way.
struct TemporaryFile {
  std::filesystem::path path;
  std::FILE* out = nullptr;
};
TemporaryFile open_temporary_beside(const std::filesystem::path& path);
void commit_temporary(TemporaryFile& file, const std::filesystem::path& path);
// Closes and removes it (after an error).
void discard_temporary(TemporaryFile& file);
// Removes the temporary files in `folder` left by writes of processes that no longer run (killed
// midway); a live process's file is left alone. Returns how many were removed.
int remove_stale_temporaries(const std::filesystem::path& folder);

// Writes all `size` bytes or throws peftkit::Error naming `path`, how far it got and the system's
// reason (e.g. "No space left on device").
void write_all(std::FILE* out, const void* data, size_t size, const std::filesystem::path& path);

// A text file that grows by whole, flushed lines (metrics.jsonl, train_log.txt); every append is
// checked and a failure names the file and the system's reason.
class AppendFile {
 public:
  explicit AppendFile(std::filesystem::path path);
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  void append(const std::string& text);

 private:
  std::filesystem::path path_;
  std::FILE* out_ = nullptr;
};

}  // namespace peftkit::io

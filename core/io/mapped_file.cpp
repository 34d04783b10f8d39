#include "io/mapped_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "peftkit/error.hpp"

namespace peftkit::io {

void require_regular_file(const std::filesystem::path& path, const std::string& what) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0)
    throw Error(path.string() + ": cannot open" + (what.empty() ? "" : " the " + what) + " (" +
                std::strerror(errno) + ")");
  if (!S_ISREG(info.st_mode))
    throw Error(path.string() + ": not a regular file (" +
                (S_ISDIR(info.st_mode)    ? "a folder"
                 : S_ISFIFO(info.st_mode) ? "a FIFO"
                                          : "a device or socket") +
                "); expected a file");
}

std::string read_small_file(const std::filesystem::path& path, size_t max_bytes,
                            const std::string& what) {
  require_regular_file(path, what);
  auto file = MappedFile::open(path);
  if (file->size() > max_bytes)
    throw Error(path.string() + ": the " + what + " is " + std::to_string(file->size()) +
                " bytes long; at most " + std::to_string(max_bytes) + " are read");
  return std::string(reinterpret_cast<const char*>(file->data()), file->size());
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  require_regular_file(path);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(path.string() + ": cannot open (" + std::strerror(errno) + ")");
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    ::close(fd);
    throw Error(path.string() + ": cannot stat (" + std::strerror(errno) + ")");
  }
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(info.st_size);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw Error(path.string() + ": cannot map (" + std::strerror(errno) + ")");
    }
    file->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);
  return file;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

TemporaryFile open_temporary_beside(const std::filesystem::path& path) {
  std::random_device random;
  TemporaryFile file{path.string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                     std::to_string(random())};
  file.out = std::fopen(file.path.c_str(), "wb");
  if (!file.out)
    throw Error(path.string() + ": cannot create " + file.path.string() + " (" +
                std::strerror(errno) + ")");
  return file;
}

int remove_stale_temporaries(const std::filesystem::path& folder) {
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    // open_temporary_beside's names: <final name>.tmp-<pid>-<random>
    const std::string name = entry.path().filename().string();
    const size_t at = name.rfind(".tmp-");
    if (at == std::string::npos) continue;
    const std::string rest = name.substr(at + 5);
    const size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || rest.find_first_not_of("0123456789") != dash ||
        rest.find_first_not_of("0123456789", dash + 1) != std::string::npos)
      continue;
    const long pid = std::strtol(rest.substr(0, dash).c_str(), nullptr, 10);
    const bool alive =
        pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
    if (alive || !entry.is_regular_file(ec)) continue;
    removed += std::filesystem::remove(entry.path(), ec) ? 1 : 0;
  }
  return removed;
}

void discard_temporary(TemporaryFile& file) {
  if (file.out) std::fclose(file.out);
  file.out = nullptr;
  std::error_code ec;
  std::filesystem::remove(file.path, ec);
}

void commit_temporary(TemporaryFile& file, const std::filesystem::path& path) {
  if (std::ferror(file.out) || std::fflush(file.out) != 0 || ::fsync(::fileno(file.out)) != 0) {
    const int error = errno;
    discard_temporary(file);
    throw Error(path.string() + ": writing failed (" + std::strerror(error) + ")");
  }
  const bool closed = std::fclose(file.out) == 0;
  const int error = errno;
  file.out = nullptr;
  if (!closed) {
    discard_temporary(file);
    throw Error(path.string() + ": closing failed (" + std::strerror(error) + ")");
  }
  std::error_code ec;
  std::filesystem::rename(file.path, path, ec);
  if (ec) {
    discard_temporary(file);
    throw Error(path.string() + ": cannot rename the finished file into place (" + ec.message() +
                ")");
  }
}

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE*)>& write) {
  TemporaryFile file = open_temporary_beside(path);
  try {
    write(file.out);
  } catch (...) {
    discard_temporary(file);
    throw;
  }
  commit_temporary(file, path);
}

void write_all(std::FILE* out, const void* data, size_t size, const std::filesystem::path& path) {
  if (size == 0) return;
  errno = 0;
  const size_t written = std::fwrite(data, 1, size, out);
  if (written != size)
    throw Error(path.string() + ": writing failed after " + std::to_string(written) + " of " +
                std::to_string(size) + " bytes (" +
                (errno ? std::strerror(errno) : "unknown reason") + ")");
}

AppendFile::AppendFile(std::filesystem::path path) : path_(std::move(path)) {
  out_ = std::fopen(path_.c_str(), "ab");
  if (!out_)
    throw Error(path_.string() + ": cannot open for appending (" + std::strerror(errno) + ")");
}

AppendFile::~AppendFile() {
  if (out_) std::fclose(out_);
}

void AppendFile::append(const std::string& text) {
  write_all(out_, text.data(), text.size(), path_);
  if (std::fflush(out_) != 0)
    throw Error(path_.string() + ": writing failed (" + std::strerror(errno) + ")");
}

}  // namespace peftkit::io

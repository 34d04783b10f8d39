#include "io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "peftkit/error.hpp"

namespace peftkit::io {

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE*)>& write) {
  std::random_device random;
  const std::filesystem::path temporary =
      path.string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(random());
  std::FILE* out = std::fopen(temporary.c_str(), "wb");
  if (!out) throw Error(path.string() + ": cannot create " + temporary.string() + " (" +
                        std::strerror(errno) + ")");
  try {
    write(out);
    if (std::fflush(out) != 0 || ::fsync(::fileno(out)) != 0)
      throw Error(path.string() + ": writing failed (" + std::strerror(errno) + ")");
    if (std::fclose(out) != 0) {
      out = nullptr;
      throw Error(path.string() + ": closing failed (" + std::strerror(errno) + ")");
    }
    out = nullptr;
    std::error_code ec;
    std::filesystem::rename(temporary, path, ec);
    if (ec) throw Error(path.string() + ": cannot rename the finished file into place (" + ec.message() + ")");
  } catch (...) {
    if (out) std::fclose(out);
    std::error_code ec;
    std::filesystem::remove(temporary, ec);
    throw;
  }
}

}  // namespace peftkit::io

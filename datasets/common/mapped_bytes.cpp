#include "mapped_bytes.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "peftkit/error.hpp"

namespace peftkit::datasets {

MappedBytes::MappedBytes(const std::filesystem::path& path) : path_(path) {
  const std::string where = path.string();
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(where + ": cannot open (" + std::strerror(errno) + ")");
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw Error(where + ": not a regular file (a folder, FIFO or device); expected a data file");
  }
  if (info.st_size == 0) {
    ::close(fd);
    throw Error(where + ": the file is empty");
  }
  size_ = static_cast<size_t>(info.st_size);
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw Error(where + ": cannot map the file (" + std::strerror(errno) + ")");
  data_ = static_cast<uint8_t*>(p);
}

MappedBytes::~MappedBytes() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace peftkit::datasets

#include "peftkit/atomic_file.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <string>

#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"

namespace peftkit {

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  std::random_device random;
  temporary_ =
      path_.string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(random());
  out_ = std::fopen(temporary_.c_str(), "wb");
  if (!out_)
    throw Error(path_.string() + ": cannot create " + temporary_.string() + " (" +
                std::strerror(errno) + ")");
}

AtomicFile::~AtomicFile() {
  if (!out_) return;
  std::fclose(out_);
  std::error_code ec;
  std::filesystem::remove(temporary_, ec);
}

void AtomicFile::write(const void* data, size_t size) {
  if (!out_) throw Error(path_.string() + ": written to after it was committed");
  io::write_all(out_, data, size, path_);
  written_ += size;
}

void AtomicFile::commit() {
  if (!out_) throw Error(path_.string() + ": committed twice");
  const bool failed = std::ferror(out_) || std::fflush(out_) != 0 || ::fsync(::fileno(out_)) != 0;
  const int error = errno;
  const bool closed = std::fclose(out_) == 0;
  out_ = nullptr;
  std::error_code ec;
  if (failed || !closed) {
    std::filesystem::remove(temporary_, ec);
    throw Error(path_.string() + ": writing failed (" + std::strerror(failed ? error : errno) +
                ")");
  }
  std::filesystem::rename(temporary_, path_, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(temporary_, ignored);
    throw Error(path_.string() + ": cannot rename the finished file into place (" + ec.message() +
                ")");
  }
}

}  // namespace peftkit

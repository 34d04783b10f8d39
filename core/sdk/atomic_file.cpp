#include "peftkit/atomic_file.hpp"

#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"

namespace peftkit {

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  io::TemporaryFile file = io::open_temporary_beside(path_);
  temporary_ = file.path;
  out_ = file.out;
}

AtomicFile::~AtomicFile() {
  io::TemporaryFile file{temporary_, out_};
  if (out_) io::discard_temporary(file);
}

void AtomicFile::write(const void* data, size_t size) {
  if (!out_) throw Error(path_.string() + ": written to after it was committed");
  io::write_all(out_, data, size, path_);
  written_ += size;
}

void AtomicFile::commit() {
  if (!out_) throw Error(path_.string() + ": committed twice");
  io::TemporaryFile file{temporary_, out_};
  out_ = nullptr;  // commit_temporary closes it, whatever happens
  io::commit_temporary(file, path_);
}

}  // namespace peftkit

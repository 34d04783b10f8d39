// pth_file.hpp (internal): a .pth's tensors together with the metadata peftkit recorded in it.
#pragma once

#include <filesystem>

#include "peftkit/tensor_io.hpp"

namespace peftkit::io {

TensorFile read_pth_file(const std::filesystem::path& path, Checksums checksums);

}  // namespace peftkit::io

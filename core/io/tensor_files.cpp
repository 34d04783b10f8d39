#include <ATen/ATen.h>

#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit {

void require_finite(const TensorMap& tensors, const std::string& where) {
  for (const auto& [name, tensor] : tensors) {
    if (!at::isFloatingType(tensor.scalar_type()) || tensor.numel() == 0) continue;
    const at::Tensor bad = at::logical_not(at::isfinite(tensor));
    const int64_t count = bad.sum().item<int64_t>();
    if (count > 0)
      throw Error(where + ": tensor '" + name + "' holds " + std::to_string(count) +
                  " non-finite value(s) (NaN or "
                  "infinity) of " +
                  std::to_string(tensor.numel()) + "; a damaged or diverged file cannot be used");
  }
}

void write_text_file(const std::filesystem::path& path, const std::string& text) {
  io::write_file_atomically(
      path, [&](std::FILE* out) { io::write_all(out, text.data(), text.size(), path); });
}

}  // namespace peftkit

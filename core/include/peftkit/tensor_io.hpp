// tensor_io.hpp: reading and writing named tensors in the files RWKV tools exchange.
//
//   .pth          PyTorch's zip archive with a pickled dict/OrderedDict of tensors, as
//                 torch.save(model.state_dict()) writes it. Only the data-only subset of pickle is
//                 read (what torch.load(weights_only=True) allows); anything else is refused,
//                 never executed.
//   .safetensors  the safetensors format (header rules checked strictly).
//
// Reading memory-maps the file: tensors are views of the mapping (copy-on-write, the file is never
// modified), so loading a model needs little more RAM than the tensors actually touched.
//
//   peftkit::TensorFile file = peftkit::read_tensor_file("rwkv7-0.1b.pth");
//   at::Tensor emb = file.tensors.at("emb.weight");
//   peftkit::write_safetensors("adapter.safetensors", tensors, {{"format", "pt"}});
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "peftkit/error.hpp"
#include "peftkit/model.hpp"

namespace peftkit {

struct TensorFile {
  TensorMap tensors;
  std::map<std::string, std::string> metadata;  // safetensors __metadata__; empty for .pth
};

// Chooses the format by content (zip magic or safetensors header); throws peftkit::Error naming
// the file and the problem.
TensorFile read_tensor_file(const std::filesystem::path& path);
TensorMap read_pth(const std::filesystem::path& path);
TensorFile read_safetensors(const std::filesystem::path& path);

// Writes atomically (a temporary file in the same folder, fsync, rename): an interrupted write
// never leaves a half-written file under the final name. Tensors may live on any device.
void write_pth(const std::filesystem::path& path, const TensorMap& tensors);
void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace peftkit

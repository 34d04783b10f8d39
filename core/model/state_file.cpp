#include "model/state_file.hpp"

#include <ATen/ATen.h>

#include <regex>

#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::model {

std::vector<at::Tensor> read_state_file(const std::filesystem::path& path,
                                        const ModelConfig& config) {
  const std::string where = path.string();
  TensorMap tensors = read_tensor_file(path).tensors;
  static const std::regex kName(R"(blocks\.(\d{1,9})\.att\.time_state)");
  std::vector<at::Tensor> states(static_cast<size_t>(config.n_layer));
  int64_t layers_in_file = 0;
  for (const auto& [name, tensor] : tensors) {
    std::smatch match;
    if (!std::regex_match(name, match, kName))
      throw Error(where + ": '" + name +
                  "' is not a state tensor (expected blocks.{i}.att.time_state only)");
    const int64_t layer = std::stoll(match[1]);
    layers_in_file = std::max(layers_in_file, layer + 1);
    const std::vector<int64_t> expected = {config.n_head, config.head_size, config.head_size};
    if (tensor.sizes() != at::IntArrayRef(expected))
      throw Error(where + ": " + name + " has shape " + c10::str(tensor.sizes()) +
                  " but the model (" + config.describe() + ") needs " +
                  c10::str(at::IntArrayRef(expected)) +
                  "; the state was trained on a base of another shape");
    if (layer < config.n_layer) states[layer] = tensor.to(at::kFloat);
  }
  if (layers_in_file != config.n_layer)
    throw Error(where + ": the state file has " + std::to_string(layers_in_file) +
                " layers but the model has " + std::to_string(config.n_layer) +
                "; the state was trained on a base of another shape");
  for (int64_t l = 0; l < config.n_layer; ++l)
    if (!states[l].defined())
      throw Error(where + ": missing blocks." + std::to_string(l) + ".att.time_state");
  return states;
}

}  // namespace peftkit::model

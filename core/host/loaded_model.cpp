#include "host/loaded_model.hpp"

#include <optional>

#include "host/quantization.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::host {

LoadedModel load_model(const std::filesystem::path& base, const std::vector<SavedAdapter>& adapters,
                       const PluginRegistry& plugins, model::ModelOptions options) {
  std::optional<QuantizedBase> quantization;
  std::string quantized_by;
  for (const auto& a : adapters) {
    if (!a.recipe || !a.recipe->quantizer) continue;
    QuantizedBase q = quantized_base(*a.recipe, plugins, base);
    q.cache_file.clear();  // read the run's pre-quantized base when it fits; never write one here
    if (quantization && (q.method != quantization->method || q.targets != quantization->targets ||
                         q.head != quantization->head || q.signature != quantization->signature))
      throw Error(a.description + " was trained on a base quantized with " + q.method + ", " +
                  quantized_by + " on one quantized with " + quantization->method +
                  "; mount them separately");
    if (!quantization) {
      quantization = std::move(q);
      quantized_by = a.description;
    }
  }
  if (quantization) quantization->apply(options);
  TensorMap weights = read_tensor_file(base).tensors;
  for (const auto& a : adapters) overlay_trained_weights(a, weights);
  LoadedModel loaded;
  loaded.model = std::make_unique<model::RwkvModel>(weights, options, base.string());
  const std::set<std::string> base_names = tensor_names(weights);
  weights.clear();
  for (const auto& a : adapters)
    for (auto& m : mount(a, *loaded.model, plugins, base_names)) loaded.methods.push_back(m);
  return loaded;
}

}  // namespace peftkit::host

// quantization.hpp (host-internal): a recipe's [quant] section turned into ModelOptions, and the
// pre-quantized base file ([quant] cache_file) that lets later runs skip quantizing.
//
//   QuantizedBase q = quantized_base(recipe, registry, model_path);   // loads the cache if it fits
//   ModelOptions options{dtype, device};
//   q.apply(options);
//   RwkvModel model(weights, options, model_path.string());
//   q.save_cache(model);                                               // when it was not loaded
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "model/rwkv_model.hpp"

namespace peftkit::host {

struct QuantizedBase {
  std::shared_ptr<const Quantizer> quantizer;  // null: [quant] method = "none"
  std::string method;
  std::vector<std::string> targets;
  bool head = false;
  std::filesystem::path cache_file;
  std::string signature;   // what the packed weights depend on: model file, method, its settings
  TensorMap prequantized;  // the cache's tensors when it matched
  bool cache_loaded = false;

  void apply(model::ModelOptions& options) const;
  // Writes the packed weights of `model` to cache_file unless they came from it.
  void save_cache(const model::RwkvModel& model) const;
};

QuantizedBase quantized_base(const Recipe& recipe, const PluginRegistry& plugins,
                             const std::filesystem::path& model);

}  // namespace peftkit::host

// loaded_model.hpp (host-internal): a base model with saved adapters mounted, as the commands that
// run a model use it (generate, eval, chat, compare).
//
//   LoadedModel m = load_model("base.pth", adapters_from(vm, registry), registry, {at::kBFloat16,
//   device}); m.model->forward(tokens);
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "host/adapters.hpp"
#include "model/rwkv_model.hpp"

namespace peftkit::host {

struct LoadedModel {
  std::unique_ptr<model::RwkvModel> model;
  std::vector<std::shared_ptr<PeftMethod>> methods;  // keep the adapters alive with the model
};

// The base file with the adapters' trained base tensors laid over it and their methods mounted.
// When an adapter was trained on a quantized base (its recipe's [quant]), the base is quantized the
// same way, so the model computes what training computed; adapters trained on different
// quantizations cannot be mounted together.
LoadedModel load_model(const std::filesystem::path& base, const std::vector<SavedAdapter>& adapters,
                       const PluginRegistry& plugins, model::ModelOptions options);

}  // namespace peftkit::host

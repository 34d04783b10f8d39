// adapters.hpp (host-internal): saved adapters mounted on a model, for `peftkit generate`, `merge`
// and `export`, without re-running training.
//
// What `read_adapter` accepts:
//   - a file written by `peftkit train` (rwkv-N.pth): its methods and their settings come from the
//     recipe that run wrote into the same folder (recipe.toml), or from an explicit recipe;
//   - without a recipe, the self-describing files: a LoRA .pth that stores lora.r and lora.alpha
//     (peftkit's, or a PiSSA export as plain LoRA), and a state file (blocks.{i}.att.time_state);
//   - an HF PEFT folder (adapter_config.json + adapter_model.safetensors) of type LORA or MISS.
//
//   SavedAdapter adapter = read_adapter("out/lora/rwkv-2.pth", {}, {}, registry);
//   overlay_trained_weights(adapter, base);          // train_parts saved with the adapter
//   Rwkv7Model model(base, options, "base.pth");
//   auto methods = mount(adapter, model, registry);  // attached, tensors loaded
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/peft_method.hpp"

namespace peftkit::host {

struct SavedAdapter {
  std::string description;           // "out/lora/rwkv-2.pth (lora, from out/lora/recipe.toml)"
  TensorMap tensors;                 // in the methods' own layout
  std::vector<PluginTable> methods;  // in the order they were attached in training
  std::shared_ptr<const Recipe> recipe;  // the recipe it was trained with, when known
};

// `recipe`: the recipe the adapter was trained with; empty to use the one beside it, if any.
SavedAdapter read_adapter(const std::filesystem::path& path, const std::optional<std::filesystem::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins);

// A state file (RWKV-PEFT time_state layout) as an adapter of the state plugin.
SavedAdapter read_state_adapter(const std::filesystem::path& path, const PluginRegistry& plugins);

// Tensors of the adapter that are base-model weights (trained with train_parts) replace the base's,
// keeping the base's dtype. Returns how many were replaced.
int overlay_trained_weights(const SavedAdapter& adapter, TensorMap& base);

// Creates each method, attaches it to the model and loads its tensors.
std::vector<std::shared_ptr<PeftMethod>> mount(const SavedAdapter& adapter, ModelView& model,
                                               const PluginRegistry& plugins);

}  // namespace peftkit::host

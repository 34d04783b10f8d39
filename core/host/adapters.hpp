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
#include <set>
#include <string>
#include <vector>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::host {

struct SavedAdapter {
  std::string description;           // "out/lora/rwkv-2.pth (lora, from out/lora/recipe.toml)"
  TensorMap tensors;                 // in the methods' own layout
  std::vector<PluginTable> methods;  // in the order they were attached in training
  std::shared_ptr<const Recipe> recipe;  // the recipe it was trained with, when known
};

// How a state file lays out its WKV states: RWKV-PEFT's value-major [H, N, N] (.pth files, and
// what peftkit trains), or Ai00/web-rwkv's with the last two dimensions transposed (what
// `export --format ai00` writes, recording it in the safetensors metadata). kAuto reads the
// record, takes a .pth as RWKV-PEFT's and refuses a safetensors state that records nothing.
enum class StateLayout { kAuto, kRwkvPeft, kAi00 };
// "auto", "rwkv-peft" or "ai00" (the --state-layout option); throws naming the option otherwise.
StateLayout parse_state_layout(const std::string& text);

// What a state file itself says of its layout: the recorded one, kRwkvPeft for a .pth (RWKV-PEFT's
// own file), kAuto when it cannot be told (a safetensors file recording nothing); throws for a
// recorded layout peftkit does not know.
StateLayout recorded_state_layout(const TensorFile& file, const std::filesystem::path& path);

// `recipe`: the recipe the adapter was trained with; empty to use the one beside it, if any.
// `layout`: for a file that turns out to be a state file.
SavedAdapter read_adapter(const std::filesystem::path& path, const std::optional<std::filesystem::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins,
                          StateLayout layout = StateLayout::kAuto);

// A state file as an adapter of the state plugin, its states in RWKV-PEFT's layout.
SavedAdapter read_state_adapter(const std::filesystem::path& path, const PluginRegistry& plugins,
                                StateLayout layout = StateLayout::kAuto);

// Tensors of the adapter that are base-model weights (trained with train_parts) replace the base's,
// keeping the base's dtype. Returns how many were replaced.
int overlay_trained_weights(const SavedAdapter& adapter, TensorMap& base);

// Creates each method, attaches it to the model and loads its tensors. Every tensor of the adapter
// must be used: held by a mounted method, or one of `base_weights` (laid over the base). One that
// nothing takes (a site the model lacks, a site the config does not target, an unknown kind) is
// refused by name, never silently dropped.
std::vector<std::shared_ptr<PeftMethod>> mount(const SavedAdapter& adapter, ModelView& model,
                                               const PluginRegistry& plugins,
                                               const std::set<std::string>& base_weights);

// The names of a tensor map's tensors.
std::set<std::string> tensor_names(const TensorMap& tensors);

}  // namespace peftkit::host

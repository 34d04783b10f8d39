// adapters.hpp (host-internal): saved adapters mounted on a model, for `peftkit generate`, `merge`,
// `export`, `eval` and `chat`, without re-running training.
//
// The host knows no method: it reads the file (or HF PEFT folder) and asks. In order,
//   1. the recipe the adapter was trained with (--recipe, or the recipe.toml beside the file);
//   2. the record peftkit writes into every adapter it saves (kAdapterRecordKey: the methods with
//      their options and metadata), so a file alone is enough;
//   3. every PEFT plugin's recognise(), the way a backend registry asks each backend: RWKV-PEFT
//      .pth files, HF PEFT folders, Ai00 states and older peftkit files are read by the plugin
//      whose format they are.
//
//   SavedAdapter adapter = read_adapter("out/lora/rwkv-2.pth", {}, {}, registry);
//   overlay_trained_weights(adapter, base);          // train_parts saved with the adapter
//   RwkvModel model(base, options, "base.pth");
//   auto methods = mount(adapter, model, registry);  // attached, tensors loaded
#pragma once

#include <filesystem>
#include <map>
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

// SDK minor version that brought PeftPlugin::recognise.
inline constexpr int kImportApiMinor = 2;

struct SavedAdapter {
  std::string description;           // "out/lora/rwkv-2.pth (lora, from out/lora/recipe.toml)"
  TensorMap tensors;                 // in the methods' own layout
  std::vector<PluginTable> methods;  // in the order they were attached in training
  // Parallel to methods: what each method's metadata() recorded; empty maps when not recorded.
  std::vector<std::map<std::string, std::string>> method_metadata;
  std::shared_ptr<const Recipe> recipe;  // the recipe it was trained with, when known
};

// What the user may say about adapter files on the command line; handed to the plugins as
// SavedFile::hints (e.g. {"state-layout", "ai00"}) and to read_adapter.
struct AdapterRequest {
  std::filesystem::path path;
  std::string expected_method;  // set by a method alias (--state FILE): the file must be one
};

// A file or HF PEFT folder as the plugins see it (SavedFile); throws naming the path.
SavedFile read_saved_file(const std::filesystem::path& path,
                          const std::map<std::string, std::string>& hints);

// One plugin's part of a saved file.
struct RecognisedPart {
  std::string plugin;
  Recognition recognition;
};

// What the PEFT plugins recognise in `file`, overlaps decided (the surer claim wins; equal claims
// are an error naming the candidates). Ordered as the file's record lists the methods, else by
// name.
std::vector<RecognisedPart> recognise(const SavedFile& file, const PluginRegistry& plugins);

// `recipe`: the recipe the adapter was trained with; empty to use the one beside it, if any.
SavedAdapter read_adapter(const AdapterRequest& request,
                          const std::optional<std::filesystem::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins,
                          const std::map<std::string, std::string>& hints = {});
SavedAdapter read_adapter(const std::filesystem::path& path,
                          const std::optional<std::filesystem::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins);

// The record that makes an adapter file self-describing: {kAdapterRecordKey: JSON of every method's
// plugin name, options (paths left out: they name the run's inputs) and metadata()}.
std::map<std::string, std::string> adapter_record(
    const std::vector<PluginTable>& tables,
    const std::vector<std::shared_ptr<PeftMethod>>& methods);
// The methods a record names, their options checked against the installed plugins' schemas.
struct RecordedMethods {
  std::vector<PluginTable> methods;
  std::vector<std::map<std::string, std::string>> metadata;
};
RecordedMethods parse_adapter_record(const std::string& json, const std::string& where,
                                     const PluginRegistry& plugins);

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

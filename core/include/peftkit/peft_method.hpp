// peft_method.hpp: the interface of PEFT-method plugins (state, LoRA, PiSSA, MiSS, third-party).
//
// Lifecycle in a training run:
//   1. the host validates [peft.<name>] against options() and calls create(options);
//   2. attach(model): the method reads sites, creates its tensors, installs adapters;
//   3. optionally load_state_dict(...) to continue from a saved adapter;
//   4. the trainer optimises trainable_tensors();
//   5. state_dict() is saved as the adapter, with the method's options and metadata() recorded in
//      the file, so the file alone says how to mount it again; merge_into() and export_to() serve
//      `peftkit merge` and `peftkit export`, also later from a saved adapter.
//
// The import side (SDK 2.2) mirrors export: recognise() looks at a saved file or folder that does
// not record its methods (an RWKV-PEFT .pth, an HF PEFT folder, an Ai00 state, a file of an older
// peftkit) and says whether it is this method's, which of its tensors are, and the options it reads
// from it. `inspect` prints what every plugin recognises; `--adapter` mounts it. A plugin that
// recognises nothing needs neither function.
//
//   class Lora final : public peftkit::PeftMethod { ... };
//   class LoraPlugin final : public peftkit::PeftPlugin {
//     peftkit::OptionSchema options() const override {
//       return peftkit::OptionSchema().add_int("r", 8, "rank", 1).add_float("alpha", 32, "scale");
//     }
//     std::unique_ptr<peftkit::PeftMethod> create(const peftkit::Options& o) const override {
//       return std::make_unique<Lora>(o.get_int("r"), o.get_float("alpha"));
//     }
//   };
//   PEFTKIT_PLUGIN(LoraPlugin, "lora", "1.0.0", "low-rank adapters on linear layers")
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "peftkit/model.hpp"
#include "peftkit/options.hpp"
#include "peftkit/plugin.hpp"

namespace peftkit {

struct TrainableTensor {
  std::string name;           // its key in the adapter file, e.g. "blocks.0.att.key.lora_A"
  at::Tensor tensor;          // fp32 leaf with requires_grad; the optimizer updates it in place
  double lr_scale = 1.0;      // multiplies the scheduled learning rate
  bool weight_decay = false;  // whether [train] weight_decay applies
};

struct ExportFormat {
  std::string name;         // what `peftkit export --format` takes: "hf-peft", "ai00", ...
  std::string description;  // one line for --help
};

// A foreign format a plugin reads (import_formats(), listed by `peftkit plugins`).
struct ImportFormat {
  std::string name;         // "hf-peft LORA", "rwkv-peft .pth", "ai00 state"
  std::string description;  // one line
};

// A saved adapter as the host hands it to recognise(): a tensor file (.pth or .safetensors), an HF
// PEFT folder (adapter_config.json + adapter_model.safetensors) read into the same shape, or any
// other file, which a plugin with a file format of its own reads from `path` itself.
struct SavedFile {
  enum class Kind { kTensorFile, kHfPeftFolder, kOtherFile };
  std::filesystem::path path;  // what the user named
  Kind kind = Kind::kTensorFile;
  // The file's tensors; for an HF folder those of adapter_model.safetensors with HF's
  // "base_model.model." prefix removed ("blocks.0.att.key.lora_A.weight"); none for kOtherFile.
  TensorMap tensors;
  // A tensor file's metadata (safetensors __metadata__, peftkit's record in a .pth); for an HF
  // folder, each top-level key of adapter_config.json with its value as JSON text ("r" -> "8").
  std::map<std::string, std::string> metadata;
  // What the user said about the file on the command line, e.g. {"state-layout", "ai00"}.
  std::map<std::string, std::string> hints;

  // An HF folder's config value as an option value (true, 8, 0.5, "LORA", ["att.key"]); nullopt
  // when the key is absent or null. Throws peftkit::Error naming the file and key for JSON of other
  // types (objects, mixed lists) and for a tensor file.
  std::optional<OptionValue> config_value(const std::string& key) const;
  // Whether a config value is present and not null, false, an empty list or an empty object.
  bool config_is_set(const std::string& key) const;
  // "<path>/adapter_config.json" for a folder, the path for a file: the place messages name.
  std::string where() const;
  std::string hint(const std::string& key) const;  // "" when not given
};

// How sure a plugin is that a file is its own. When two plugins claim the same tensors the surer
// one wins; equal claims are an ambiguity the user resolves (--recipe).
enum class Certainty {
  kGuess = 1,    // the tensor names fit, nothing more (RWKV-PEFT LoRA pairs without r and alpha)
  kCertain = 2,  // the file says so (stored settings, an HF peft_type, a recorded layout)
};

// What a plugin recognises of a saved file.
struct Recognition {
  Certainty certainty = Certainty::kCertain;
  // inspect's "kind" line: "LoRA adapter", "state file (RWKV-PEFT time_state layout, value-major)";
  // its first word names the part in a file of several ("adapter: state + LoRA").
  std::string kind;
  // inspect's lines under it, in order: {"sites", "12"}, {"rank", "4"}, {"alpha", "8"}.
  std::vector<std::pair<std::string, std::string>> fields;
  // The file's tensors that are this method's (parameters and stored settings), by file name.
  std::vector<std::string> tensors;
  int64_t parameters = 0;  // trained parameters among them
  // The plugin's options as the file says them, checked against options() by the host.
  std::vector<std::pair<std::string, OptionValue>> settings;
  // For a foreign layout (and for kOtherFile, always): the tensors in the method's own names and
  // layout, as load_state_dict takes them. Empty: the file's tensors are loaded as they are.
  TensorMap converted;
  // Why the file alone cannot be mounted ("alpha is not stored: pass --recipe"); empty when it can.
  std::string cannot_mount;
};

class PeftMethod {
 public:
  virtual ~PeftMethod();

  // Creates the method's tensors for this model and installs its adapters. Called once.
  virtual void attach(ModelView& model) = 0;
  virtual std::vector<TrainableTensor> trainable_tensors() = 0;

  // The adapter in the method's own layout (tensors only).
  virtual TensorMap state_dict() const = 0;
  // Facts about the trained adapter beyond its options ({"layers", "24"}), recorded in every
  // adapter file peftkit saves and handed back to load_state_dict when that file is mounted.
  virtual std::map<std::string, std::string> metadata() const = 0;
  // `tensors` may hold other methods' tensors too (a run of several methods saves one file): take
  // yours. `metadata`: what metadata() returned when the file was saved; empty for files that do
  // not record it (foreign files, older peftkit files).
  virtual void load_state_dict(const TensorMap& tensors,
                               const std::map<std::string, std::string>& metadata) = 0;

  // Folds the adapter into full model weights keyed by checkpoint names ("….weight").
  virtual void merge_into(TensorMap& model_weights) const = 0;
  // The inverse of merge_into: recovers the base from merged weights. The default throws
  // peftkit::Error saying that the method cannot unmerge.
  virtual void unmerge_from(TensorMap& model_weights) const;

  virtual std::vector<ExportFormat> export_formats() const = 0;
  virtual void export_to(std::string_view format,
                         const std::filesystem::path& destination) const = 0;
};

class PeftPlugin : public Plugin {
 public:
  static constexpr PluginKind kKind = PluginKind::kPeft;
  virtual std::unique_ptr<PeftMethod> create(const Options& options) const = 0;

  // SDK 2.2 (the host calls these only on plugins built against 2.2 or later):
  // The foreign formats recognise() reads. Default: none.
  virtual std::vector<ImportFormat> import_formats() const;
  // Whether `file` (or a part of it) is this method's; nullopt when not. Throw peftkit::Error
  // naming file.where() for a file that is this method's but broken. Default: nullopt.
  virtual std::optional<Recognition> recognise(const SavedFile& file) const;
};

}  // namespace peftkit

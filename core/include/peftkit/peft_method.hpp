// peft_method.hpp: the interface of PEFT-method plugins (state, LoRA, PiSSA, MiSS, third-party).
//
// Lifecycle in a training run:
//   1. the host validates [peft.<name>] against options() and calls create(options);
//   2. attach(model): the method reads sites, creates its tensors, installs adapters;
//   3. optionally load_state_dict(...) to continue from a saved adapter;
//   4. the trainer optimises trainable_tensors();
//   5. state_dict() is saved as the adapter; merge_into() and export_to() serve `peftkit merge`
//      and `peftkit export`, also later from a saved adapter without re-running training.
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
#include <string>
#include <string_view>
#include <vector>

#include "peftkit/model.hpp"
#include "peftkit/options.hpp"
#include "peftkit/plugin.hpp"

namespace peftkit {

struct TrainableTensor {
  std::string name;    // its key in the adapter file, e.g. "blocks.0.att.key.lora_A"
  at::Tensor tensor;   // fp32 leaf with requires_grad; the optimizer updates it in place
  double lr_scale = 1.0;      // multiplies the scheduled learning rate
  bool weight_decay = false;  // whether [train] weight_decay applies
};

struct ExportFormat {
  std::string name;         // what `peftkit export --format` takes: "hf-peft", "ai00", ...
  std::string description;  // one line for --help
};

class PeftMethod {
 public:
  virtual ~PeftMethod();

  // Creates the method's tensors for this model and installs its adapters. Called once.
  virtual void attach(ModelView& model) = 0;
  virtual std::vector<TrainableTensor> trainable_tensors() = 0;

  // The adapter in the method's own layout, hyper-parameters included as metadata, so that a saved
  // adapter alone is enough to merge or export it exactly.
  virtual TensorMap state_dict() const = 0;
  virtual std::map<std::string, std::string> metadata() const = 0;
  virtual void load_state_dict(const TensorMap& tensors,
                               const std::map<std::string, std::string>& metadata) = 0;

  // Folds the adapter into full model weights keyed by checkpoint names ("….weight").
  virtual void merge_into(TensorMap& model_weights) const = 0;
  // The inverse of merge_into: recovers the base from merged weights. The default throws
  // peftkit::Error saying that the method cannot unmerge.
  virtual void unmerge_from(TensorMap& model_weights) const;

  virtual std::vector<ExportFormat> export_formats() const = 0;
  virtual void export_to(std::string_view format, const std::filesystem::path& destination) const = 0;
};

class PeftPlugin : public Plugin {
 public:
  static constexpr PluginKind kKind = PluginKind::kPeft;
  virtual std::unique_ptr<PeftMethod> create(const Options& options) const = 0;
};

}  // namespace peftkit

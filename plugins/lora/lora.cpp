// lora: low-rank adapters on linear sites (spec formats §1.5):
//   y = W x + s * B A dropout(x),   A [r, in] kaiming-uniform, B [out, r] zero, s = alpha / r
// (alpha / sqrt(r) with rsLoRA). Sites are chosen by suffix patterns of their RWKV names.
//
// Outputs: the RWKV-PEFT .pth layout (<site>.lora_A [r, in], <site>.lora_B [out, r]) with r,
// alpha and rsLoRA stored beside them (lora.r, lora.alpha, lora.rslora), so a merge can never be
// mis-scaled; and the HF PEFT adapter folder (adapter_config.json + adapter_model.safetensors with
// base_model.model.<site>.lora_A.weight / lora_B.weight).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "low_rank.hpp"
#include "peftkit/log.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/sites.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::lora {
namespace {

struct Settings {
  int64_t r = 8;
  double alpha = 32;
  double dropout = 0;
  bool rslora = false;
  std::vector<std::string> targets;
  std::string init = "kaiming";
};

class Lora final : public PeftMethod {
 public:
  explicit Lora(Settings settings)
      : settings_(std::move(settings)),
        pairs_("lora", settings_.r, settings_.alpha, settings_.rslora) {}

  void attach(ModelView& model) override {
    const auto options = model.activation_options().dtype(at::kFloat);
    for (const auto& site : model.linear_sites()) {
      if (!site_matches_any(site.name, settings_.targets)) continue;
      // Drawn by the CPU's generator on any device: one seed gives one adapter on the CPU and
      // on a GPU (the generators of the two draw different numbers).
      at::Tensor a = at::empty({settings_.r, site.in_features}, at::kFloat);
      if (settings_.init == "gaussian")
        a.normal_(0.0, 1.0 / static_cast<double>(settings_.r));
      else  // kaiming_uniform(a = sqrt(5)): bound = 1 / sqrt(in)
        a.uniform_(-1.0 / std::sqrt(static_cast<double>(site.in_features)),
                   1.0 / std::sqrt(static_cast<double>(site.in_features)));
      a = a.to(options.device()).requires_grad_(true);
      at::Tensor b = at::zeros({site.out_features, settings_.r}, options).requires_grad_(true);
      pairs_.add(site.name, a, b);
      model.set_linear_adapter(site.name, std::make_shared<plugins::LowRankAdapter>(
                                              model, a, b, pairs_.scale(), settings_.dropout));
    }
    if (pairs_.empty())
      throw Error("[peft.lora] targets " + plugins::join_list(settings_.targets) +
                  " match no linear site of the model");
    log::info("lora: r " + std::to_string(settings_.r) + ", alpha " +
              std::to_string(settings_.alpha) + " on " + std::to_string(pairs_.pairs().size()) +
              " sites");
  }

  std::vector<TrainableTensor> trainable_tensors() override { return pairs_.trainable_tensors(); }

  TensorMap state_dict() const override {
    TensorMap out;
    pairs_.store(out);
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"method", "lora"},
            {"r", std::to_string(settings_.r)},
            {"alpha", std::to_string(settings_.alpha)},
            {"rslora", settings_.rslora ? "true" : "false"}};
  }

  void load_state_dict(const TensorMap& tensors,
                       const std::map<std::string, std::string>&) override {
    pairs_.load(tensors);
  }

  // W += s * B A, computed in fp64 and stored in W's dtype.
  void merge_into(TensorMap& weights) const override { pairs_.add_to_weights(weights, 1.0); }
  void unmerge_from(TensorMap& weights) const override { pairs_.add_to_weights(weights, -1.0); }

  std::vector<ExportFormat> export_formats() const override {
    return {{"hf-peft", "HF PEFT adapter folder: adapter_config.json + adapter_model.safetensors"},
            {"rwkv-pth", "RWKV-PEFT .pth: <site>.lora_A / .lora_B with lora.r and lora.alpha"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return write_pth(destination, state_dict());
    if (format != "hf-peft")
      throw Error("lora: no export format '" + std::string(format) +
                  "' (formats: hf-peft, rwkv-pth)");
    pairs_.write_hf_folder(destination, settings_.dropout);
  }

 private:
  Settings settings_;
  plugins::LowRankPairs pairs_;
};

class LoraPlugin final : public PeftPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_int("r", 8, "rank", 1, 65536)
        .add_float("alpha", 32.0,
                   "scaling numerator: s = alpha / r (alpha / sqrt(r) with use_rslora)",
                   Bound{0, true})
        .add_float("dropout", 0.0, "dropout on the adapter's input", Bound{0}, Bound{1, true})
        .add_bool("use_rslora", false, "rank-stabilised scaling alpha / sqrt(r)")
        .add_string("init", "kaiming", "A's initialisation (B is zero)", {"kaiming", "gaussian"})
        .add_string_list("targets", default_linear_targets(),
                         "adapted sites: suffixes of their names (default: the six x070 linears)");
  }
  void validate(const Options& options) const override {
    if (options.get_string_list("targets").empty()) throw options.error("targets", "names no site");
  }
  std::vector<ImportFormat> import_formats() const override {
    return {{"hf-peft LORA", "HF PEFT folder of peft_type LORA (not use_dora)"},
            {"rwkv-pth",
             "<site>.lora_A / .lora_B with lora.r and lora.alpha (RWKV-PEFT's own .pth: with "
             "--recipe)"}};
  }
  std::optional<Recognition> recognise(const SavedFile& file) const override {
    if (file.kind == SavedFile::Kind::kHfPeftFolder) {
      if (file.config_value("peft_type") != OptionValue(std::string("LORA"))) return std::nullopt;
      if (file.config_is_set("use_dora")) {
        // A DoRA plugin claims it with certainty; without one this says why nothing can mount it.
        Recognition r;
        r.kind = "DoRA adapter (HF PEFT folder, use_dora = true)";
        r.certainty = Certainty::kGuess;
        r.cannot_mount =
            "use_dora = true: DoRA adapters need a DoRA plugin (see examples/dora-plugin)";
        for (const auto& [name, tensor] : file.tensors) r.tensors.push_back(name);
        return r;
      }
      return plugins::recognise_hf_lora(file);
    }
    const plugins::StoredPairs pairs = plugins::find_stored_pairs(file.tensors);
    if (pairs.sites.empty() || pairs.init_pairs) return std::nullopt;  // init pairs: PiSSA's layout
    return plugins::recognise_stored_pairs(file.tensors, pairs, "lora", "LoRA adapter");
  }
  std::unique_ptr<PeftMethod> create(const Options& o) const override {
    return std::make_unique<Lora>(Settings{o.get_int("r"), o.get_float("alpha"),
                                           o.get_float("dropout"), o.get_bool("use_rslora"),
                                           o.get_string_list("targets"), o.get_string("init")});
  }
};

}  // namespace
}  // namespace peftkit::lora

PEFTKIT_PLUGIN(peftkit::lora::LoraPlugin, "lora", "0.1.0",
               "LoRA: low-rank adapters on linear layers (rsLoRA optional)")

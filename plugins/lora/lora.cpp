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
#include <fstream>

#include <nlohmann/json.hpp>

#include "peftkit/log.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
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
  double scale() const { return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r); }
};

class LoraAdapter final : public LinearAdapter {
 public:
  // The model owns its adapters, so `model` outlives this one.
  LoraAdapter(const ModelView& model, at::Tensor a, at::Tensor b, double scale, double dropout)
      : model_(model), a_(std::move(a)), b_(std::move(b)), scale_(scale), dropout_(dropout) {}
  at::Tensor forward(const at::Tensor& x, const FrozenLinear& base) override {
    at::Tensor dropped = dropout_ > 0 && model_.training() ? at::dropout(x, dropout_, true) : x;
    at::Tensor low_rank = at::linear(at::linear(dropped, a_.to(x.scalar_type())), b_.to(x.scalar_type()));
    return base.forward(x) + low_rank * scale_;
  }

 private:
  const ModelView& model_;
  at::Tensor a_, b_;
  double scale_, dropout_;
};

bool matches(const std::string& site, const std::vector<std::string>& patterns) {
  for (const auto& p : patterns)
    if (site.size() >= p.size() && site.compare(site.size() - p.size(), p.size(), p) == 0) return true;
  return false;
}

class Lora final : public PeftMethod {
 public:
  explicit Lora(Settings settings) : settings_(std::move(settings)) {}

  void attach(ModelView& model) override {
    const auto options = model.activation_options().dtype(at::kFloat);
    for (const auto& site : model.linear_sites()) {
      if (!matches(site.name, settings_.targets)) continue;
      at::Tensor a = at::empty({settings_.r, site.in_features}, options);
      if (settings_.init == "gaussian")
        a.normal_(0.0, 1.0 / static_cast<double>(settings_.r));
      else  // kaiming_uniform(a = sqrt(5)): bound = 1 / sqrt(in)
        a.uniform_(-1.0 / std::sqrt(static_cast<double>(site.in_features)), 1.0 / std::sqrt(static_cast<double>(site.in_features)));
      a.requires_grad_(true);
      at::Tensor b = at::zeros({site.out_features, settings_.r}, options).requires_grad_(true);
      sites_.push_back({site.name, a, b});
      model.set_linear_adapter(site.name, std::make_shared<LoraAdapter>(model, a, b, settings_.scale(), settings_.dropout));
    }
    if (sites_.empty())
      throw Error("[peft.lora] targets " + join(settings_.targets) + " match no linear site of the model");
    log::info("lora: r " + std::to_string(settings_.r) + ", alpha " + std::to_string(settings_.alpha) + " on " +
              std::to_string(sites_.size()) + " sites");
  }

  std::vector<TrainableTensor> trainable_tensors() override {
    std::vector<TrainableTensor> out;
    for (const auto& s : sites_) {
      out.push_back({s.name + ".lora_A", s.a, 1.0, true});
      out.push_back({s.name + ".lora_B", s.b, 1.0, true});
    }
    return out;
  }

  TensorMap state_dict() const override {
    TensorMap out;
    for (const auto& s : sites_) {
      out[s.name + ".lora_A"] = s.a.detach().to(at::kCPU);
      out[s.name + ".lora_B"] = s.b.detach().to(at::kCPU);
    }
    out["lora.r"] = at::scalar_tensor(settings_.r, at::kLong);
    out["lora.alpha"] = at::scalar_tensor(settings_.alpha, at::kDouble);
    out["lora.rslora"] = at::scalar_tensor(settings_.rslora ? 1 : 0, at::kLong);
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"method", "lora"}, {"r", std::to_string(settings_.r)}, {"alpha", std::to_string(settings_.alpha)},
            {"rslora", settings_.rslora ? "true" : "false"}};
  }

  void load_state_dict(const TensorMap& tensors, const std::map<std::string, std::string>&) override {
    auto stored = [&](const char* name) -> const at::Tensor* {
      auto it = tensors.find(name);
      return it == tensors.end() ? nullptr : &it->second;
    };
    if (const at::Tensor* r = stored("lora.r"); r && r->item<int64_t>() != settings_.r)
      throw Error("lora: the adapter has r = " + std::to_string(r->item<int64_t>()) + " but [peft.lora] r = " +
                  std::to_string(settings_.r));
    if (const at::Tensor* alpha = stored("lora.alpha"); alpha && alpha->item<double>() != settings_.alpha)
      throw Error("lora: the adapter has alpha = " + std::to_string(alpha->item<double>()) + " but [peft.lora] alpha = " +
                  std::to_string(settings_.alpha));
    at::NoGradGuard no_grad;
    for (auto& s : sites_) {
      for (auto [suffix, target] : {std::pair{".lora_A", &s.a}, std::pair{".lora_B", &s.b}}) {
        auto it = tensors.find(s.name + suffix);
        if (it == tensors.end()) throw Error("lora: the adapter has no " + s.name + suffix);
        if (it->second.sizes() != target->sizes())
          throw Error("lora: " + s.name + suffix + " has shape " + c10::str(it->second.sizes()) + ", expected " +
                      c10::str(target->sizes()));
        target->copy_(it->second.to(target->options()));
      }
    }
  }

  // W += s * B A, computed in fp32 and cast back to W's dtype.
  void merge_into(TensorMap& weights) const override {
    for (const auto& s : sites_) {
      at::Tensor& w = weights.at(s.name + ".weight");
      const at::Tensor delta = at::matmul(s.b.detach().to(at::kCPU, at::kFloat), s.a.detach().to(at::kCPU, at::kFloat));
      w = (w.to(at::kCPU, at::kFloat) + delta * settings_.scale()).to(w.scalar_type());
    }
  }

  std::vector<ExportFormat> export_formats() const override {
    return {{"hf-peft", "HF PEFT adapter folder: adapter_config.json + adapter_model.safetensors"},
            {"rwkv-pth", "RWKV-PEFT .pth: <site>.lora_A / .lora_B with lora.r and lora.alpha"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return write_pth(destination, state_dict());
    if (format != "hf-peft") throw Error("lora: no export format '" + std::string(format) + "' (formats: hf-peft, rwkv-pth)");
    std::filesystem::create_directories(destination);
    TensorMap tensors;
    std::vector<std::string> modules;
    for (const auto& s : sites_) {
      tensors["base_model.model." + s.name + ".lora_A.weight"] = s.a.detach().to(at::kCPU, at::kFloat);
      tensors["base_model.model." + s.name + ".lora_B.weight"] = s.b.detach().to(at::kCPU, at::kFloat);
      modules.push_back(s.name);
    }
    write_safetensors(destination / "adapter_model.safetensors", tensors, {{"format", "pt"}});
    const nlohmann::json config = {
        {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", settings_.r}, {"lora_alpha", settings_.alpha},
        {"lora_dropout", settings_.dropout}, {"use_rslora", settings_.rslora}, {"target_modules", modules},
        {"bias", "none"}, {"fan_in_fan_out", false}, {"init_lora_weights", true}, {"inference_mode", false},
        {"base_model_name_or_path", nullptr}, {"use_dora", false}, {"modules_to_save", nullptr}};
    std::ofstream(destination / "adapter_config.json") << config.dump(2) << "\n";
  }

 private:
  static std::string join(const std::vector<std::string>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
    return out + "]";
  }
  struct Site {
    std::string name;
    at::Tensor a, b;
  };
  Settings settings_;
  std::vector<Site> sites_;
};

class LoraPlugin final : public PeftPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_int("r", 8, "rank", 1, 65536)
        .add_float("alpha", 32.0, "scaling numerator: s = alpha / r (alpha / sqrt(r) with use_rslora)", Bound{0, true})
        .add_float("dropout", 0.0, "dropout on the adapter's input", Bound{0}, Bound{1, true})
        .add_bool("use_rslora", false, "rank-stabilised scaling alpha / sqrt(r)")
        .add_string("init", "kaiming", "A's initialisation (B is zero)", {"kaiming", "gaussian"})
        .add_string_list("targets", {"att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value"},
                         "adapted sites: suffixes of their names (default: the six x070 linears)");
  }
  void validate(const Options& options) const override {
    if (options.get_string_list("targets").empty()) throw options.error("targets", "names no site");
  }
  std::unique_ptr<PeftMethod> create(const Options& o) const override {
    return std::make_unique<Lora>(Settings{o.get_int("r"), o.get_float("alpha"), o.get_float("dropout"),
                                           o.get_bool("use_rslora"), o.get_string_list("targets"), o.get_string("init")});
  }
};

}  // namespace
}  // namespace peftkit::lora

PEFTKIT_PLUGIN(peftkit::lora::LoraPlugin, "lora", "0.1.0", "LoRA: low-rank adapters on linear layers (rsLoRA optional)")

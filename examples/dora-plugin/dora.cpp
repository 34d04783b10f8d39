// dora: DoRA (weight-decomposed low-rank adaptation, Liu et al. 2024) as a third-party peftkit
// plugin, built against the installed SDK only. Per adapted linear site with frozen W [out, in]:
//   A [r, in] kaiming-uniform, B [out, r] zero, s = alpha / r, magnitude m [out] = ‖W‖ per row;
//   V = W + s B A,  n = max(‖V‖ per row, 1e-8) (detached, as in the paper and HF PEFT),
//   y = (m / n) ⊙ (W x + s B A x)
// so the model starts exactly as the base (B = 0 gives m / n = 1). Merge: W' = (m / n) ⊙ V.
//
// Files: the adapter .pth (<site>.lora_A, .lora_B, .lora_magnitude_vector, dora.r, dora.alpha)
// and the HF PEFT LoRA folder with use_dora = true; both are recognised again (recognise()), so
// `peftkit inspect` names DoRA and `--adapter` mounts either without a recipe.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <fstream>

#include "peftkit/error.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/sites.hpp"
#include "peftkit/tensor_io.hpp"

namespace dora {
namespace {

using peftkit::TensorMap;

// The scaled direction V = W + s B A of a site, and its row norms.
at::Tensor direction(const at::Tensor& w, const at::Tensor& a, const at::Tensor& b, double scale) {
  return w + at::matmul(b, a) * scale;
}
// Clamped so that rows that are zero in W (RWKV-LM's init zeroes some projections) stay zero
// instead of 0 / 0.
at::Tensor row_norms(const at::Tensor& v) {
  return at::linalg_vector_norm(v, 2, {1}).clamp_min(1e-8);
}

struct Site {
  std::string name;
  at::Tensor a, b, magnitude;  // fp32 on the model's device, trained
};

class DoraAdapter final : public peftkit::LinearAdapter {
 public:
  DoraAdapter(Site site, double scale) : site_(std::move(site)), scale_(scale) {}
  at::Tensor forward(const at::Tensor& x, const peftkit::FrozenLinear& base) override {
    const at::ScalarType dtype = x.scalar_type();
    at::Tensor norm;
    {
      at::NoGradGuard no_grad;  // the norm is a constant of the step
      norm = row_norms(direction(base.dense_weight().to(at::kFloat), site_.a, site_.b, scale_));
    }
    const at::Tensor low_rank =
        at::linear(at::linear(x, site_.a.to(dtype)), site_.b.to(dtype)) * scale_;
    return (base.forward(x) + low_rank) * (site_.magnitude / norm).to(dtype);
  }

 private:
  Site site_;
  double scale_;
};

class Dora final : public peftkit::PeftMethod {
 public:
  Dora(int64_t r, double alpha, std::vector<std::string> targets)
      : r_(r), alpha_(alpha), targets_(std::move(targets)) {}

  void attach(peftkit::ModelView& model) override {
    const auto options = model.activation_options().dtype(at::kFloat);
    for (const auto& s : model.linear_sites()) {
      if (!peftkit::site_matches_any(s.name, targets_)) continue;
      const double bound = 1.0 / std::sqrt(static_cast<double>(s.in_features));
      Site site{
          s.name,
          // Drawn on the CPU: the same adapter from one seed on any device.
          at::empty({r_, s.in_features}, at::kFloat)
              .uniform_(-bound, bound)
              .to(options.device())
              .requires_grad_(true),
          at::zeros({s.out_features, r_}, options).requires_grad_(true),
          row_norms(model.linear(s.name).dense_weight().to(options)).detach().requires_grad_(true)};
      model.set_linear_adapter(s.name, std::make_shared<DoraAdapter>(site, scale()));
      sites_.push_back(site);
    }
    if (sites_.empty())
      throw peftkit::Error("[peft.dora] targets match no linear site of the model");
  }

  std::vector<peftkit::TrainableTensor> trainable_tensors() override { return named_tensors(); }

  TensorMap state_dict() const override {
    TensorMap out;
    for (const auto& t : named_tensors()) out[t.name] = t.tensor.detach().to(at::kCPU);
    out["dora.r"] = at::scalar_tensor(r_, at::kLong);
    out["dora.alpha"] = at::scalar_tensor(alpha_, at::kDouble);
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"method", "dora"}, {"r", std::to_string(r_)}, {"alpha", std::to_string(alpha_)}};
  }

  void load_state_dict(const TensorMap& tensors,
                       const std::map<std::string, std::string>&) override {
    if (auto it = tensors.find("dora.alpha");
        it != tensors.end() && it->second.item<double>() != alpha_)
      throw peftkit::Error("dora: the adapter was trained with alpha " +
                           std::to_string(it->second.item<double>()));
    at::NoGradGuard no_grad;
    for (auto& t : named_tensors()) {
      auto it = tensors.find(t.name);
      if (it == tensors.end()) throw peftkit::Error("dora: the adapter has no " + t.name);
      if (it->second.sizes() != t.tensor.sizes())
        throw peftkit::Error("dora: " + t.name + " has shape " + c10::str(it->second.sizes()) +
                             ", expected " + c10::str(t.tensor.sizes()));
      t.tensor.copy_(it->second);
    }
  }

  // W' = (m / ‖V‖) ⊙ V with V = W + s B A, in fp32, stored in W's dtype.
  void merge_into(TensorMap& weights) const override {
    for (const auto& s : sites_) {
      at::Tensor& w = weights.at(s.name + ".weight");
      const at::Tensor v =
          direction(w.to(at::kCPU, at::kFloat), s.a.detach().cpu(), s.b.detach().cpu(), scale());
      w = (v * (s.magnitude.detach().cpu() / row_norms(v)).unsqueeze(1)).to(w.scalar_type());
    }
  }

  std::vector<peftkit::ExportFormat> export_formats() const override {
    return {{"rwkv-pth", "the adapter .pth"},
            {"hf-peft", "HF PEFT LoRA folder with use_dora = true"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return peftkit::write_pth(destination, state_dict());
    if (format != "hf-peft")
      throw peftkit::Error("dora: no export format '" + std::string(format) + "'");
    std::filesystem::create_directories(destination);
    TensorMap tensors;
    std::string modules;
    for (const auto& s : sites_) {
      const std::string prefix = "base_model.model." + s.name;
      tensors[prefix + ".lora_A.weight"] = s.a.detach().cpu().contiguous();
      tensors[prefix + ".lora_B.weight"] = s.b.detach().cpu().contiguous();
      tensors[prefix + ".lora_magnitude_vector"] = s.magnitude.detach().cpu().contiguous();
      modules += (modules.empty() ? "\"" : ", \"") + s.name + "\"";
    }
    peftkit::write_safetensors(destination / "adapter_model.safetensors", tensors,
                               {{"format", "pt"}});
    std::ofstream(destination / "adapter_config.json")
        << "{\"peft_type\": \"LORA\", \"use_dora\": true, \"r\": " << r_
        << ", \"lora_alpha\": " << alpha_ << ", \"target_modules\": [" << modules
        << "], \"bias\": \"none\", \"task_type\": \"CAUSAL_LM\"}\n";
  }

 private:
  // The trained tensors under their file names (they share storage with the adapters').
  std::vector<peftkit::TrainableTensor> named_tensors() const {
    std::vector<peftkit::TrainableTensor> out;
    for (const auto& s : sites_) {
      out.push_back({s.name + ".lora_A", s.a, 1.0, true});
      out.push_back({s.name + ".lora_B", s.b, 1.0, true});
      out.push_back({s.name + ".lora_magnitude_vector", s.magnitude, 1.0, false});
    }
    return out;
  }
  double scale() const { return alpha_ / static_cast<double>(r_); }
  int64_t r_;
  double alpha_;
  std::vector<std::string> targets_;
  std::vector<Site> sites_;
};

class DoraPlugin final : public peftkit::PeftPlugin {
 public:
  peftkit::OptionSchema options() const override {
    return peftkit::OptionSchema()
        .add_int("r", 8, "rank of the direction update", 1, 65536)
        .add_float("alpha", 16.0, "scale s = alpha / r", peftkit::Bound{0, true})
        .add_string_list("targets", peftkit::default_linear_targets(),
                         "adapted sites: ends of their names");
  }
  std::unique_ptr<peftkit::PeftMethod> create(const peftkit::Options& o) const override {
    return std::make_unique<Dora>(o.get_int("r"), o.get_float("alpha"),
                                  o.get_string_list("targets"));
  }

  std::vector<peftkit::ImportFormat> import_formats() const override {
    return {
        {"hf-peft LORA use_dora", "HF PEFT folder of peft_type LORA with use_dora = true"},
        {"rwkv-pth", "<site>.lora_A, .lora_B, .lora_magnitude_vector with dora.r and dora.alpha"}};
  }

  // Our .pth (dora.r and dora.alpha stored), or an HF PEFT LoRA folder with use_dora = true; the
  // tensors are the same three per site, HF's with ".weight" after lora_A and lora_B.
  std::optional<peftkit::Recognition> recognise(const peftkit::SavedFile& file) const override {
    const bool hf = file.kind == peftkit::SavedFile::Kind::kHfPeftFolder;
    double r = 0, alpha = 0;
    if (hf) {
      if (file.config_value("peft_type") != peftkit::OptionValue(std::string("LORA")) ||
          !file.config_is_set("use_dora"))
        return std::nullopt;
      const auto stored_r = file.config_value("r"), stored_alpha = file.config_value("lora_alpha");
      if (!stored_r || !stored_alpha)
        throw peftkit::Error(file.where() +
                             ": DoRA needs 'r' and 'lora_alpha'; they decide the scale");
      r = number(*stored_r, file.where() + ": r");
      alpha = number(*stored_alpha, file.where() + ": lora_alpha");
    } else {
      const auto stored_r = file.tensors.find("dora.r"),
                 stored_alpha = file.tensors.find("dora.alpha");
      if (stored_r == file.tensors.end() || stored_alpha == file.tensors.end()) return std::nullopt;
      if (stored_r->second.numel() != 1 || stored_alpha->second.numel() != 1)
        throw peftkit::Error(file.where() + ": dora.r and dora.alpha must be one number each");
      r = stored_r->second.item<double>();
      alpha = stored_alpha->second.item<double>();
    }
    peftkit::Recognition found;
    found.kind = hf ? "DoRA adapter (HF PEFT folder)" : "DoRA adapter";
    std::vector<std::string> sites;
    for (const auto& [name, tensor] : file.tensors) {
      const std::string key = hf ? without_weight(name) : name;
      if (!key.ends_with(".lora_A") && !key.ends_with(".lora_B") &&
          !key.ends_with(".lora_magnitude_vector")) {
        if (hf)
          throw peftkit::Error(file.path.string() +
                               "/adapter_model.safetensors: tensor 'base_model.model." + name +
                               "' is not a DoRA tensor (expected lora_A.weight, lora_B.weight, "
                               "lora_magnitude_vector)");
        continue;  // another method's tensor in the same file
      }
      found.tensors.push_back(name);
      found.parameters += tensor.numel();
      if (key.ends_with(".lora_A")) sites.push_back(key.substr(0, key.size() - 7));
      if (hf) found.converted[key] = tensor;
    }
    if (!hf) found.tensors.insert(found.tensors.end(), {"dora.r", "dora.alpha"});
    found.settings = {{"r", static_cast<int64_t>(r)}, {"alpha", alpha}, {"targets", sites}};
    found.fields = {{"sites", std::to_string(sites.size())},
                    {"rank", std::to_string(static_cast<int64_t>(r))},
                    {"alpha", c10::str(alpha)}};
    return found;
  }

 private:
  static double number(const peftkit::OptionValue& value, const std::string& what) {
    if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
    if (const auto* d = std::get_if<double>(&value)) return *d;
    throw peftkit::Error(what + " is not a number");
  }
  static std::string without_weight(const std::string& name) {
    return name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
               ? name.substr(0, name.size() - 7)
               : name;
  }
};

}  // namespace
}  // namespace dora

PEFTKIT_PLUGIN(dora::DoraPlugin, "dora", "1.0.0",
               "DoRA: magnitude vector + LoRA direction (example plugin)")

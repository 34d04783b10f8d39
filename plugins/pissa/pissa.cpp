// pissa: PiSSA, LoRA initialised from the principal singular triplets of each target weight
// (spec formats §1.6). With W = U S Vᵀ and s the LoRA scale (alpha / r, or alpha / sqrt(r)):
//   A0 = diag(sqrt(S_r / s)) V_rᵀ [r, in],  B0 = U_r diag(sqrt(S_r / s)) [out, r],
//   the frozen base becomes the residual W - s B0 A0, and y = W_res x + s B A dropout(x).
// The SVD is exact, or randomised low-rank with svd_niter power iterations (Halko et al.), seeded
// per site so that a run is reproducible. The init pair is saved with the adapter, so merges are
// exact: W' = W + s (B A - B0 A0).
//
// Outputs: the adapter .pth (<site>.lora_A/.lora_B, <site>.init_lora_A/.init_lora_B, pissa.r,
// pissa.alpha, pissa.rslora); and a plain LoRA of rank 2r, A' = [A; A0], B' = [B, -B0], that
// applies to the unmodified base: as an HF PEFT folder or as a RWKV-PEFT LoRA .pth.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "low_rank.hpp"
#include "peftkit/log.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/random.hpp"
#include "peftkit/sites.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::pissa {
namespace {

struct Settings {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool rslora = false;
  std::string svd = "randomized";
  int64_t svd_niter = 4;
  int64_t svd_seed = 0;
  std::vector<std::string> targets;
};

struct Triplets {
  at::Tensor u, s, vh;  // [out, r], [r], [r, in]
};

// FNV-1a: a site's seed must not depend on the standard library's std::hash.
uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The r leading singular triplets of w [out, in] (fp32).
Triplets exact_svd(const at::Tensor& w, int64_t r) {
  auto [u, s, vh] = at::linalg_svd(w, /*full_matrices=*/false);
  return {u.narrow(1, 0, r), s.narrow(0, 0, r), vh.narrow(0, 0, r)};
}

// Randomised range finder with power iterations, re-orthonormalised at every step.
Triplets randomized_svd(const at::Tensor& w, int64_t r, int64_t niter, uint64_t seed) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor omega = at::randn({w.size(1), r}, generator, at::kFloat).to(w.device());
  auto orthonormal = [](const at::Tensor& m) { return std::get<0>(at::linalg_qr(m)); };
  at::Tensor q = orthonormal(at::matmul(w, omega));
  for (int64_t i = 0; i < niter; ++i)
    q = orthonormal(at::matmul(w, orthonormal(at::matmul(w.t(), q))));
  auto [ub, s, vh] =
      at::linalg_svd(at::matmul(q.t(), w), /*full_matrices=*/false);  // [r, in] = Ub S Vh
  return {at::matmul(q, ub), s, vh};
}

class Pissa final : public PeftMethod {
 public:
  explicit Pissa(Settings settings)
      : settings_(std::move(settings)),
        pairs_("pissa", settings_.r, settings_.alpha, settings_.rslora) {}

  void attach(ModelView& model) override {
    model_ = &model;
    const double s = pairs_.scale();
    at::NoGradGuard no_grad;
    for (const auto& site : model.linear_sites()) {
      if (!site_matches_any(site.name, settings_.targets)) continue;
      if (settings_.r > std::min(site.in_features, site.out_features))
        throw Error("[peft.pissa] r = " + std::to_string(settings_.r) + " exceeds the rank of " +
                    site.name + " [" + std::to_string(site.out_features) + ", " +
                    std::to_string(site.in_features) + "]");
      // The checkpoint's weight, not a quantized base's: with a quantizer the residual is what gets
      // quantized (QPiSSA).
      const at::Tensor w =
          model.checkpoint_weight(site.name).to(model.activation_options().device(), at::kFloat);
      const uint64_t seed = mix64(static_cast<uint64_t>(settings_.svd_seed) ^ name_hash(site.name));
      const Triplets t = settings_.svd == "exact"
                             ? exact_svd(w, settings_.r)
                             : randomized_svd(w, settings_.r, settings_.svd_niter, seed);
      const at::Tensor root = at::sqrt(t.s / s);
      InitPair init{(root.unsqueeze(1) * t.vh).contiguous(),
                    (t.u * root.unsqueeze(0)).contiguous()};
      const auto options = model.activation_options().dtype(at::kFloat);
      at::Tensor a = init.a0.to(options).clone().requires_grad_(true);
      at::Tensor b = init.b0.to(options).clone().requires_grad_(true);
      model.set_base_weight(site.name, w - s * at::matmul(init.b0, init.a0));
      pairs_.add(site.name, a, b);
      inits_.push_back(init);
      model.set_linear_adapter(
          site.name, std::make_shared<plugins::LowRankAdapter>(model, a, b, s, settings_.dropout));
    }
    if (pairs_.empty())
      throw Error("[peft.pissa] targets " + plugins::join_list(settings_.targets) +
                  " match no linear site of the model");
    log::info("pissa: r " + std::to_string(settings_.r) + " from " + settings_.svd + " SVD on " +
              std::to_string(pairs_.pairs().size()) + " sites");
  }

  std::vector<TrainableTensor> trainable_tensors() override { return pairs_.trainable_tensors(); }

  TensorMap state_dict() const override {
    TensorMap out;
    pairs_.store(out);
    for (size_t i = 0; i < inits_.size(); ++i) {
      const std::string& name = pairs_.pairs()[i].name;
      out[name + ".init_lora_A"] = inits_[i].a0.to(at::kCPU);
      out[name + ".init_lora_B"] = inits_[i].b0.to(at::kCPU);
    }
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"method", "pissa"},
            {"r", std::to_string(settings_.r)},
            {"alpha", c10::str(settings_.alpha)},
            {"rslora", settings_.rslora ? "true" : "false"}};
  }

  // Takes the saved init pair too, and rebuilds the residual W - s B0 A0 from the checkpoint's W
  // when the pair differs from this run's SVD (a randomised SVD elsewhere, another seed).
  void load_state_dict(const TensorMap& tensors,
                       const std::map<std::string, std::string>&) override {
    pairs_.load(tensors);
    const double s = pairs_.scale();
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < inits_.size(); ++i) {
      const std::string& name = pairs_.pairs()[i].name;
      InitPair& init = inits_[i];
      at::Tensor a0 = at::empty_like(init.a0), b0 = at::empty_like(init.b0);
      plugins::load_tensor(tensors, name + ".init_lora_A", a0, "pissa");
      plugins::load_tensor(tensors, name + ".init_lora_B", b0, "pissa");
      if (at::equal(a0, init.a0) && at::equal(b0, init.b0)) continue;
      const at::Tensor original = model_->checkpoint_weight(name).to(a0.device(), at::kFloat);
      model_->set_base_weight(name, original - s * at::matmul(b0, a0));
      init = {a0, b0};
    }
  }

  // W += sign * s (B A - B0 A0), in fp64 and stored in W's dtype.
  void merge_into(TensorMap& weights) const override {
    pairs_.add_to_weights(weights, 1.0, minus_init());
  }
  void unmerge_from(TensorMap& weights) const override {
    pairs_.add_to_weights(weights, -1.0, minus_init());
  }

  std::vector<ExportFormat> export_formats() const override {
    return {
        {"hf-peft", "plain LoRA of rank 2r for the unmodified base, HF PEFT adapter folder"},
        {"rwkv-lora-pth",
         "plain LoRA of rank 2r for the unmodified base, RWKV-PEFT .pth with lora.r/lora.alpha"},
        {"rwkv-pth",
         "the PiSSA adapter: lora_A/lora_B with the init pair init_lora_A/init_lora_B"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return write_pth(destination, state_dict());
    // s (B A - B0 A0) = s [B, -B0] [A; A0]: rank 2r with the same scale, so alpha doubles (x sqrt 2
    // with rsLoRA).
    plugins::LowRankPairs plain(
        "lora", 2 * settings_.r,
        settings_.rslora ? settings_.alpha * std::sqrt(2.0) : settings_.alpha * 2.0,
        settings_.rslora);
    for (size_t i = 0; i < inits_.size(); ++i) {
      const auto& p = pairs_.pairs()[i];
      plain.add(p.name, at::cat({p.a.detach().to(at::kCPU), inits_[i].a0.to(at::kCPU)}, 0),
                at::cat({p.b.detach().to(at::kCPU), -inits_[i].b0.to(at::kCPU)}, 1));
    }
    if (format == "hf-peft") return plain.write_hf_folder(destination, settings_.dropout);
    if (format == "rwkv-lora-pth") {
      TensorMap out;
      plain.store(out);
      return write_pth(destination, out);
    }
    throw Error("pissa: no export format '" + std::string(format) +
                "' (formats: hf-peft, rwkv-lora-pth, rwkv-pth)");
  }

 private:
  struct InitPair {
    at::Tensor a0, b0;  // fp32, parallel to pairs_
  };

  // -B0 A0 of site i, in fp64 on the CPU.
  std::function<at::Tensor(size_t)> minus_init() const {
    return [this](size_t i) {
      return -at::matmul(inits_[i].b0.to(at::kCPU, at::kDouble),
                         inits_[i].a0.to(at::kCPU, at::kDouble));
    };
  }

  Settings settings_;
  plugins::LowRankPairs pairs_;
  ModelView* model_ = nullptr;
  std::vector<InitPair> inits_;
};

class PissaPlugin final : public PeftPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_int("r", 8, "rank: the number of principal singular triplets", 1, 65536)
        .add_float(
            "alpha", 8.0,
            "scale s = alpha / r (alpha / sqrt(r) with use_rslora); the default r = alpha gives "
            "RWKV-PEFT's unscaled PiSSA",
            Bound{0, true})
        .add_float("dropout", 0.0, "dropout on the adapter's input", Bound{0}, Bound{1, true})
        .add_bool("use_rslora", false, "rank-stabilised scaling alpha / sqrt(r)")
        .add_string("svd", "randomized", "exact SVD, or randomised low-rank SVD (fast)",
                    {"randomized", "exact"})
        .add_int("svd_niter", 4, "power iterations of the randomised SVD (RWKV-PEFT's svd_niter)",
                 0, 64)
        .add_int("svd_seed", 0, "seed of the randomised SVD's test matrix", 0)
        .add_string_list("targets", default_linear_targets(),
                         "adapted sites: suffixes of their names (default: the six x070 linears)");
  }
  void validate(const Options& options) const override {
    if (options.get_string_list("targets").empty()) throw options.error("targets", "names no site");
  }
  std::vector<ImportFormat> import_formats() const override {
    return {{"rwkv-pth",
             "<site>.lora_A / .lora_B with the init pair .init_lora_A / .init_lora_B and pissa.r, "
             "pissa.alpha"}};
  }
  std::optional<Recognition> recognise(const SavedFile& file) const override {
    if (file.kind != SavedFile::Kind::kTensorFile) return std::nullopt;
    const plugins::StoredPairs pairs = plugins::find_stored_pairs(file.tensors);
    if (pairs.sites.empty() || !pairs.init_pairs) return std::nullopt;
    Recognition r = plugins::recognise_stored_pairs(file.tensors, pairs, "pissa",
                                                    "PiSSA adapter (with its init pair)");
    r.fields.emplace_back("init pair", "stored (frozen; not counted as parameters)");
    return r;
  }
  std::unique_ptr<PeftMethod> create(const Options& o) const override {
    return std::make_unique<Pissa>(Settings{o.get_int("r"), o.get_float("alpha"),
                                            o.get_float("dropout"), o.get_bool("use_rslora"),
                                            o.get_string("svd"), o.get_int("svd_niter"),
                                            o.get_int("svd_seed"), o.get_string_list("targets")});
  }
};

}  // namespace
}  // namespace peftkit::pissa

PEFTKIT_PLUGIN(peftkit::pissa::PissaPlugin, "pissa", "0.1.0",
               "PiSSA: LoRA initialised from the principal singular vectors, residual base")

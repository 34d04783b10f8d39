#include "model/rwkv7_model.hpp"

#include <ATen/ATen.h>

#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"
#include "wkv7/wkv7.hpp"

namespace peftkit {
namespace {

constexpr double kLayerNormEps = 1e-5;   // spec §1.5
constexpr double kGroupNormEps = 64e-5;  // ln_x: 1e-5 * head_size_divisor^2
constexpr const char* kSlotNames[] = {"att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value"};
enum Slot { kReceptance, kKey, kValue, kOutput, kFfnKey, kFfnValue, kSlots };

std::string block(int64_t layer) { return "blocks." + std::to_string(layer) + "."; }

class DenseLinear final : public FrozenLinear {
 public:
  explicit DenseLinear(at::Tensor weight) : weight_(std::move(weight)) {}
  at::Tensor forward(const at::Tensor& x) const override { return at::linear(x, weight_); }
  at::Tensor dense_weight() const override { return weight_.detach(); }
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }

 private:
  at::Tensor weight_;
};

// x_{t-1} for every t, with the carried `previous` [B, C] before the first token; updates it.
at::Tensor token_shift(const at::Tensor& x, at::Tensor& previous) {
  const int64_t T = x.size(1);
  at::Tensor shifted = at::cat({previous.unsqueeze(1), x.slice(1, 0, T - 1)}, 1);
  previous = x.select(1, T - 1);
  return shifted;
}

}  // namespace

struct Rwkv7Model::Site {
  std::string name;
  std::unique_ptr<FrozenLinear> base;
  std::shared_ptr<LinearAdapter> adapter;
};

Rwkv7Model::Rwkv7Model(const TensorMap& weights, const ModelOptions& options, const std::string& where)
    : config_(Rwkv7Config::from_tensors(weights, where)), options_(options) {
  if (!at::isFloatingType(options.dtype))
    throw Error("model dtype must be a floating-point type, not " + std::string(c10::toString(options.dtype)));
  for (const auto& [name, tensor] : weights) weights_[name] = tensor.to(options.device, options.dtype);
  for (int64_t l = 0; l < config_.n_layer; ++l)
    for (int s = 0; s < kSlots; ++s) {
      auto site = std::make_shared<Site>();
      site->name = block(l) + kSlotNames[s];
      site->base = std::make_unique<DenseLinear>(weights_.at(site->name + ".weight"));
      sites_.push_back(std::move(site));
    }
}

std::unique_ptr<Rwkv7Model> Rwkv7Model::load(const std::filesystem::path& path, const ModelOptions& options) {
  return std::make_unique<Rwkv7Model>(read_tensor_file(path).tensors, options, path.string());
}

const at::Tensor& Rwkv7Model::weight(const std::string& name) const { return weights_.at(name); }

TensorMap Rwkv7Model::weights() const { return weights_; }

c10::TensorOptions Rwkv7Model::activation_options() const {
  return c10::TensorOptions().dtype(options_.dtype).device(options_.device);
}

Rwkv7State Rwkv7Model::initial_state(int64_t batch) const {
  const int64_t C = config_.n_embd, H = config_.n_head, N = config_.head_size;
  Rwkv7State state;
  auto activations = activation_options();
  auto fp32 = activations.dtype(at::kFloat);
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    at::Tensor wkv, att, ffn;
    if (state_adapter_) {
      wkv = state_adapter_->initial_wkv_state(static_cast<int>(l));
      att = state_adapter_->initial_att_shift(static_cast<int>(l));
      ffn = state_adapter_->initial_ffn_shift(static_cast<int>(l));
    }
    // A shared [H, N, N] state is broadcast to the batch; autograd sums its gradient over it.
    state.wkv.push_back(wkv.defined() ? wkv.to(fp32).unsqueeze(0).expand({batch, H, N, N})
                                      : at::zeros({batch, H, N, N}, fp32));
    state.att_shift.push_back(att.defined() ? att.to(activations).unsqueeze(0).expand({batch, C})
                                            : at::zeros({batch, C}, activations));
    state.ffn_shift.push_back(ffn.defined() ? ffn.to(activations).unsqueeze(0).expand({batch, C})
                                            : at::zeros({batch, C}, activations));
  }
  return state;
}

at::Tensor Rwkv7Model::apply_linear(int64_t layer, int slot, const at::Tensor& x) {
  const Site& site = *sites_[layer * kSlots + slot];
  return site.adapter ? site.adapter->forward(x, *site.base) : site.base->forward(x);
}

// spec §1.2
at::Tensor Rwkv7Model::time_mix(int64_t l, const at::Tensor& x, at::Tensor& v_first, Rwkv7State& state) {
  const std::string p = block(l) + "att.";
  const int64_t B = x.size(0), T = x.size(1), C = config_.n_embd, H = config_.n_head, N = config_.head_size;
  auto vec = [&](const char* name) { return weight(p + name).view({C}); };
  at::Tensor xx = token_shift(x, state.att_shift[l]) - x;
  at::Tensor xr = x + xx * vec("x_r"), xw = x + xx * vec("x_w"), xk = x + xx * vec("x_k");
  at::Tensor xv = x + xx * vec("x_v"), xa = x + xx * vec("x_a"), xg = x + xx * vec("x_g");

  at::Tensor r = apply_linear(l, kReceptance, xr);
  at::Tensor z = vec("w0") + at::matmul(at::tanh(at::matmul(xw, weight(p + "w1"))), weight(p + "w2"));
  at::Tensor k = apply_linear(l, kKey, xk);
  at::Tensor v = apply_linear(l, kValue, xv);
  if (l == 0) {
    v_first = v;
  } else {
    at::Tensor gate = at::sigmoid(vec("v0") + at::matmul(at::matmul(xv, weight(p + "v1")), weight(p + "v2")));
    v = v + (v_first - v) * gate;
  }
  at::Tensor a = at::sigmoid(vec("a0") + at::matmul(at::matmul(xa, weight(p + "a1")), weight(p + "a2")));
  at::Tensor g = at::matmul(at::sigmoid(at::matmul(xg, weight(p + "g1"))), weight(p + "g2"));

  // kk from the original k; the WKV and the bonus use the modified k (pitfall §7.2).
  at::Tensor kk = (k * vec("k_k")).view({B, T, H, N});
  kk = kk / at::clamp_min(at::linalg_vector_norm(kk, 2, {-1}, true), 1e-12);
  k = k * (1 + (a - 1) * vec("k_a"));

  auto heads = [&](const at::Tensor& t) { return t.reshape({B, T, H, N}); };
  auto [y, s_final] = kernels::wkv7(heads(r), z.reshape({B, T, H, N}), heads(k), heads(v), -kk,
                                    kk * heads(a), state.wkv[l]);
  state.wkv[l] = s_final;
  y = at::group_norm(y.reshape({B * T, C}), H, weight(p + "ln_x.weight"), weight(p + "ln_x.bias"), kGroupNormEps)
          .view({B, T, C});
  at::Tensor bonus = (heads(r) * heads(k) * weight(p + "r_k")).sum(-1, true) * heads(v);
  y = y + bonus.view({B, T, C});
  return apply_linear(l, kOutput, y * g);
}

// spec §1.4
at::Tensor Rwkv7Model::channel_mix(int64_t l, const at::Tensor& x, Rwkv7State& state) {
  const std::string p = block(l) + "ffn.";
  at::Tensor xx = token_shift(x, state.ffn_shift[l]) - x;
  at::Tensor kx = x + xx * weight(p + "x_k").view({config_.n_embd});
  at::Tensor h = at::relu(apply_linear(l, kFfnKey, kx)).square();
  return apply_linear(l, kFfnValue, h);
}

at::Tensor Rwkv7Model::forward(const at::Tensor& tokens, Rwkv7State* state) {
  if (tokens.dim() != 2 || tokens.scalar_type() != at::kLong)
    throw Error("model input must be int64 tokens [B, T], got " + std::string(c10::toString(tokens.scalar_type())) +
                " with " + std::to_string(tokens.dim()) + " dimensions");
  if (tokens.numel() > 0 && (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= config_.vocab))
    throw Error("token ids must be in [0, " + std::to_string(config_.vocab) + ")");
  Rwkv7State local;
  if (!state) {
    local = initial_state(tokens.size(0));
    state = &local;
  }
  auto ln = [&](const at::Tensor& x, const std::string& name) {
    return at::layer_norm(x, {config_.n_embd}, weight(name + ".weight"), weight(name + ".bias"), kLayerNormEps);
  };
  at::Tensor x = at::embedding(weight("emb.weight"), tokens.to(options_.device));
  x = ln(x, "blocks.0.ln0");
  at::Tensor v_first;
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    x = x + time_mix(l, ln(x, block(l) + "ln1"), v_first, *state);
    x = x + channel_mix(l, ln(x, block(l) + "ln2"), *state);
  }
  return at::linear(ln(x, "ln_out"), weight("head.weight"));
}

std::vector<LinearSite> Rwkv7Model::linear_sites() const {
  std::vector<LinearSite> sites;
  for (size_t i = 0; i < sites_.size(); ++i)
    sites.push_back({sites_[i]->name, static_cast<int>(i / kSlots), sites_[i]->base->in_features(),
                     sites_[i]->base->out_features()});
  return sites;
}

std::vector<StateSite> Rwkv7Model::state_sites() const {
  std::vector<StateSite> sites;
  for (int64_t l = 0; l < config_.n_layer; ++l)
    sites.push_back({block(l) + "att", static_cast<int>(l), config_.n_head, config_.head_size, config_.n_embd});
  return sites;
}

size_t Rwkv7Model::site_index(std::string_view name) const {
  for (size_t i = 0; i < sites_.size(); ++i)
    if (sites_[i]->name == name) return i;
  throw Error("no linear site '" + std::string(name) + "'; RWKV-7 sites are blocks.{0.." +
              std::to_string(config_.n_layer - 1) + "}.att.receptance|key|value|output and blocks.{i}.ffn.key|value");
}

const FrozenLinear& Rwkv7Model::linear(std::string_view site) const { return *sites_[site_index(site)]->base; }

void Rwkv7Model::set_base_weight(std::string_view site, const at::Tensor& weight) {
  Site& s = *sites_[site_index(site)];
  if (weight.sizes() != at::IntArrayRef({s.base->out_features(), s.base->in_features()}))
    throw Error("set_base_weight(" + s.name + "): expected shape [" + std::to_string(s.base->out_features()) + ", " +
                std::to_string(s.base->in_features()) + "], got " + c10::str(weight.sizes()));
  at::Tensor w = weight.detach().to(options_.device, options_.dtype);
  weights_[s.name + ".weight"] = w;
  s.base = std::make_unique<DenseLinear>(w);
}

void Rwkv7Model::set_linear_adapter(std::string_view site, std::shared_ptr<LinearAdapter> adapter) {
  sites_[site_index(site)]->adapter = std::move(adapter);
}

void Rwkv7Model::set_state_adapter(std::shared_ptr<StateAdapter> adapter) { state_adapter_ = std::move(adapter); }

}  // namespace peftkit

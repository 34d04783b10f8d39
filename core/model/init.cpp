// A new model exactly as RWKV-LM initialises one: x070 as train_temp (spec rwkv-model §1.7), x060
// as RWKV-v5/src/model.py (§4).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "model/rwkv_model.hpp"

namespace peftkit::model {
namespace {

// torch.nn.init.orthogonal_: Q of the QR of a normal matrix (made tall first), signs fixed by R's
// diagonal, times the gain.
at::Tensor orthogonal(int64_t rows, int64_t cols, double gain, at::Generator& generator) {
  const bool wide = rows < cols;
  at::Tensor flat = at::normal(0.0, 1.0, {wide ? cols : rows, wide ? rows : cols}, generator);
  auto [q, r] = at::linalg_qr(flat);
  q = q * at::sign(at::diagonal(r, 0, -2, -1));
  if (wide) q = q.t();
  return (q * gain).contiguous();
}

// The per-layer values of RWKV-LM's initializers: this layer's "blocks.{l}." prefix, the ratios
// r01 = l / (L - 1) and r1 = 1 - l / L, the channel index n and n / C.
struct Layer {
  std::string p;
  int64_t l, C;
  double r01, r1;
  at::Tensor n, ddd;
  at::Tensor vec(const at::Tensor& v) const { return v.to(at::kFloat).view({1, 1, C}); }
};

// spec §1.7
void add_x070_layer(TensorMap& t, const ModelConfig& c, const Layer& layer,
                    at::Generator& generator) {
  const std::string& p = layer.p;
  const int64_t C = c.n_embd, L = c.n_layer, N = c.head_size, l = layer.l;
  const double r01 = layer.r01, r1 = layer.r1;
  const at::Tensor &n = layer.n, &ddd = layer.ddd;
  const at::Tensor linear = n / static_cast<double>(C - 1) - 0.5;
  const at::Tensor zig =
      (at::remainder(n, static_cast<double>(N)) - (N - 1) / 2.0) / ((N - 1) / 2.0);
  const at::Tensor zigzag = zig * zig.abs();
  auto vec = [&](const at::Tensor& v) { return layer.vec(v); };
  auto full = [&](double value) { return at::full({1, 1, C}, value, at::kFloat); };
  const at::Tensor www =
      -6.0 + 6.0 * at::pow(n / static_cast<double>(C - 1), 1.0 + std::pow(r01, 0.3));
  t[p + "att.x_r"] = vec(1.0 - at::pow(ddd, 0.2 * r1));
  t[p + "att.x_w"] = vec(1.0 - at::pow(ddd, 0.9 * r1));
  t[p + "att.x_k"] = vec(1.0 - at::pow(ddd, 0.7 * r1));
  t[p + "att.x_v"] = vec(1.0 - at::pow(ddd, 0.7 * r1));
  t[p + "att.x_a"] = vec(1.0 - at::pow(ddd, 0.9 * r1));
  t[p + "att.x_g"] = vec(1.0 - at::pow(ddd, 0.2 * r1));
  t[p + "att.w0"] = vec(www + 0.5 + 2.5 * zigzag);
  t[p + "att.a0"] = vec(-0.19 + 0.3 * zigzag + 0.4 * linear);
  t[p + "att.w1"] = at::zeros({C, c.dim_w});
  t[p + "att.w2"] = orthogonal(c.dim_w, C, 0.1, generator);
  t[p + "att.a1"] = at::zeros({C, c.dim_a});
  t[p + "att.a2"] = orthogonal(c.dim_a, C, 0.1, generator);
  if (l > 0) {  // layer 0 has no value residual
    t[p + "att.v0"] = vec(0.73 - 0.4 * linear);
    t[p + "att.v1"] = at::zeros({C, c.dim_v});
    t[p + "att.v2"] = orthogonal(c.dim_v, C, 0.1, generator);
  }
  t[p + "att.g1"] = at::zeros({C, c.dim_g});
  t[p + "att.g2"] = orthogonal(c.dim_g, C, 0.1, generator);
  t[p + "att.k_k"] = vec(0.71 - 0.1 * linear);
  t[p + "att.k_a"] = full(1.02);
  t[p + "att.r_k"] = at::full({c.n_head, N}, -0.04, at::kFloat);
  t[p + "att.receptance.weight"] = orthogonal(C, C, 1.0, generator);
  t[p + "att.key.weight"] = orthogonal(C, C, 0.1, generator);
  t[p + "att.value.weight"] = orthogonal(C, C, 1.0, generator);
  t[p + "att.output.weight"] = at::zeros({C, C});
  t[p + "att.ln_x.weight"] = at::full({C}, std::pow((1.0 + l) / L, 0.7), at::kFloat);
  t[p + "att.ln_x.bias"] = at::zeros({C});
  t[p + "ffn.x_k"] = vec(1.0 - at::pow(ddd, std::pow(r1, 4.0)));
  t[p + "ffn.key.weight"] = orthogonal(c.ffn, C, 1.0, generator);
  t[p + "ffn.value.weight"] = at::zeros({C, c.ffn});
}

// spec §4
void add_x060_layer(TensorMap& t, const ModelConfig& c, const Layer& layer,
                    at::Generator& generator) {
  const std::string& p = layer.p;
  const int64_t C = c.n_embd;
  const double r01 = layer.r01, r1 = layer.r1;
  const at::Tensor &n = layer.n, &ddd = layer.ddd;
  auto vec = [&](const at::Tensor& v) { return layer.vec(v); };
  auto uniform = [&](std::vector<int64_t> shape, double bound) {
    return at::empty(shape, at::kFloat).uniform_(-bound, bound, generator);
  };
  t[p + "att.time_maa_x"] = vec(1.0 - at::pow(ddd, r1));
  t[p + "att.time_maa_w"] = vec(1.0 - at::pow(ddd, r1));
  t[p + "att.time_maa_k"] = vec(1.0 - at::pow(ddd, r1));
  t[p + "att.time_maa_v"] = vec(1.0 - (at::pow(ddd, r1) + 0.3 * r01));
  t[p + "att.time_maa_r"] = vec(1.0 - at::pow(ddd, 0.5 * r1));
  t[p + "att.time_maa_g"] = vec(1.0 - at::pow(ddd, 0.5 * r1));
  t[p + "att.time_maa_w1"] = at::zeros({C, 5 * c.dim_mix});
  t[p + "att.time_maa_w2"] = uniform({5, c.dim_mix, C}, 0.01);
  const at::Tensor position = n / static_cast<double>(C - 1);
  t[p + "att.time_decay"] = vec(-6.0 + 5.0 * at::pow(position, 0.7 + 1.3 * r01));
  t[p + "att.time_decay_w1"] = at::zeros({C, c.dim_decay});
  t[p + "att.time_decay_w2"] = uniform({c.dim_decay, C}, 0.01);
  const at::Tensor zigzag = (at::remainder(n + 1, 3.0) - 1.0) * 0.1;
  t[p + "att.time_faaaa"] =
      (r01 * (1.0 - position) + zigzag).to(at::kFloat).view({c.n_head, c.head_size});
  t[p + "att.receptance.weight"] = orthogonal(C, C, 1.0, generator);
  t[p + "att.key.weight"] = orthogonal(C, C, 0.1, generator);
  t[p + "att.value.weight"] = orthogonal(C, C, 1.0, generator);
  t[p + "att.gate.weight"] = orthogonal(C, C, 0.1, generator);
  t[p + "att.output.weight"] = at::zeros({C, C});
  t[p + "att.ln_x.weight"] = at::ones({C});
  t[p + "att.ln_x.bias"] = at::zeros({C});
  t[p + "ffn.time_maa_k"] = vec(1.0 - at::pow(ddd, std::pow(r1, 3.0)));
  t[p + "ffn.time_maa_r"] = vec(1.0 - at::pow(ddd, std::pow(r1, 3.0)));
  t[p + "ffn.key.weight"] = orthogonal(c.ffn, C, 1.0, generator);
  t[p + "ffn.receptance.weight"] = at::zeros({C, C});
  t[p + "ffn.value.weight"] = at::zeros({C, c.ffn});
}

}  // namespace

TensorMap init_model(const ModelConfig& c, uint64_t seed) {
  // The random draws in RWKV-LM's order: the embedding, each layer's matrices, the head.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t C = c.n_embd, L = c.n_layer;
  const at::Tensor n = at::arange(C, at::TensorOptions().dtype(at::kDouble));
  TensorMap t;
  t["emb.weight"] = at::empty({c.vocab, C}, at::kFloat).uniform_(-1e-4, 1e-4, generator);
  t["blocks.0.ln0.weight"] = at::ones({C});
  t["blocks.0.ln0.bias"] = at::zeros({C});
  for (int64_t l = 0; l < L; ++l) {
    const Layer layer{"blocks." + std::to_string(l) + ".",
                      l,
                      C,
                      L > 1 ? static_cast<double>(l) / (L - 1) : 0.0,
                      1.0 - static_cast<double>(l) / L,
                      n,
                      n / static_cast<double>(C)};
    for (const char* ln : {"ln1", "ln2"}) {
      t[layer.p + ln + ".weight"] = at::ones({C});
      t[layer.p + ln + ".bias"] = at::zeros({C});
    }
    if (c.arch == Architecture::kX060)
      add_x060_layer(t, c, layer, generator);
    else
      add_x070_layer(t, c, layer, generator);
  }
  t["ln_out.weight"] = at::ones({C});
  t["ln_out.bias"] = at::zeros({C});
  const double head_gain = c.vocab > C ? 0.5 * std::sqrt(static_cast<double>(c.vocab) / C) : 0.5;
  t["head.weight"] = orthogonal(c.vocab, C, head_gain, generator);
  return t;
}

}  // namespace peftkit::model

// The RWKV-6 (x060) time-mix and channel-mix of a block, spec rwkv-model §4.
#include <ATen/ATen.h>

#include "model/rwkv_model.hpp"
#include "wkv6/wkv6.hpp"

namespace peftkit::model {
namespace {

constexpr double kGroupNormEps = 64e-5;  // ln_x: 1e-5 * head_size_divisor^2, as in x070
// The block's linear sites in ModelConfig::block_linear_names() order.
enum Slot : size_t {
  kReceptance,
  kKey,
  kValue,
  kGate,
  kOutput,
  kFfnKey,
  kFfnReceptance,
  kFfnValue
};

// shift(x) - x for x [B, T, C], with `last` [B, C] the token before the first.
at::Tensor shift_difference(const at::Tensor& x, const at::Tensor& last) {
  const at::Tensor shifted =
      at::cat({last.to(x.scalar_type()).unsqueeze(1), x.narrow(1, 0, x.size(1) - 1)}, 1);
  return shifted - x;
}

}  // namespace

// Data-dependent token shift (the five-way low-rank mix), data-dependent decay, WKV6 with the
// bonus u, GroupNorm per head and the silu gate.
at::Tensor RwkvModel::time_mix_x060(int64_t l, const at::Tensor& x, ModelState& state) {
  const std::string p = block_prefix(l) + "att.";
  const int64_t B = x.size(0), T = x.size(1), C = config_.n_embd, H = config_.n_head,
                N = config_.head_size, D = config_.dim_mix;
  auto vec = [&](const char* name) { return weight(p + name).view({C}); };
  const at::Tensor xx = shift_difference(x, state.att_shift[l]);
  state.att_shift[l] = x.select(1, T - 1);

  const at::Tensor xxx = x + xx * vec("time_maa_x");
  // [B*T, 5, D] -> [5, B*T, D] @ [5, D, C] -> [5, B, T, C], in the order w, k, v, r, g.
  const at::Tensor m =
      at::bmm(
          at::tanh(at::matmul(xxx, weight(p + "time_maa_w1"))).view({B * T, 5, D}).transpose(0, 1),
          weight(p + "time_maa_w2"))
          .view({5, B, T, C});
  auto mixed = [&](int index, const char* maa) { return x + xx * (vec(maa) + m[index]); };
  const at::Tensor xw = mixed(0, "time_maa_w"), xk = mixed(1, "time_maa_k"),
                   xv = mixed(2, "time_maa_v"), xr = mixed(3, "time_maa_r"),
                   xg = mixed(4, "time_maa_g");

  const at::Tensor r = apply_linear(l, kReceptance, xr);
  const at::Tensor k = apply_linear(l, kKey, xk);
  const at::Tensor v = apply_linear(l, kValue, xv);
  const at::Tensor g = at::silu(apply_linear(l, kGate, xg));
  // The decay is fp32 whatever the model dtype, as in RWKV-LM.
  const at::Tensor w =
      weight(p + "time_decay").view({C}).to(at::kFloat) +
      at::matmul(at::tanh(at::matmul(xw, weight(p + "time_decay_w1"))), weight(p + "time_decay_w2"))
          .to(at::kFloat);

  auto heads = [&](const at::Tensor& t) { return t.reshape({B, T, H, N}); };
  auto wkv = options_.reference_kernels ? kernels::wkv6_reference : kernels::wkv6;
  auto [y, s_final] = wkv(heads(r), heads(k), heads(v), heads(w),
                          weight(p + "time_faaaa").to(at::kFloat), state.wkv[l]);
  state.wkv[l] = s_final;
  const at::Tensor normed =
      at::group_norm(y.reshape({B * T, C}).to(x.scalar_type()), H, weight(p + "ln_x.weight"),
                     weight(p + "ln_x.bias"), kGroupNormEps)
          .view({B, T, C});
  return apply_linear(l, kOutput, normed * g);
}

// sigmoid(receptance) * value(relu(key)^2), each input with its own static token-shift mix.
at::Tensor RwkvModel::channel_mix_x060(int64_t l, const at::Tensor& x, ModelState& state) {
  const std::string p = block_prefix(l) + "ffn.";
  const int64_t C = config_.n_embd;
  const at::Tensor xx = shift_difference(x, state.ffn_shift[l]);
  state.ffn_shift[l] = x.select(1, x.size(1) - 1);
  const at::Tensor xk = x + xx * weight(p + "time_maa_k").view({C});
  const at::Tensor xr = x + xx * weight(p + "time_maa_r").view({C});
  const at::Tensor hidden = at::relu(apply_linear(l, kFfnKey, xk)).square();
  return at::sigmoid(apply_linear(l, kFfnReceptance, xr)) * apply_linear(l, kFfnValue, hidden);
}

}  // namespace peftkit::model

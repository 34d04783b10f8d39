// The RWKV-7 (x070) time-mix and channel-mix of a block, spec rwkv-model §1.2-1.4.
#include <ATen/ATen.h>

#include "fused/fused.hpp"
#include "model/rwkv_model.hpp"
#include "wkv7/wkv7.hpp"

namespace peftkit::model {
namespace {

constexpr double kGroupNormEps = 64e-5;  // ln_x: 1e-5 * head_size_divisor^2
// The block's linear sites in ModelConfig::block_linear_names() order.
enum Slot : size_t { kReceptance, kKey, kValue, kOutput, kFfnKey, kFfnValue };

}  // namespace

// spec §1.2
at::Tensor RwkvModel::time_mix_x070(int64_t l, const at::Tensor& x, at::Tensor& v_first,
                                    ModelState& state) {
  const std::string p = block_prefix(l) + "att.";
  const int64_t B = x.size(0), T = x.size(1), C = config_.n_embd, H = config_.n_head,
                N = config_.head_size;
  auto vec = [&](const char* name) { return weight(p + name).view({C}); };
  const bool reference = options_.reference_kernels;
  const at::Tensor mixes =
      at::stack({vec("x_r"), vec("x_w"), vec("x_k"), vec("x_v"), vec("x_a"), vec("x_g")});
  // Six tensors, not slices of one: autograd would fill a zero [6, B, T, C] gradient per slice and
  // add the six up.
  const std::vector<at::Tensor> mixed =
      (reference ? kernels::token_shift_mix_reference : kernels::token_shift_mix)(
          x, state.att_shift[l], mixes);
  state.att_shift[l] = x.select(1, T - 1);
  const at::Tensor &xr = mixed[0], &xw = mixed[1], &xk = mixed[2], &xv = mixed[3], &xa = mixed[4],
                   &xg = mixed[5];

  at::Tensor r = apply_linear(l, kReceptance, xr);
  at::Tensor z =
      vec("w0") + at::matmul(at::tanh(at::matmul(xw, weight(p + "w1"))), weight(p + "w2"));
  at::Tensor k = apply_linear(l, kKey, xk);
  at::Tensor v = apply_linear(l, kValue, xv);
  if (l == 0) {
    v_first = v;
  } else {
    // v + (v_first - v) * gate, in one kernel and one rounding.
    v = at::lerp(
        v, v_first,
        at::sigmoid(vec("v0") + at::matmul(at::matmul(xv, weight(p + "v1")), weight(p + "v2"))));
  }
  at::Tensor a =
      at::sigmoid(vec("a0") + at::matmul(at::matmul(xa, weight(p + "a1")), weight(p + "a2")));
  at::Tensor g = at::matmul(at::sigmoid(at::matmul(xg, weight(p + "g1"))), weight(p + "g2"));

  // kk from the original k; the WKV and the bonus use the modified k (pitfall §7.2).
  const kernels::KkAb kab =
      (reference ? kernels::kk_ab_reference : kernels::kk_ab)(k, a, vec("k_k"), vec("k_a"), H);
  k = kab.k;

  auto heads = [&](const at::Tensor& t) { return t.reshape({B, T, H, N}); };
  auto [y, s_final] = reference
                          ? kernels::wkv7_reference(heads(r), heads(z), heads(k), heads(v),
                                                    heads(kab.a), heads(kab.b), state.wkv[l])
                          : kernels::wkv7(heads(r), heads(z), heads(k), heads(v), heads(kab.a),
                                          heads(kab.b), state.wkv[l], wkv_memo_);
  state.wkv[l] = s_final;
  y = (reference ? kernels::norm_bonus_gate_reference : kernels::norm_bonus_gate)(
      y.reshape({B, T, C}), r, k, v, g, weight(p + "ln_x.weight"), weight(p + "ln_x.bias"),
      weight(p + "r_k"), H, kGroupNormEps);
  return apply_linear(l, kOutput, y);
}

// spec §1.4
at::Tensor RwkvModel::channel_mix_x070(int64_t l, const at::Tensor& x, ModelState& state) {
  const std::string p = block_prefix(l) + "ffn.";
  const bool reference = options_.reference_kernels;
  const at::Tensor kx = (reference ? kernels::token_shift_mix_reference : kernels::token_shift_mix)(
      x, state.ffn_shift[l], weight(p + "x_k").view({1, config_.n_embd}))[0];
  state.ffn_shift[l] = x.select(1, x.size(1) - 1);
  const at::Tensor h = (reference ? kernels::relu_square_reference
                                  : kernels::relu_square)(apply_linear(l, kFfnKey, kx));
  return apply_linear(l, kFfnValue, h);
}

}  // namespace peftkit::model

// fused.hpp: the RWKV-7 block pieces the official fast path fuses (spec rwkv-model §1.9), each one
// CUDA kernel forward and one backward (fused_cuda.cu), with the tensor-op formula beside it as
// the CPU path and the reference. Activations are [B, T, C] with C = H * N; per-channel parameters
// are [C] (any shape with C elements). Gradients flow to every tensor argument.
//
//   token_shift_mix   out[m] = x + (x_prev - x) * mix[m], x_prev = x one step back, `shift` [B, C]
//                     before t = 0 (the six time-mix lerps in one pass, or the channel-mix one);
//                     returns M tensors [B, T, C] for mixes [M, C], M <= 8
//   kk_ab             per head: kk = normalize(k * k_k), k' = k * (1 + (a - 1) * k_a), a_in = -kk,
//                     b_in = kk * a (the WKV's a and b and the modified key)
//   norm_bonus_gate   (GroupNorm_H(y) * ln_w + ln_b + sum_head(r * k * r_k) * v) * g
//   relu_square       relu(x)^2 (channel mix)
// The kernels run for bf16/fp32 CUDA tensors with head sizes 32/64/128/256; anything else takes
// the reference. The *_reference functions always do.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace peftkit::kernels {

struct KkAb {
  at::Tensor k, a, b;
};

std::vector<at::Tensor> token_shift_mix(const at::Tensor& x, const at::Tensor& shift,
                                        const at::Tensor& mixes);
KkAb kk_ab(const at::Tensor& k, const at::Tensor& a, const at::Tensor& k_k, const at::Tensor& k_a,
           int64_t heads);
at::Tensor norm_bonus_gate(const at::Tensor& y, const at::Tensor& r, const at::Tensor& k,
                           const at::Tensor& v, const at::Tensor& g, const at::Tensor& ln_w,
                           const at::Tensor& ln_b, const at::Tensor& r_k, int64_t heads,
                           double eps);
at::Tensor relu_square(const at::Tensor& x);

std::vector<at::Tensor> token_shift_mix_reference(const at::Tensor& x, const at::Tensor& shift,
                                                  const at::Tensor& mixes);
KkAb kk_ab_reference(const at::Tensor& k, const at::Tensor& a, const at::Tensor& k_k,
                     const at::Tensor& k_a, int64_t heads);
at::Tensor norm_bonus_gate_reference(const at::Tensor& y, const at::Tensor& r, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& g,
                                     const at::Tensor& ln_w, const at::Tensor& ln_b,
                                     const at::Tensor& r_k, int64_t heads, double eps);
at::Tensor relu_square_reference(const at::Tensor& x);

}  // namespace peftkit::kernels

// wkv7.hpp: the RWKV-7 WKV operator (spec rwkv-model §1.3), differentiable.
//
// Per batch b and head h, with state S [N, N] (row i = value index, column j = key index):
//   d_t   = exp(-e^-0.5 * sigmoid(z_t))          (the soft-clamped decay, applied inside)
//   S_t   = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T
//   y_t   = S_t r_t
// All inputs are [B, T, H, N]; z is the raw decay logit w0 + tanh(x w1) w2 (before the clamp).
// s0 is the initial state [B, H, N, N] (value-major, as RWKV-PEFT's time_state), or undefined
// for zeros. Returns y [B, T, H, N] in r's dtype and the final state [B, H, N, N]. The state and
// its arithmetic are fp32 (fp64 when the inputs are fp64). Gradients flow to every input,
// the initial state included, and from the final state.
//
//   auto [y, s_final] = peftkit::kernels::wkv7(r, z, k, v, -kk, kk * a, s0);
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace peftkit::kernels {

std::tuple<at::Tensor, at::Tensor> wkv7(const at::Tensor& r, const at::Tensor& z,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& a, const at::Tensor& b,
                                        const at::Tensor& s0);

// The same operator with tensor operations per time step, on any device (autograd differentiates
// it): the debugging path (`[train] kernel = "reference"`) and wkv7()'s fallback on devices or
// head sizes without a kernel.
std::tuple<at::Tensor, at::Tensor> wkv7_reference(const at::Tensor& r, const at::Tensor& z,
                                                  const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& a, const at::Tensor& b,
                                                  const at::Tensor& s0);

// The decay the kernel applies, d = exp(-e^-0.5 * sigmoid(z)), for references and tests.
at::Tensor wkv7_decay(const at::Tensor& z);

}  // namespace peftkit::kernels

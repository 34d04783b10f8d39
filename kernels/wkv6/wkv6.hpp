// wkv6.hpp: the RWKV-6 WKV operator (spec rwkv-model §4), differentiable.
//
// Per batch b and head h, with state S [N, N] (row i = value index, column j = key index, the
// layout of RWKV-PEFT's x060 time_state and of the official CUDA kernels):
//   d_t = exp(-exp(w_t))                        (w: the raw decay, time_decay + LoRA, no clamp)
//   y_t = (S_{t-1} + v_t (u * k_t)^T) r_t        (the state BEFORE the update, plus the bonus u)
//   S_t = S_{t-1} diag(d_t) + v_t k_t^T
// r, k, v, w are [B, T, H, N]; u (time_faaaa) is [H, N], shared by the batch; s0 is the initial
// state [B, H, N, N] or undefined for zeros. Returns y [B, T, H, N] in r's dtype and the final
// state [B, H, N, N]. The state and its arithmetic are fp32 (fp64 for fp64 inputs). Gradients
// flow to every input, u and the initial state included, and from the final state.
// CPU tensors run the exact sequential kernel; CUDA tensors with N 32 or 64 (not fp64)
// run the chunked CUDA kernels (wkv6_cuda.hpp), other CUDA inputs wkv6_reference below.
//
//   auto [y, s_final] = peftkit::kernels::wkv6(r, k, v, w, u, s0);
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace peftkit::kernels {

std::tuple<at::Tensor, at::Tensor> wkv6(const at::Tensor& r, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& w,
                                        const at::Tensor& u, const at::Tensor& s0);

// The same operator with tensor operations per time step, on any device (autograd differentiates
// it): the debugging path (`[train] kernel = "reference"`) and wkv6()'s path on devices without
// a kernel.
std::tuple<at::Tensor, at::Tensor> wkv6_reference(const at::Tensor& r, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& w,
                                                  const at::Tensor& u, const at::Tensor& s0);

}  // namespace peftkit::kernels

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

#include <cstdint>
#include <tuple>
#include <vector>

#include "wkv7/wkv7_cuda.hpp"

namespace peftkit::kernels {

// One wkv7 call's forward, kept for a recomputation of the same call (gradient checkpointing
// that recomputes a block but not its WKV): a call that needs no backward fills it (the outputs
// and what a backward reads: chunk states, or the CPU's checkpoints); the recomputation, which
// needs a backward, takes its contents instead of running the forward again, after checking
// that its inputs have the same shape, dtype and device. Cost: about 20 bytes per input element
// on CUDA (fp32 chunk states and sa) until the recomputation or the memo's end.
struct Wkv7Memo {
  at::Tensor y, s_final;
  std::vector<at::Tensor> saved;  // the backward's tensors besides the inputs
  std::vector<int64_t> sizes;     // r's sizes, dtype and device, checked when taken
  at::ScalarType dtype = at::ScalarType::Undefined;
  at::Device device = at::kCPU;
  bool filled() const { return y.defined(); }
};

// bf16 inputs on CUDA: which form of the chunked kernels runs (see Wkv7ChunkedForm; by default
// the shape picks). Tests and benchmarks force one; without CUDA it does nothing.
void use_wkv7_chunked_form(cuda::Wkv7ChunkedForm form);

// How many memos wkv7 has taken in this process (tests check that a recomputation used one).
int64_t wkv7_memos_taken();

// memo: see Wkv7Memo; null runs the forward as usual.
std::tuple<at::Tensor, at::Tensor> wkv7(const at::Tensor& r, const at::Tensor& z,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& a, const at::Tensor& b,
                                        const at::Tensor& s0, Wkv7Memo* memo = nullptr);

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

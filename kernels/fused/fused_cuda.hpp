// fused_cuda.hpp: the fused RWKV-7 block pieces on CUDA, on raw device pointers (no LibTorch
// here), run on `place`'s stream. Inputs, outputs and the activations' gradients are bf16 or fp32
// (`type`, one rounding of fp32 arithmetic); per-channel parameter gradients come out as fp32
// partial sums [partials, channels] that the caller adds up (deterministic, no atomics), or are
// skipped where their pointer is null (frozen parameters). Functions return "" or the CUDA error.
// The formulas are in fused.hpp.
#pragma once

#include <cstdint>
#include <string>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

enum class FusedType { kFloat32, kBFloat16 };

// Rows of a [B, T, C] activation handled by one partial sum of a parameter gradient: a backward
// thread (warp, per head) walks them in turn, so fewer rows keep more loads in flight.
inline constexpr int64_t kFusedRowsPerPartial = 16;
inline int64_t fused_partials(int64_t rows) {
  return (rows + kFusedRowsPerPartial - 1) / kFusedRowsPerPartial;
}

// The most mixes one token_shift_mix call takes (RWKV-7's time mix has six).
inline constexpr int64_t kMaxMixes = 8;

// out[m] = x + (x_prev - x) * mix[m] for m < M <= kMaxMixes; x and out[m] [B, T, C], shift [B, C]
// (x_prev of t = 0), mix [M, C] fp32. Each mix has its own output tensor, so that autograd hands
// the backward one gradient per mix instead of summing slices of one [M, B, T, C] tensor.
std::string token_shift_mix_forward(Place place, FusedType type, int64_t B, int64_t T, int64_t C,
                                    int64_t M, const void* x, const void* shift, const float* mix,
                                    void* const* out);
// dout[m] [B, T, C] in `type`, null for a zero gradient; dx [B, T, C] in `type`; dshift [B, C]
// fp32; dmix_partials [partials(B*T), M, C].
std::string token_shift_mix_backward(Place place, FusedType type, int64_t B, int64_t T, int64_t C,
                                     int64_t M, const void* x, const void* shift, const float* mix,
                                     const void* const* dout, void* dx, float* dshift,
                                     float* dmix_partials);

// The per-head kernels below write partials for fused_head_partials(rows) row ranges.
int64_t fused_head_partials(int64_t rows);

// Per head of N (N = 32, 64, 128 or 256): kk = normalize(k * k_k), k_out = k * (1 + (a - 1) * k_a),
// a_out = -kk, b_out = kk * a. k, a, outputs [rows, H * N]; k_k, k_a [H * N] fp32.
std::string kk_ab_forward(Place place, FusedType type, int64_t rows, int64_t H, int64_t N,
                          const void* k, const void* a, const float* k_k, const float* k_a,
                          void* k_out, void* a_out, void* b_out);
// Gradients in may be null (zero). dk, da [rows, H * N] in `type`; partials [partials(rows), H *
// N].
std::string kk_ab_backward(Place place, FusedType type, int64_t rows, int64_t H, int64_t N,
                           const void* k, const void* a, const float* k_k, const float* k_a,
                           const void* dk_out, const void* da_out, const void* db_out, void* dk,
                           void* da, float* dk_k_partials, float* dk_a_partials);

// Per head of N: out = (GroupNorm(y) * w + bias + sum(r * k * r_k) * v) * g. The backward writes
// dy, dr, dk, dv, dg in `type`.
std::string norm_bonus_gate_forward(Place place, FusedType type, int64_t rows, int64_t H, int64_t N,
                                    double eps, const void* y, const void* r, const void* k,
                                    const void* v, const void* g, const float* w, const float* bias,
                                    const float* r_k, void* out);
std::string norm_bonus_gate_backward(Place place, FusedType type, int64_t rows, int64_t H,
                                     int64_t N, double eps, const void* y, const void* r,
                                     const void* k, const void* v, const void* g, const float* w,
                                     const float* bias, const float* r_k, const void* dout,
                                     void* dy, void* dr, void* dk, void* dv, void* dg,
                                     float* dw_partials, float* dbias_partials,
                                     float* dr_k_partials);

// out = relu(x)^2 and its backward dx = 2 relu(x) dout; n elements.
std::string relu_square_forward(Place place, FusedType type, int64_t n, const void* x, void* out);
std::string relu_square_backward(Place place, FusedType type, int64_t n, const void* x,
                                 const void* dout, void* dx);

}  // namespace peftkit::kernels::cuda

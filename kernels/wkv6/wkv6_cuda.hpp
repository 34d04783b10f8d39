// wkv6_cuda.hpp: the WKV6 recurrence on CUDA, on raw device pointers (no LibTorch here), run on
// `place`'s stream. The formulas are in wkv6.hpp.
//
// The chunked design (chunk = kWkv6Chunk steps). Within a chunk every decay product runs from a
// later step back to an earlier one, so it is at most 1 whatever the decays: nothing overflows.
//   forward   (1) a pass over chunks per (batch, head, group of 16 state columns; columns decay
//             independently): the state entering every chunk, then
//             S <- S diag(D) + sum_t v_t (k_t * decay from t to the chunk's end)^T, and the final
//             state;
//             (2) every chunk in parallel: y from the chunk's entry state and the chunk's
//             step-pair matrix A[t][s] = sum_j r_t k_s exp(c_{t-1} - c_s) (c: the cumulative
//             log-decay inside the chunk), with the bonus u on the diagonal.
//   backward  (1) a reverse pass over chunks, as (1) above, for the gradient of the state at every
//             chunk's end, dL/ds0 last;
//             (2) every chunk in parallel: dr, dk, dv from the entry state and the end gradient;
//             dw from the identity dL/dlog d_t = sum_i G_t d_t S_{t-1} (G_t: gradient of S_t),
//             expanded into products of the entry state, the end gradient and the chunk's steps
//             (see the kernel); du per chunk.
// All arithmetic is fp32 on CUDA cores (the in-chunk cumulative log-decays fp64) (inputs bf16 or
// fp32), no atomics: bit-identical run to run.
//
// Layouts: r, k, v, w [B, T, H, N] contiguous in `type` (w the raw decay: d = exp(-exp(w)));
// u [H, N] fp32; states [B, H, N, N] fp32, row = value index; chunk states and chunk gradients
// [B*H, chunks, N, N] fp32; dy and gradients fp32 [B, T, H, N]; du per chunk [B*H, chunks, N]
// (the caller sums it). N must be 32 or 64. Functions return "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

struct Wkv6Shape {
  int64_t B, T, H, N;
};

inline constexpr int64_t kWkv6Chunk = 16;

bool wkv6_supports(int64_t head_size);

inline int64_t wkv6_chunks(const Wkv6Shape& s) { return (s.T + kWkv6Chunk - 1) / kWkv6Chunk; }
// Floats of the chunk states (and of the backward's chunk gradients).
inline int64_t wkv6_chunk_state_floats(const Wkv6Shape& s) {
  return s.B * s.H * wkv6_chunks(s) * s.N * s.N;
}
inline int64_t wkv6_du_per_chunk_floats(const Wkv6Shape& s) {
  return s.B * s.H * wkv6_chunks(s) * s.N;
}

std::string wkv6_forward(Place place, InputType type, const Wkv6Shape& shape, const void* r,
                         const void* k, const void* v, const void* w, const float* u,
                         const float* s0, void* y, float* s_final, float* chunk_states);

// dy and ds_final must be given (zeros for no gradient); chunk_grads is scratch of
// wkv6_chunk_state_floats.
std::string wkv6_backward(Place place, InputType type, const Wkv6Shape& shape, const void* r,
                          const void* k, const void* v, const void* w, const float* u,
                          const float* chunk_states, const float* dy, const float* ds_final,
                          float* dr, float* dk, float* dv, float* dw, float* du_per_chunk,
                          float* ds0, float* chunk_grads);

}  // namespace peftkit::kernels::cuda

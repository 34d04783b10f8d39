// wkv7_cuda.hpp: the WKV7 recurrence on CUDA, on raw device pointers (no LibTorch here), run on
// `place`'s stream.
//
// The chunked design (chunk = kWkv7Chunk steps), all arithmetic in fp32:
//   forward   one pass over time per (batch, head), each state row split over N/16 threads (a
//             thread holds two rows from N = 64); writes y, the state entering every chunk, and
//             sa_t = S_{t-1} a_t (needed by the backward).
//   backward  (1) one reverse pass per (batch, head) for the state gradient alone (it needs no
//             state): dS entering every chunk from the end, dsa_t = dS_t b_t, dv, and ds0;
//             (2) every chunk of every head in parallel: its states recomputed from the stored
//             chunk state (anchors every few steps in shared memory), then dr, dz, dk, da, db
//             as column sums over the rows.
// No atomics: results are bit-identical run to run.
//
// Layouts: inputs [B, T, H, N] contiguous in `type` (z is the raw decay logit; the kernels apply
// d = exp(-e^-0.5 sigmoid(z)) themselves); states [B, H, N, N] fp32 (row = value index);
// chunk states [B*H, ceil(T/chunk), N, N] fp32; sa, dy and gradients fp32 [B, T, H, N].
// N must be 16, 32, 64 or 128. Functions return "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

enum class InputType { kFloat32, kBFloat16 };

struct Wkv7Shape {
  int64_t B, T, H, N;
};

inline constexpr int64_t kWkv7Chunk = 16;

bool wkv7_supports(int64_t head_size);

inline int64_t wkv7_chunks(const Wkv7Shape& s) { return (s.T + kWkv7Chunk - 1) / kWkv7Chunk; }
// Floats of the stored chunk states (also the backward's chunk gradients).
inline int64_t wkv7_chunk_state_floats(const Wkv7Shape& s) { return s.B * s.H * wkv7_chunks(s) * s.N * s.N; }
// Floats of the backward's scratch: chunk gradients and dsa.
inline int64_t wkv7_backward_scratch_floats(const Wkv7Shape& s) {
  return wkv7_chunk_state_floats(s) + s.B * s.T * s.H * s.N;
}

// chunk_states and sa may be null when no backward follows (inference).
std::string wkv7_forward(Place place, InputType type, const Wkv7Shape& shape, const void* r, const void* z,
                         const void* k, const void* v, const void* a, const void* b, const float* s0, void* y,
                         float* s_final, float* chunk_states, float* sa);

// dy and ds_final may be null (no gradient).
std::string wkv7_backward(Place place, InputType type, const Wkv7Shape& shape, const void* r, const void* z,
                          const void* k, const void* v, const void* a, const void* b, const float* chunk_states,
                          const float* sa, const float* dy, const float* ds_final, float* dr, float* dz, float* dk,
                          float* dv, float* da, float* db, float* ds0, float* scratch);

}  // namespace peftkit::kernels::cuda

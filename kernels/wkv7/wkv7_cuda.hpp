// wkv7_cuda.hpp: the WKV7 recurrence on CUDA, on raw device pointers (no LibTorch here), run on
// `place`'s stream.
//
// The chunked design (chunk = kWkv7Chunk steps):
//   forward, bf16 inputs: (1) per chunk: the chunk's decays, step-pair matrices and the WY form
//             of sa (W, U by forward substitution); (2) one pass over chunks per (batch, head), a
//             warp per 16 state rows holding them in registers: sa = W S^T + U, y and the state
//             update as tensor-core products with fp32 accumulation: split TF32 (two TF32 parts,
//             three products) for what the carried state depends on, TF32 for what only reaches
//             y. The final state stays within 2e-4 of float64. (1) runs either for every chunk in
//             parallel into global memory, or fused into (2) in shared memory (Wkv7ChunkedForm).
//   forward, fp32 inputs: one pass over time per (batch, head) in fp32 on CUDA cores (a state row
//             split over N/16 threads, two rows per thread from N = 64); TF32 would miss the fp32
//             accuracy bound.
//   Both write the state entering every chunk and sa_t = S_{t-1} a_t when a backward follows.
//   backward  (1) the state gradient alone (it needs no state): dS entering every chunk from the
//             end, dsa_t = dS_t b_t, dv, and ds0. bf16 inputs: the forward's two chunked kernels
//             on the transposed recurrence, chunks visited from the end, with the same split
//             (dh0 within 1e-6 of float64). fp32 inputs: one reverse pass over time per
//             (batch, head) in fp32 on CUDA cores;
//             (2) every chunk of every head in parallel: dr, dz, dk, da, db from the chunk's entry
//             state and end gradient; bf16 as tensor-core products (no per-step states), fp32 by
//             recomputing the chunk's states on CUDA cores.
// No atomics: results are bit-identical run to run.
//
// Layouts: inputs [B, T, H, N] contiguous in `type` (z is the raw decay logit; the kernels apply
// d = exp(-e^-0.5 sigmoid(z)) themselves); states [B, H, N, N] fp32 (row = value index);
// chunk states [B*H, ceil(T/chunk), N, N] fp32; sa and dsa fp32 [B, T, H, N]; y, dy and the
// input gradients [B, T, H, N] in the inputs' type.
// N must be 16, 32, 64 or 128. Functions return "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

struct Wkv7Shape {
  int64_t B, T, H, N;
};

inline constexpr int64_t kWkv7Chunk = 16;

bool wkv7_supports(int64_t head_size);

// The bf16 chunked recurrences (the forward and the state gradient) run in one of two forms:
// two kernels (every chunk's fp32 operands in parallel into global memory, then the pass over
// chunks), or fused (one kernel per (batch, head) that builds each chunk's operands in shared
// memory right before its pass step). Results are the same; speed depends on the shape, and
// kByShape (the default) takes the form measured faster. Tests and benchmarks force one.
enum class Wkv7ChunkedForm { kByShape, kTwoKernels, kFused };
void select_wkv7_chunked_form(Wkv7ChunkedForm form);

inline int64_t wkv7_chunks(const Wkv7Shape& s) { return (s.T + kWkv7Chunk - 1) / kWkv7Chunk; }
// Floats of the stored chunk states (also the backward's chunk gradients).
inline int64_t wkv7_chunk_state_floats(const Wkv7Shape& s) {
  return s.B * s.H * wkv7_chunks(s) * s.N * s.N;
}
// Floats of the forward's scratch: the per-chunk operands of the two-kernel chunked form (bf16),
// else 0. A scratch is sized for the form chosen at the time (see Wkv7ChunkedForm).
int64_t wkv7_forward_scratch_floats(Place place, InputType type, const Wkv7Shape& s);
// Floats of the backward's scratch: chunk gradients, dsa and the forward's scratch.
int64_t wkv7_backward_scratch_floats(Place place, InputType type, const Wkv7Shape& s);

// chunk_states and sa may be null when no backward follows (inference).
std::string wkv7_forward(Place place, InputType type, const Wkv7Shape& shape, const void* r,
                         const void* z, const void* k, const void* v, const void* a, const void* b,
                         const float* s0, void* y, float* s_final, float* chunk_states, float* sa,
                         float* scratch);

// dy and ds_final may be null (no gradient). dy and the input gradients dr .. db are in `type`
// (one rounding from fp32); ds0 is fp32.
std::string wkv7_backward(Place place, InputType type, const Wkv7Shape& shape, const void* r,
                          const void* z, const void* k, const void* v, const void* a, const void* b,
                          const float* chunk_states, const float* sa, const void* dy,
                          const float* ds_final, void* dr, void* dz, void* dk, void* dv, void* da,
                          void* db, float* ds0, float* scratch);

}  // namespace peftkit::kernels::cuda

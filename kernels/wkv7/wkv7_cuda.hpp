// wkv7_cuda.hpp: the WKV7 recurrence on CUDA, on raw device pointers (no LibTorch here), run on
// the legacy default stream of `device`. One thread block per (batch, head), thread i owning row i
// of the fp32 state; the backward recomputes each 16-step chunk from checkpoints the forward took.
// This is the sequential kernel (RWKV-LM's design); the chunked tensor-core kernels of the GPU
// milestone will sit behind the same interface.
//
// Layouts: inputs [B, T, H, N] contiguous in `type`; states [B, H, N, N] fp32 (row = value index);
// checkpoints [B*H, ceil(T/16), N, N] fp32; gradients fp32 [B, T, H, N]. N must be 16, 32, 64 or
// 128. Functions return "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

namespace peftkit::kernels::cuda {

enum class InputType { kFloat32, kBFloat16 };

struct Wkv7Shape {
  int64_t B, T, H, N;
};

inline constexpr int64_t kWkv7Chunk = 16;

bool wkv7_supports(int64_t head_size);

std::string wkv7_forward(int device, InputType type, const Wkv7Shape& shape, const void* r, const void* z,
                         const void* k, const void* v, const void* a, const void* b, const float* s0, void* y,
                         float* s_final, float* checkpoints);

// dy and ds_final may be null (no gradient). scratch: B*H*(kWkv7Chunk+1)*N*N floats.
std::string wkv7_backward(int device, InputType type, const Wkv7Shape& shape, const void* r, const void* z,
                          const void* k, const void* v, const void* a, const void* b, const float* checkpoints,
                          const float* dy, const float* ds_final, float* dr, float* dz, float* dk, float* dv,
                          float* da, float* db, float* ds0, float* scratch);

}  // namespace peftkit::kernels::cuda

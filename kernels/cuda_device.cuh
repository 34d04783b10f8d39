// cuda_device.cuh: device helpers every CUDA kernel file of kernels/ shares (CUDA sources only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace peftkit::kernels::cuda {

__device__ inline float load(const float* p, int64_t i) { return p[i]; }
__device__ inline float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

__device__ inline void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void store(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// Loads of data no kernel writes while it runs (the non-coherent read-only path; such loads may
// be reordered around shared-memory stores).
__device__ inline float read_only(const float* p, int64_t i) { return __ldg(p + i); }
__device__ inline float read_only(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(__ldg(p + i));
}

// Where step t of head bh starts in a [B, T, H, N] tensor (Shape: any struct with B, T, H, N).
struct HeadIndex {
  int64_t base, stride;
  template <class Shape>
  __device__ HeadIndex(const Shape& s, int64_t bh)
      : base((bh / s.H) * s.T * s.H * s.N + (bh % s.H) * s.N), stride(s.H * s.N) {}
  __device__ int64_t at(int64_t t) const { return base + t * stride; }
};

// "" or what failed, with the last CUDA error.
inline std::string status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

// Lets `kernel` use `bytes` of dynamic shared memory (above 48 KiB needs the opt-in).
template <class Kernel>
bool allow_shared(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes)) == cudaSuccess;
}

}  // namespace peftkit::kernels::cuda

// cuda_place.hpp: where a raw-pointer CUDA kernel runs (no CUDA or LibTorch headers here).
#pragma once

namespace peftkit::kernels::cuda {

struct Place {
  int device;
  // A cudaStream_t: LibTorch's current stream of `device` (cuda_place_of.hpp), so that kernels
  // are ordered with the surrounding tensor ops and a CUDA graph capturing that stream records
  // them.
  void* stream;
};

// The element type of a kernel's per-step inputs (states and gradients are always fp32).
enum class InputType { kFloat32, kBFloat16 };

#ifdef __CUDACC__
inline cudaStream_t stream_of(const Place& place) {
  return static_cast<cudaStream_t>(place.stream);
}
#endif

}  // namespace peftkit::kernels::cuda

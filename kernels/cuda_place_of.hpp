// cuda_place_of.hpp: the Place of a CUDA tensor's kernels, for the LibTorch bindings, and whether
// that place is being captured into a CUDA graph.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

inline Place place_of(const at::Tensor& tensor) {
  const auto device = tensor.get_device();
  return {device, c10::cuda::getCurrentCUDAStream(device).stream()};
}

// True while the current stream of a CUDA tensor's device records a graph: then nothing may wait
// for the device (no .item(), no host copies) and the RNG state cannot be read.
inline bool capturing_graph(const at::Tensor& tensor) {
  if (!tensor.is_cuda()) return false;
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(tensor.get_device());
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

}  // namespace peftkit::kernels::cuda

#include "host/device.hpp"

#include <ATen/Context.h>
#include <c10/core/AllocatorConfig.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <regex>
#include <string>

#include "peftkit/error.hpp"

namespace peftkit::host {

void check_device_name(std::string_view text) {
  static const std::regex kDevice("auto|cpu|cuda(:[0-9]+)?");
  const std::string name(text);
  if (!std::regex_match(name, kDevice))
    throw Error("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", found \"" + name + "\"");
}

c10::Device resolve_device(std::string_view text) {
  check_device_name(text);
  const std::string name(text);
  if (name == "auto") return at::hasCUDA() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (name == "cpu") return c10::kCPU;
  if (!at::hasCUDA()) throw Error(name + ": no CUDA device is available on this machine");
  // Always an explicit index: "cuda" is the first GPU (per-device calls refuse index -1).
  const c10::Device device = name == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::Device(name);
  const int64_t count = at::getNumGPUs();
  if (device.index() >= count)
    throw Error(name + ": this machine has " + std::to_string(count) + " CUDA device" +
                (count == 1 ? "" : "s"));
  return device;
}

std::string resolve_precision(const std::string& precision, const c10::Device& device) {
  if (precision != "auto") return precision;
  return device.is_cuda() ? "bf16" : "fp32";
}

void trim_gpu_memory_overheads(const c10::Device& device) {
  // Segments grown in place: what the allocator reserves stays near what tensors hold (0.37 GiB
  // less at the x060 1.6B geometry, no speed lost).
  if (!std::getenv("PYTORCH_CUDA_ALLOC_CONF") && !std::getenv("PYTORCH_ALLOC_CONF"))
    c10::CachingAllocator::setAllocatorSettings("expandable_segments:True");
  // Read once, at the first GEMM on a GPU, hence set before the model loads: 0.14 GiB off the 1.6B
  // LoRA step, at most 1 % slower at 0.1B.
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:1", /*overwrite=*/0);
  setenv("CUBLASLT_WORKSPACE_SIZE", "4096", /*overwrite=*/0);  // KiB
  // The context reserves stack size x every thread the GPU can hold (the default 1 KiB: 0.26 GiB
  // on an H200). The driver enlarges the reservation at the launch of a kernel that needs more,
  // and keeps it, so no reservation at all is asked for here: the context then holds what the
  // largest kernel run so far needs (peftkit's kernels spill nothing).
  const int index = device.index() < 0 ? 0 : device.index();
  cudaError_t status = cudaSetDevice(index);
  if (status == cudaSuccess) status = cudaDeviceSetLimit(cudaLimitStackSize, 0);
  if (status != cudaSuccess)
    throw Error("cuda:" + std::to_string(index) + ": could not set its stack size (" +
                cudaGetErrorString(status) + ")");
}

}  // namespace peftkit::host

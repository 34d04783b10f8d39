// device.hpp (host-internal): the device names recipes and commands accept.
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <string_view>

namespace peftkit::host {

// Throws peftkit::Error unless the text is one of the accepted forms (checks nothing else).
void check_device_name(std::string_view text);

// "auto" (the first GPU when there is one, else the CPU), "cpu", "cuda" or "cuda:N". Throws
// peftkit::Error for other text or when CUDA is asked for on a machine without it.
c10::Device resolve_device(std::string_view text);

// A recipe's [train] precision on a device: "auto" is bf16 on a GPU and fp32 on the CPU (where
// bf16 is slower, not faster); the others stand.
std::string resolve_precision(const std::string& precision, const c10::Device& device);

// Before a training run's first CUDA work on `device` (bench/RESULTS.md, 2026-12-02, measures
// each): the CUDA allocator grows its segments in place (unless PYTORCH_CUDA_ALLOC_CONF or
// PYTORCH_ALLOC_CONF is set), cuBLAS and cuBLASLt get 4 MiB workspaces instead of LibTorch's
// 32 MiB per stream on Hopper (unless CUBLAS_WORKSPACE_CONFIG or CUBLASLT_WORKSPACE_SIZE is set),
// and the context reserves local memory for a 256-byte stack per thread instead of 1 KiB (a
// kernel that needs more gets it at launch). Process-wide; nothing changes the numbers computed.
void trim_gpu_memory_overheads(const c10::Device& device);

}  // namespace peftkit::host

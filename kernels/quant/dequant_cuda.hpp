// dequant_cuda.hpp: CUDA dequantization kernels on raw device pointers (no LibTorch here), run on
// `place`'s stream.
#pragma once

#include <cstdint>
#include <string>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

enum class OutputType { kFloat32, kBFloat16 };

// out[i] = codebook[code_i] * absmax[i / blocksize] for i < numel; code_i is the high nibble of
// packed[i / 2] for even i, the low nibble for odd i. blocksize must be a multiple of 8.
// Returns an empty string, or the CUDA error.
std::string dequantize_4bit(Place place, const uint8_t* packed, const float* absmax,
                            const float* codebook16, int64_t numel, int64_t blocksize, void* out,
                            OutputType type);

// out[r, c] = q[r, c] * scale[r] / 127 for a row-major [rows, cols] int8 matrix.
std::string dequantize_int8_rows(Place place, const int8_t* q, const float* scale, int64_t rows,
                                 int64_t cols, void* out, OutputType type);

}  // namespace peftkit::kernels::cuda

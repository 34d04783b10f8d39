#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "quant/dequant_cuda.hpp"

namespace peftkit::kernels::cuda {
namespace {

template <class T>
__device__ inline T convert(float v);
template <>
__device__ inline float convert<float>(float v) {
  return v;
}
template <>
__device__ inline __nv_bfloat16 convert<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Stores eight outputs, group g = elements 8g .. 8g + 7, with 16-byte stores.
template <class T>
__device__ inline void store8(T* out, int64_t group, const T (&values)[8]) {
  const uint4* source = reinterpret_cast<const uint4*>(values);
  uint4* target = reinterpret_cast<uint4*>(out) + group * (sizeof(T) * 8 / sizeof(uint4));
  for (size_t k = 0; k < sizeof(T) * 8 / sizeof(uint4); ++k) target[k] = source[k];
}

// Eight outputs per thread: one 32-bit load of packed codes, one 16- or 32-byte store. The eight
// elements share one absmax block because blocksize is a multiple of 8.
template <class T>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ packed,
                                       const float* __restrict__ absmax,
                                       const float* __restrict__ codebook, int64_t numel,
                                       int64_t blocksize, T* __restrict__ out) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = codebook[threadIdx.x];
  __syncthreads();
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // 8 elements
  const int64_t first = group * 8;
  if (first >= numel) return;
  const float scale = absmax[first / blocksize];
  if (first + 8 <= numel) {
    const uint32_t bytes = reinterpret_cast<const uint32_t*>(packed)[group];
    T values[8];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t byte = (bytes >> (8 * b)) & 0xFFu;
      values[2 * b] = convert<T>(lut[byte >> 4] * scale);
      values[2 * b + 1] = convert<T>(lut[byte & 0xFu] * scale);
    }
    store8(out, group, values);
    return;
  }
  for (int64_t i = first; i < numel; ++i) {  // the tail
    const uint8_t byte = packed[i / 2];
    out[i] = convert<T>(lut[(i % 2 == 0) ? (byte >> 4) : (byte & 0xFu)] * scale);
  }
}

// Eight outputs per thread from one 64-bit load; when cols is not a multiple of 8 each element
// finds its own row.
template <class T>
__global__ void dequantize_int8_kernel(const int8_t* __restrict__ q,
                                       const float* __restrict__ scale, int64_t rows, int64_t cols,
                                       T* __restrict__ out) {
  const int64_t numel = rows * cols;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t first = group * 8;
  if (first >= numel) return;
  if (cols % 8 == 0) {
    const float s = scale[first / cols] * (1.0f / 127.0f);
    const uint2 bytes = reinterpret_cast<const uint2*>(q)[group];
    const int8_t* v = reinterpret_cast<const int8_t*>(&bytes);
    T values[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) values[k] = convert<T>(static_cast<float>(v[k]) * s);
    store8(out, group, values);
    return;
  }
  for (int64_t i = first; i < first + 8 && i < numel; ++i)
    out[i] = convert<T>(static_cast<float>(q[i]) * (scale[i / cols] * (1.0f / 127.0f)));
}

std::string launched(const char* what) {
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? std::string()
                               : std::string(what) + ": " + cudaGetErrorString(status);
}

constexpr int kThreads = 256;
unsigned grid_for(int64_t numel) {
  return static_cast<unsigned>((numel / 8 + kThreads) / kThreads);
}

}  // namespace

std::string dequantize_4bit(Place place, const uint8_t* packed, const float* absmax,
                            const float* codebook16, int64_t numel, int64_t blocksize, void* out,
                            OutputType type) {
  if (numel == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return launched("cudaSetDevice");
  if (type == OutputType::kBFloat16)
    dequantize_4bit_kernel<<<grid_for(numel), kThreads, 0, stream_of(place)>>>(
        packed, absmax, codebook16, numel, blocksize, static_cast<__nv_bfloat16*>(out));
  else
    dequantize_4bit_kernel<<<grid_for(numel), kThreads, 0, stream_of(place)>>>(
        packed, absmax, codebook16, numel, blocksize, static_cast<float*>(out));
  return launched("dequantize_4bit");
}

std::string dequantize_int8_rows(Place place, const int8_t* q, const float* scale, int64_t rows,
                                 int64_t cols, void* out, OutputType type) {
  if (rows * cols == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return launched("cudaSetDevice");
  if (type == OutputType::kBFloat16)
    dequantize_int8_kernel<<<grid_for(rows * cols), kThreads, 0, stream_of(place)>>>(
        q, scale, rows, cols, static_cast<__nv_bfloat16*>(out));
  else
    dequantize_int8_kernel<<<grid_for(rows * cols), kThreads, 0, stream_of(place)>>>(
        q, scale, rows, cols, static_cast<float*>(out));
  return launched("dequantize_int8_rows");
}

}  // namespace peftkit::kernels::cuda

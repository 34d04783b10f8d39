#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "cuda_device.cuh"
#include "loss/softmax_loss_cuda.hpp"

namespace peftkit::kernels::cuda {
namespace {

constexpr int kThreads = 512;

// A row's running softmax statistics: its largest value, the sum of exp(x - max) and the first
// index of the largest value. Any order of adds and merges gives the same max and index.
struct SoftmaxStats {
  float max = -INFINITY, sum = 0.0f;
  int index = INT_MAX;

  // x at index i, visited in increasing i by one thread: a tie keeps the earlier index. -inf adds
  // nothing; NaN makes the sum NaN (so does the loss, which the trainer reports).
  __device__ void add(float x, int i) {
    if (x > max) {
      sum = sum * expf(max - x) + 1.0f;
      max = x;
      index = i;
    } else if (x != -INFINITY) {
      sum += expf(x - max);
    }
  }
  __device__ void merge(const SoftmaxStats& o) {
    const float m = fmaxf(max, o.max);
    auto rescaled = [m](float s, float from) { return s == 0.0f ? 0.0f : s * expf(from - m); };
    sum = rescaled(sum, max) + rescaled(o.sum, o.max);
    index = o.max > max ? o.index : max > o.max ? index : min(index, o.index);
    max = m;
  }
  __device__ SoftmaxStats shuffled(int offset) const {
    SoftmaxStats o;
    o.max = __shfl_xor_sync(0xffffffffu, max, offset);
    o.sum = __shfl_xor_sync(0xffffffffu, sum, offset);
    o.index = __shfl_xor_sync(0xffffffffu, index, offset);
    return o;
  }
};

// A row's elements in 16-byte pieces when its start is aligned and V divides into them, else one
// by one; visit(x, i) in increasing i per thread.
template <class T>
struct RowAccess {
  static constexpr int kWidth = 16 / sizeof(T);
  const T* row;
  int V;
  __device__ bool vectorised() const {
    return V % kWidth == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
  }
  template <class Visit>
  __device__ void for_each(const Visit& visit) const {
    if (vectorised()) {
      for (int piece = threadIdx.x; piece < V / kWidth; piece += kThreads) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row) + piece);
        const T* values = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int e = 0; e < kWidth; ++e) visit(load(values, e), piece * kWidth + e);
      }
    } else {
      for (int i = threadIdx.x; i < V; i += kThreads) visit(read_only(row, i), i);
    }
  }
};

// The row's statistics, the same in every thread of the block.
template <class T>
__device__ SoftmaxStats row_stats(const RowAccess<T>& access) {
  __shared__ SoftmaxStats per_warp[kThreads / 32];
  SoftmaxStats stats;
  access.for_each([&](float x, int i) { stats.add(x, i); });
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) stats.merge(stats.shuffled(offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) per_warp[warp] = stats;
  __syncthreads();
  stats = per_warp[0];
  for (int w = 1; w < kThreads / 32; ++w) stats.merge(per_warp[w]);
  return stats;
}

__device__ inline bool in_range(int64_t label, int V) { return label >= 0 && label < V; }

template <class T>
__global__ void __launch_bounds__(kThreads)
    nll_kernel(int V, const T* logits, const int64_t* labels, int64_t ignore_index, float* nll) {
  const int64_t row = blockIdx.x, label = labels[row];
  if (label == ignore_index) {  // the whole block returns
    if (threadIdx.x == 0) nll[row] = 0.0f;
    return;
  }
  const RowAccess<T> access{logits + row * V, V};
  const SoftmaxStats stats = row_stats(access);
  if (threadIdx.x == 0)
    nll[row] = in_range(label, V) ? logf(stats.sum) + stats.max - load(access.row, label) : NAN;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    gradient_kernel(int V, const T* logits, const int64_t* labels, int64_t ignore_index,
                    const float* ce_scale, const float* wrap_scale, T* grad) {
  const int64_t row = blockIdx.x, label = labels[row];
  T* out = grad + row * V;
  const RowAccess<T> access{logits + row * V, V};
  if (label == ignore_index) {
    for (int i = threadIdx.x; i < V; i += kThreads) store(out, i, 0.0f);
    return;
  }
  const SoftmaxStats stats = row_stats(access);
  // The reference's order: softmax times the row's scale, then the one-hot and L2Wrap terms added.
  const float ce = *ce_scale, softmax_scale = ce / stats.sum, wrap = stats.max * *wrap_scale;
  auto gradient = [&](float x, int i) {
    float g = expf(x - stats.max) * softmax_scale;
    if (i == label) g += -ce;
    if (i == stats.index) g += wrap;
    return g;
  };
  if (access.vectorised()) {
    constexpr int kWidth = RowAccess<T>::kWidth;
    for (int piece = threadIdx.x; piece < V / kWidth; piece += kThreads) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(access.row) + piece);
      const T* values = reinterpret_cast<const T*>(&raw);
      uint4 packed;
      T* g = reinterpret_cast<T*>(&packed);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) store(g, e, gradient(load(values, e), piece * kWidth + e));
      reinterpret_cast<uint4*>(out)[piece] = packed;
    }
  } else {
    for (int i = threadIdx.x; i < V; i += kThreads) store(out, i, gradient(load(access.row, i), i));
  }
}

template <class Run>
std::string typed(InputType type, const Run& run) {
  return type == InputType::kBFloat16 ? run(__nv_bfloat16{}) : run(float{});
}

}  // namespace

std::string softmax_nll_forward(Place place, InputType type, int64_t rows, int64_t V,
                                const void* logits, const int64_t* labels, int64_t ignore_index,
                                float* nll) {
  if (rows == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  return typed(type, [&](auto tag) {
    using T = decltype(tag);
    nll_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream_of(place)>>>(
        static_cast<int>(V), static_cast<const T*>(logits), labels, ignore_index, nll);
    return status("softmax_nll_forward");
  });
}

std::string softmax_nll_l2wrap_backward(Place place, InputType type, int64_t rows, int64_t V,
                                        const void* logits, const int64_t* labels,
                                        int64_t ignore_index, const float* ce_scale,
                                        const float* wrap_scale, void* grad) {
  if (rows == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  return typed(type, [&](auto tag) {
    using T = decltype(tag);
    gradient_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream_of(place)>>>(
        static_cast<int>(V), static_cast<const T*>(logits), labels, ignore_index, ce_scale,
        wrap_scale, static_cast<T*>(grad));
    return status("softmax_nll_l2wrap_backward");
  });
}

}  // namespace peftkit::kernels::cuda

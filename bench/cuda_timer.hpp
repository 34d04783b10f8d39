// cuda_timer.hpp: timing for the GPU benchmarks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace peftkit::bench {

// Milliseconds per call of f: the median of 5 timings (CUDA events) of `repeats` calls each, after
// `warmup` untimed calls.
inline double time_ms(const std::function<void()>& f, int repeats, int warmup) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> times;
  for (int t = 0; t < 5; ++t) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    for (int i = 0; i < repeats; ++i) f();
    stop.record();
    stop.synchronize();
    times.push_back(start.elapsed_time(stop) / repeats);
  }
  std::sort(times.begin(), times.end());
  return times[2];
}

// (B, T, H) triples from the command line, or `defaults` when none are given.
inline std::vector<std::vector<int64_t>> shapes_from_args(
    int argc, char** argv, std::vector<std::vector<int64_t>> defaults) {
  std::vector<std::vector<int64_t>> shapes;
  for (int i = 1; i + 2 < argc; i += 3)
    shapes.push_back({std::atoll(argv[i]), std::atoll(argv[i + 1]), std::atoll(argv[i + 2])});
  return shapes.empty() ? defaults : shapes;
}

// A WKV benchmark's frame (N = 64, bf16 inputs): for every (B, T, H) of the command line or
// `defaults`, `time_shape` returns the forward and the forward + backward milliseconds, printed as
// one table row. Returns main's exit status.
struct WkvTimes {
  double forward, forward_backward;
};
inline int run_wkv_bench(
    int argc, char** argv, std::vector<std::vector<int64_t>> defaults,
    const std::function<WkvTimes(int64_t B, int64_t T, int64_t H)>& time_shape) {
  if (!at::hasCUDA()) {
    std::printf("no CUDA device\n");
    return 1;
  }
  std::printf("| B, T, H (N = 64) | forward ms | forward + backward ms |\n|---|---|---|\n");
  for (const auto& shape : shapes_from_args(argc, argv, std::move(defaults))) {
    const WkvTimes t = time_shape(shape[0], shape[1], shape[2]);
    std::printf("| %lld, %lld, %lld | %.3f | %.3f |\n", static_cast<long long>(shape[0]),
                static_cast<long long>(shape[1]), static_cast<long long>(shape[2]), t.forward,
                t.forward_backward);
  }
  return 0;
}

// A [B, T, H, N] bf16 tensor on the GPU, uniform in [low, high].
inline at::Tensor bf16_uniform(int64_t B, int64_t T, int64_t H, int64_t N, double low,
                               double high) {
  return at::empty({B, T, H, N}, at::TensorOptions().device(at::kCUDA))
      .uniform_(low, high)
      .to(at::kBFloat16);
}

}  // namespace peftkit::bench

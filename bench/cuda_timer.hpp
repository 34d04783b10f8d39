// cuda_timer.hpp: timing for the GPU benchmarks.
#pragma once

#include <ATen/cuda/CUDAEvent.h>

#include <algorithm>
#include <cstdint>
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

}  // namespace peftkit::bench

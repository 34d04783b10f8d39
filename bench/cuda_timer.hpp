// cuda_timer.hpp: timing for the GPU benchmarks.
#pragma once

#include <ATen/cuda/CUDAEvent.h>

#include <algorithm>
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

}  // namespace peftkit::bench

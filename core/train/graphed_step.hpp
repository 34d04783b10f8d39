// graphed_step.hpp: one training micro-step (forward, loss, backward) replayed as a CUDA graph.
//
// At micro_bsz 1 a step of a small model is thousands of short kernels and the host cannot launch
// them as fast as the GPU runs them. Captured once per batch shape, the whole step is then one
// graph launch. The first step of a shape runs eagerly (it initialises cuBLAS and shows whether
// the step draws random numbers: dropout under a graph would repeat the same mask, so then graphs
// stay off); the second captures; later ones replay. Everything runs on one side stream, which
// the owner makes current for as long as it trains.
//
//   GraphedStep step(body, device, enabled);
//   at::Tensor loss = step.run(inputs, targets);   // CPU int64 [B, T]; loss on the device
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace at::cuda {
struct CUDAGraph;
}

namespace peftkit::train {

class GraphedStep {
 public:
  // Runs forward and backward on device tensors, returning the loss (0-dim, on the device).
  using Body = std::function<at::Tensor(const at::Tensor& inputs, const at::Tensor& targets)>;
  // At most this many batch shapes get a graph; others run eagerly.
  static constexpr size_t kMaxGraphs = 8;

  GraphedStep(Body body, at::Device device, bool enabled);
  ~GraphedStep();

  at::Tensor run(const at::Tensor& inputs, const at::Tensor& targets);
  // Micro-steps replayed so far.
  int64_t replays() const { return replays_; }
  // Whether later steps may still be captured (false after a failed capture, or without CUDA).
  bool enabled() const { return enabled_; }

 private:
  struct Captured;
  // Runs every later step eagerly; `expected` (the recipe asks for it) logs at info, else warn.
  void disable(const std::string& reason, bool expected);

  Body body_;
  at::Device device_;
  bool enabled_;
  std::set<std::vector<int64_t>> seen_;
  std::map<std::vector<int64_t>, std::unique_ptr<Captured>> graphs_;
  int64_t replays_ = 0;
};

}  // namespace peftkit::train

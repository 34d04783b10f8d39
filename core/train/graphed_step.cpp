#include "train/graphed_step.hpp"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include "peftkit/log.hpp"

namespace peftkit::train {

struct GraphedStep::Captured {
  at::Tensor inputs, targets, loss;  // the graph reads and writes these addresses
  at::cuda::CUDAGraph graph;
};

GraphedStep::GraphedStep(Body body, at::Device device, bool enabled)
    : body_(std::move(body)), device_(device), enabled_(enabled && device.is_cuda()) {}

GraphedStep::~GraphedStep() = default;

void GraphedStep::disable(const std::string& reason, bool expected) {
  enabled_ = false;
  graphs_.clear();
  const std::string text = "CUDA graphs off: " + reason + "; training steps run eagerly";
  // A recipe that draws random numbers is expected to run eagerly; a failed capture is not, and
  // costs speed the user should hear about.
  if (expected)
    log::info(text);
  else
    log::warn(text + " (set [train] cuda_graphs = false to run eagerly without this warning)");
}

// Eager steps get the host tensors as they are: the model and the loss move them, and the model
// checks the token ids on the host without waiting for the device.
at::Tensor GraphedStep::run(const at::Tensor& inputs, const at::Tensor& targets) {
  if (!enabled_) return body_(inputs, targets);
  const std::vector<int64_t> shape = inputs.sizes().vec();
  if (auto it = graphs_.find(shape); it != graphs_.end()) {
    Captured& c = *it->second;
    c.inputs.copy_(inputs, /*non_blocking=*/true);
    c.targets.copy_(targets, /*non_blocking=*/true);
    c.graph.replay();
    ++replays_;
    return c.loss;
  }
  if (!seen_.count(shape) || graphs_.size() >= kMaxGraphs) {
    // Dropout draws from the CUDA generator: its offset moves.
    at::Generator generator = at::globalContext().defaultGenerator(device_);
    const uint64_t offset = generator.get_offset();
    at::Tensor loss = body_(inputs, targets);
    if (generator.get_offset() != offset)
      disable("the step draws random numbers (dropout), which a graph would repeat", true);
    seen_.insert(shape);
    return loss;
  }
  auto c = std::make_unique<Captured>();
  c->inputs = inputs.to(device_);
  c->targets = targets.to(device_);
  // The eager step's cached blocks would sit beside the graph's own pool.
  c10::cuda::CUDACachingAllocator::emptyCache();
  try {
    // Graphs of different shapes share one pool: they never run at once, and only their losses
    // outlive a replay, read before the next one.
    c->graph.capture_begin(graphs_.empty() ? c10::MempoolId_t{0, 0}
                                           : graphs_.begin()->second->graph.pool());
    try {
      c->loss = body_(c->inputs, c->targets);
    } catch (...) {
      try {
        c->graph.capture_end();
      } catch (...) {
      }
      throw;
    }
    c->graph.capture_end();
  } catch (const std::exception& e) {
    // Nothing ran while capturing (the gradients are untouched): run this step eagerly.
    disable(std::string("capturing the training step failed (") + e.what() + ")", false);
    return body_(inputs, targets);
  }
  c->graph.replay();
  ++replays_;
  at::Tensor loss = c->loss;
  graphs_[shape] = std::move(c);
  return loss;
}

}  // namespace peftkit::train

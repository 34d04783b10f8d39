// state_file.hpp: initial WKV states in RWKV-PEFT's layout (blocks.{i}.att.time_state,
// [H, N, N], value-major), as RWKV Runner and RWKV-PEFT load them.
//
//   auto states = read_state_file("rwkv-3.pth", model.config());   // one [H, N, N] per layer
//   model.set_state_adapter(std::make_shared<FixedStates>(states));
#pragma once

#include <filesystem>
#include <vector>

#include "model/config.hpp"
#include "peftkit/model.hpp"

namespace peftkit::model {

// Reads and checks a state file against the model's geometry: every layer present, each state
// [H, N, N]; a file for another base is refused naming both shapes.
std::vector<at::Tensor> read_state_file(const std::filesystem::path& path,
                                        const ModelConfig& config);

// Fixed initial WKV states, e.g. a mounted state file.
class FixedStates final : public StateAdapter {
 public:
  explicit FixedStates(std::vector<at::Tensor> states) : states_(std::move(states)) {}
  at::Tensor initial_wkv_state(int layer) const override { return states_.at(layer); }

 private:
  std::vector<at::Tensor> states_;
};

}  // namespace peftkit::model

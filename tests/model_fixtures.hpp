// Small RWKV-7 models for tests: RWKV-LM's initializer, then every tensor perturbed (spec
// rwkv-model §8 B), since the init's zero matrices would hide bugs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "model/rwkv_model.hpp"

namespace peftkit::testing {

inline TensorMap perturbed_model(const model::ModelConfig& config, uint64_t seed) {
  TensorMap weights = model::init_model(config, seed);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  for (auto& [name, t] : weights)
    t = t + 0.1 * at::normal(0, 1, t.sizes(), generator) * (t.std().item<double>() + 0.02);
  return weights;
}

}  // namespace peftkit::testing

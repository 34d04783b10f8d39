// optimizer.hpp: Adam with bias correction and decoupled weight decay (spec rwkv-peft-reference
// §1.5), with per-tensor learning-rate scales and a state that checkpoints save and restore.
//
//   Adam adam(tensors, {0.9, 0.99, 1e-8, 0.0});
//   loss.backward();
//   double norm = adam.clip_grad_norm(1.0);
//   adam.step(lr);
//   adam.zero_grad();
#pragma once

#include <string>
#include <vector>

#include "peftkit/model.hpp"

namespace peftkit::train {

struct AdamSettings {
  double beta1 = 0.9;
  double beta2 = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled; only on tensors marked `decay`
};

struct OptimizedTensor {
  std::string name;
  at::Tensor param;  // fp32 leaf tensor with requires_grad
  double lr_scale = 1.0;
  bool decay = false;
};

class Adam {
 public:
  // `owned[i]`: whether this Adam updates tensor i and keeps its moments (ZeRO stage 1: each rank
  // of a data-parallel run owns a share and sends the others its updated tensors). Empty: all.
  Adam(std::vector<OptimizedTensor> tensors, const AdamSettings& settings,
       std::vector<bool> owned = {});

  // Global L2 norm of all gradients; scales them down to max_norm when larger (0: no clipping).
  double clip_grad_norm(double max_norm);
  // p <- p (1 - lr wd); m, v updated; p <- p - lr * m_hat / (sqrt(v_hat) + eps). Owned tensors
  // only.
  void step(double lr);
  bool owns(size_t i) const { return m_[i].defined(); }
  void zero_grad();
  int64_t steps() const { return steps_; }
  const std::vector<OptimizedTensor>& tensors() const { return tensors_; }

  // "adam.m.<name>", "adam.v.<name>" (of the owned tensors), "adam.steps"; load reads the owned
  // tensors' moments and checks that their names and shapes match.
  TensorMap state_dict() const;
  void load_state_dict(const TensorMap& state);

 private:
  std::vector<OptimizedTensor> tensors_;
  std::vector<at::Tensor> m_, v_;
  AdamSettings settings_;
  int64_t steps_ = 0;
};

}  // namespace peftkit::train

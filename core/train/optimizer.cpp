#include "train/optimizer.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <map>
#include <utility>

#include "peftkit/error.hpp"

namespace peftkit::train {

Adam::Adam(std::vector<OptimizedTensor> tensors, const AdamSettings& settings,
           std::vector<bool> owned)
    : tensors_(std::move(tensors)), settings_(settings) {
  if (!owned.empty() && owned.size() != tensors_.size())
    throw Error("Adam: ownership given for " + std::to_string(owned.size()) + " of " +
                std::to_string(tensors_.size()) + " tensors");
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const bool mine = owned.empty() || owned[i];
    m_.push_back(mine ? at::zeros_like(tensors_[i].param, at::MemoryFormat::Contiguous)
                      : at::Tensor());
    v_.push_back(mine ? at::zeros_like(tensors_[i].param, at::MemoryFormat::Contiguous)
                      : at::Tensor());
  }
}

namespace {

// The gradients that exist, with their tensors' indices.
std::pair<std::vector<at::Tensor>, std::vector<size_t>> defined_grads(
    const std::vector<OptimizedTensor>& tensors) {
  std::vector<at::Tensor> grads;
  std::vector<size_t> indices;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].param.grad().defined()) {
      grads.push_back(tensors[i].param.grad());
      indices.push_back(i);
    }
  return {grads, indices};
}

}  // namespace

// Multi-tensor (_foreach_) ops: a handful of kernel launches per step however many tensors are
// trained (LoRA trains hundreds), and a single device-to-host copy for the norm.
double Adam::clip_grad_norm(double max_norm) {
  at::NoGradGuard no_grad;
  const auto grads = defined_grads(tensors_).first;
  if (grads.empty()) return 0.0;
  const double norm =
      at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).square().sum().sqrt().item<double>();
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm))
    at::_foreach_mul_(grads, max_norm / (norm + 1e-6));
  return norm;
}

void Adam::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double bias1 = 1.0 - std::pow(settings_.beta1, static_cast<double>(steps_));
  const double bias2 = 1.0 - std::pow(settings_.beta2, static_cast<double>(steps_));
  const auto [grads, indices] = defined_grads(tensors_);
  // One group per (learning-rate scale, decay) pair; the tensors of a group share every scalar.
  std::map<std::pair<double, bool>, std::vector<size_t>> groups;
  for (size_t j = 0; j < indices.size(); ++j)
    if (owns(indices[j]))
      groups[{tensors_[indices[j]].lr_scale, tensors_[indices[j]].decay}].push_back(j);
  // The update needs one temporary the size of its tensors (the denominator): a group goes in
  // batches of at most kBatchElements elements (one larger tensor alone), so that temporary stays
  // small beside a LoRA's hundreds of MiB of parameters. Batching changes no arithmetic.
  constexpr int64_t kBatchElements = int64_t{8} << 20;
  struct Batch {
    std::pair<double, bool> key;
    std::vector<size_t> members;
  };
  std::vector<Batch> batches;
  for (const auto& [key, members] : groups) {
    int64_t elements = kBatchElements;
    for (size_t j : members) {
      const int64_t n = tensors_[indices[j]].param.numel();
      if (elements + n > kBatchElements) {
        batches.push_back({key, {}});
        elements = 0;
      }
      batches.back().members.push_back(j);
      elements += n;
    }
  }
  for (const auto& [key, members] : batches) {
    std::vector<at::Tensor> params, g, m, v;
    for (size_t j : members) {
      params.push_back(tensors_[indices[j]].param);
      g.push_back(grads[j]);
      m.push_back(m_[indices[j]]);
      v.push_back(v_[indices[j]]);
    }
    const double rate = lr * key.first;
    if (key.second && settings_.weight_decay > 0)
      at::_foreach_mul_(params, 1.0 - rate * settings_.weight_decay);
    at::_foreach_mul_(m, settings_.beta1);
    at::_foreach_add_(m, g, 1.0 - settings_.beta1);
    at::_foreach_mul_(v, settings_.beta2);
    at::_foreach_addcmul_(v, g, g, 1.0 - settings_.beta2);
    std::vector<at::Tensor> denominator = at::_foreach_div(v, bias2);
    at::_foreach_sqrt_(denominator);
    at::_foreach_add_(denominator, settings_.eps);
    at::_foreach_addcdiv_(params, m, denominator, -rate / bias1);
  }
}

void Adam::zero_grad() {
  for (auto& t : tensors_)
    if (t.param.grad().defined()) t.param.mutable_grad().zero_();
}

TensorMap Adam::state_dict() const {
  TensorMap state;
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (owns(i)) {
      state["adam.m." + tensors_[i].name] = m_[i];
      state["adam.v." + tensors_[i].name] = v_[i];
    }
  state["adam.steps"] = at::scalar_tensor(steps_, at::kLong);
  return state;
}

void Adam::load_state_dict(const TensorMap& state) {
  auto get = [&](const std::string& name, const at::Tensor& like) {
    auto it = state.find(name);
    if (it == state.end()) throw Error("checkpoint: optimizer state '" + name + "' is missing");
    if (it->second.sizes() != like.sizes())
      throw Error("checkpoint: optimizer state '" + name + "' has shape " +
                  c10::str(it->second.sizes()) + ", the tensor being trained has " +
                  c10::str(like.sizes()));
    return it->second.to(like.device(), like.scalar_type());
  };
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (owns(i)) {
      m_[i].copy_(get("adam.m." + tensors_[i].name, m_[i]));
      v_[i].copy_(get("adam.v." + tensors_[i].name, v_[i]));
    }
  auto it = state.find("adam.steps");
  if (it == state.end()) throw Error("checkpoint: optimizer step count 'adam.steps' is missing");
  steps_ = it->second.item<int64_t>();
}

}  // namespace peftkit::train

#include "train/optimizer.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "peftkit/error.hpp"

namespace peftkit {

Adam::Adam(std::vector<OptimizedTensor> tensors, const AdamSettings& settings)
    : tensors_(std::move(tensors)), settings_(settings) {
  for (const auto& t : tensors_) {
    m_.push_back(at::zeros_like(t.param, at::MemoryFormat::Contiguous));
    v_.push_back(at::zeros_like(t.param, at::MemoryFormat::Contiguous));
  }
}

double Adam::clip_grad_norm(double max_norm) {
  at::NoGradGuard no_grad;
  double sum = 0;
  for (const auto& t : tensors_)
    if (t.param.grad().defined()) sum += t.param.grad().to(at::kDouble).square().sum().item<double>();
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm))
    for (const auto& t : tensors_)
      if (t.param.grad().defined()) t.param.mutable_grad().mul_(max_norm / (norm + 1e-6));
  return norm;
}

void Adam::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double bias1 = 1.0 - std::pow(settings_.beta1, static_cast<double>(steps_));
  const double bias2 = 1.0 - std::pow(settings_.beta2, static_cast<double>(steps_));
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const OptimizedTensor& t = tensors_[i];
    const at::Tensor& g = t.param.grad();
    if (!g.defined()) continue;
    const double rate = lr * t.lr_scale;
    if (t.decay && settings_.weight_decay > 0) t.param.mul_(1.0 - rate * settings_.weight_decay);
    m_[i].mul_(settings_.beta1).add_(g, 1.0 - settings_.beta1);
    v_[i].mul_(settings_.beta2).addcmul_(g, g, 1.0 - settings_.beta2);
    const at::Tensor denominator = (v_[i] / bias2).sqrt_().add_(settings_.eps);
    t.param.addcdiv_(m_[i], denominator, -rate / bias1);
  }
}

void Adam::zero_grad() {
  for (auto& t : tensors_)
    if (t.param.grad().defined()) t.param.mutable_grad().zero_();
}

TensorMap Adam::state_dict() const {
  TensorMap state;
  for (size_t i = 0; i < tensors_.size(); ++i) {
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
      throw Error("checkpoint: optimizer state '" + name + "' has shape " + c10::str(it->second.sizes()) +
                  ", the tensor being trained has " + c10::str(like.sizes()));
    return it->second.to(like.device(), like.scalar_type());
  };
  for (size_t i = 0; i < tensors_.size(); ++i) {
    m_[i].copy_(get("adam.m." + tensors_[i].name, m_[i]));
    v_[i].copy_(get("adam.v." + tensors_[i].name, v_[i]));
  }
  auto it = state.find("adam.steps");
  if (it == state.end()) throw Error("checkpoint: optimizer step count 'adam.steps' is missing");
  steps_ = it->second.item<int64_t>();
}

}  // namespace peftkit

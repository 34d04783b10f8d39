// model.hpp: what PEFT-method and quantizer plugins see of a model.
//
// The model exposes sites by their RWKV checkpoint names and nothing of its internals:
//   linear sites  "blocks.{i}.att.receptance|key|value|output", "blocks.{i}.ffn.key|value", and on
//                 RWKV-6 (x060) also "blocks.{i}.att.gate" and "blocks.{i}.ffn.receptance"
//                 (frozen y = x W^T, W [out, in], dense or quantized),
//   state sites   "blocks.{i}.att": the layer's initial WKV state [H, N, N] (value-major, as in
//                 RWKV-PEFT's blocks.{i}.att.time_state) and its two token-shift states [C].
// A method installs a LinearAdapter per linear site it adapts and/or one StateAdapter:
//
//   void MyLora::attach(peftkit::ModelView& model) {
//     for (const auto& site : model.linear_sites())
//       if (matches(site.name))
//         model.set_linear_adapter(site.name, std::make_shared<LoraAdapter>(site, r_, scale_));
//   }
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace peftkit {

// Named tensors in a fixed order: adapter files, model weights, packed quantized weights.
using TensorMap = std::map<std::string, at::Tensor>;

// A frozen linear layer y = x W^T without bias: the model's dense weight or a quantized one.
class FrozenLinear {
 public:
  virtual ~FrozenLinear();
  // x [..., in] -> [..., out]; differentiable with respect to x only.
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  // W [out, in] as a dense tensor (dequantized when quantized), without gradient. Methods that
  // need the weight itself (MiSS "bat", DoRA's norms, PiSSA's SVD) call this.
  virtual at::Tensor dense_weight() const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
};

// How an adapted linear site computes, installed by a PEFT method.
class LinearAdapter {
 public:
  virtual ~LinearAdapter();
  // The adapted layer's output for input x, e.g. base.forward(x) + s * B(A(x)) for LoRA.
  virtual at::Tensor forward(const at::Tensor& x, const FrozenLinear& base) = 0;
};

// Initial recurrent states that a method supplies (state tuning). An undefined tensor means the
// model's default, zero.
class StateAdapter {
 public:
  virtual ~StateAdapter();
  // [H, N, N] value-major (row = value index, column = key index), shared by every sequence.
  virtual at::Tensor initial_wkv_state(int layer) const = 0;
  // [C] token-shift states of time-mix and channel-mix.
  virtual at::Tensor initial_att_shift(int layer) const;
  virtual at::Tensor initial_ffn_shift(int layer) const;
};

struct LinearSite {
  std::string name;  // "blocks.3.att.key"
  int layer = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
};

struct StateSite {
  std::string name;  // "blocks.3.att"; state files name its WKV state "<name>.time_state"
  int layer = 0;
  int64_t heads = 0;      // H
  int64_t head_size = 0;  // N: the WKV state is [H, N, N]
  int64_t n_embd = 0;     // C: token-shift states are [C]
};

class ModelView {
 public:
  virtual ~ModelView();
  virtual std::string architecture() const = 0;  // "rwkv7" (x070) or "rwkv6" (x060)
  virtual std::vector<LinearSite> linear_sites() const = 0;
  virtual std::vector<StateSite> state_sites() const = 0;
  virtual const FrozenLinear& linear(std::string_view site) const = 0;
  // Replaces a site's frozen weight (PiSSA's residual); quantized again if the run quantizes.
  virtual void set_base_weight(std::string_view site, const at::Tensor& weight) = 0;
  virtual void set_linear_adapter(std::string_view site,
                                  std::shared_ptr<LinearAdapter> adapter) = 0;
  virtual void set_state_adapter(std::shared_ptr<StateAdapter> adapter) = 0;
  // Device and dtype of activations; trainable tensors live on this device in fp32.
  virtual c10::TensorOptions activation_options() const = 0;
  // True while the trainer runs training steps (dropout is active), false for evaluation and
  // generation.
  virtual bool training() const = 0;
  // SDK 2.1: the site's weight [out, in] as the checkpoint holds it, before any quantization or
  // set_base_weight (PiSSA decomposes it, and its residual is what gets quantized).
  virtual at::Tensor checkpoint_weight(std::string_view site) const = 0;
};

}  // namespace peftkit

// rwkv_model.hpp: the RWKV language models in LibTorch, RWKV-7 (x070, spec rwkv-model §1) and
// RWKV-6 (x060, §4), line by line after the official RWKV-LM/ChatRWKV code. One class serves both:
// the trainer, the CLI and every plugin see the same interface (sites, state shapes, forward,
// RNN step); only the time-mix and channel-mix of a block differ (rwkv7_blocks.cpp,
// rwkv6_blocks.cpp), chosen by the checkpoint's keys.
//
// One forward serves both modes: a sequence of T tokens in parallel ("GPT mode") and one token at
// a time with the recurrent state carried ("RNN mode") are the same computation, because the
// forward takes the state before the first token and returns the state after the last.
//
//   auto model = RwkvModel::load("rwkv7-0.1b.pth", {at::kFloat, at::kCPU});  // or an x060 file
//   ModelState state = model->initial_state(1);
//   at::Tensor logits = model->forward(tokens, &state);   // tokens [B, T] int64 -> [B, T, V]
//
// PEFT and quantizer plugins act only through the ModelView sites; this class knows no method.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "peftkit/model.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/quantizer.hpp"

namespace peftkit::kernels {
struct Wkv7Memo;
}

namespace peftkit::model {

struct ModelOptions {
  ModelOptions(at::ScalarType dtype_ = at::kFloat, at::Device device_ = at::kCPU)
      : dtype(dtype_), device(device_) {}
  at::ScalarType dtype;  // weights and activations; the WKV state is always fp32
  at::Device device;
  // Quantizes the frozen weights of the linear sites whose names end with one of quantize_targets
  // (and the head when quantize_head), one tensor at a time as they are loaded; null: dense.
  std::shared_ptr<const Quantizer> quantizer;
  std::vector<std::string> quantize_targets;
  bool quantize_head = false;
  // Packed weights saved earlier (quantized_weights()), used instead of quantizing again.
  const TensorMap* prequantized = nullptr;
  // Tensor-op references instead of the kernels: the per-time-step WKV7 and the unfused block
  // pieces (for debugging the kernels).
  bool reference_kernels = false;
  // On a CUDA device: keep emb.weight in pinned host memory that the device's kernels read in
  // place (unified addressing), instead of a copy in device memory. A step reads only its B x T
  // rows, so this saves V x C weights of device memory for the cost of those rows crossing the bus.
  // A trainable embedding still gets its fp32 master on the device.
  bool embedding_on_host = false;
};

// The recurrent state of B sequences, per layer (the same shapes in x060 and x070).
struct ModelState {
  std::vector<at::Tensor> att_shift;  // [B, C], the last time-mix input (post-LN)
  std::vector<at::Tensor> wkv;        // [B, H, N, N] fp32, value-major
  std::vector<at::Tensor> ffn_shift;  // [B, C], the last channel-mix input (post-LN)
};

class RwkvModel final : public ModelView {
 public:
  // weights: checkpoint names -> tensors; `where` names their source in error messages.
  RwkvModel(const TensorMap& weights, const ModelOptions& options, const std::string& where);
  static std::unique_ptr<RwkvModel> load(const std::filesystem::path& path,
                                         const ModelOptions& options);

  const ModelConfig& config() const { return config_; }
  Architecture arch() const { return config_.arch; }
  const ModelOptions& options() const { return options_; }

  // The state before any token: a StateAdapter's initial states when one is installed, else zeros.
  ModelState initial_state(int64_t batch) const;
  // Logits [B, T, V] for tokens [B, T]. `state` holds the state before the first token and is
  // replaced by the state after the last; null starts from initial_state() and drops the result.
  at::Tensor forward(const at::Tensor& tokens, ModelState* state = nullptr);
  // The same without the head: ln_out's output [B, T, C], for a loss fused with the head.
  at::Tensor forward_hidden(const at::Tensor& tokens, ModelState* state = nullptr);
  // The output head: logits [..., V] of forward_hidden's output [..., C].
  at::Tensor head(const at::Tensor& hidden) const;
  // The head weight [V, C] with autograd when it is trained; undefined when the head is quantized.
  at::Tensor trainable_head_weight() const { return head_ ? at::Tensor() : weight("head.weight"); }

  // The base weights under their checkpoint names (adapters not applied; trained tensors as their
  // fp32 masters).
  TensorMap weights() const;

  // The packed quantized weights, "<site>.weight.<part>" (and "head.weight.<part>"), for a
  // pre-quantized base file; empty when nothing is quantized.
  TensorMap quantized_weights() const;
  // Bytes of the frozen linear weights (packed when quantized).
  int64_t linear_weight_bytes() const;
  // The weight [out, in] that the site computes with, adapter included (x W_effᵀ), found by passing
  // the identity through it; for merging into what a quantized base really trained with.
  at::Tensor effective_weight(std::string_view site);
  // The output head's weight as the forward uses it (dequantized when quantized).
  at::Tensor head_weight() const;

  // Makes the selected base tensors trainable: each gets an fp32 master copy (a leaf with
  // requires_grad) that the forward casts to the model dtype. Returns them for the optimizer.
  std::vector<TrainableTensor> make_trainable(
      const std::function<bool(const std::string&)>& select);

  // Recompute each block in the backward instead of storing its activations (grad_cp). With
  // keep_wkv (x070, the WKV kernel) the recomputation takes the WKV7 forward kept from the first
  // pass (kernels::Wkv7Memo) instead of running it again: faster, and about 20 bytes per element
  // of a layer's [B, T, C] activations more memory on CUDA. Throws where keep_wkv cannot apply.
  void set_gradient_checkpointing(bool enabled, bool keep_wkv = false);

  // ModelView
  std::string architecture() const override {
    return config_.arch == Architecture::kX060 ? "rwkv6" : "rwkv7";
  }
  std::vector<LinearSite> linear_sites() const override;
  std::vector<StateSite> state_sites() const override;
  const FrozenLinear& linear(std::string_view site) const override;
  at::Tensor checkpoint_weight(std::string_view site) const override;
  void set_base_weight(std::string_view site, const at::Tensor& weight) override;
  void set_linear_adapter(std::string_view site, std::shared_ptr<LinearAdapter> adapter) override;
  void set_state_adapter(std::shared_ptr<StateAdapter> adapter) override;
  c10::TensorOptions activation_options() const override;
  bool training() const override { return training_; }
  void set_training(bool training) { training_ = training; }

 private:
  struct Site;
  // One block: x in, the layer's state updated in place. `v_first` carries x070's value residual
  // from layer 0 to the others (x060 leaves it alone).
  at::Tensor block(int64_t layer, const at::Tensor& x, at::Tensor& v_first, ModelState& state);
  at::Tensor checkpointed_block(int64_t layer, const at::Tensor& x, at::Tensor& v_first,
                                ModelState& state);
  // Per architecture: rwkv7_blocks.cpp and rwkv6_blocks.cpp.
  at::Tensor time_mix_x070(int64_t layer, const at::Tensor& x, at::Tensor& v_first,
                           ModelState& state);
  at::Tensor channel_mix_x070(int64_t layer, const at::Tensor& x, ModelState& state);
  at::Tensor time_mix_x060(int64_t layer, const at::Tensor& x, ModelState& state);
  at::Tensor channel_mix_x060(int64_t layer, const at::Tensor& x, ModelState& state);
  // The block's linear site number `slot` (config().block_linear_names() order), adapter included.
  at::Tensor apply_linear(int64_t layer, size_t slot, const at::Tensor& x);
  at::Tensor weight(const std::string& name) const;
  size_t site_index(std::string_view name) const;
  static std::string block_prefix(int64_t layer) { return "blocks." + std::to_string(layer) + "."; }

  ModelConfig config_;
  ModelOptions options_;
  TensorMap weights_;
  at::Tensor host_embedding_;  // the pinned CPU tensor behind weights_["emb.weight"], when there
  TensorMap merged_states_;
  TensorMap checkpoint_weights_;  // the linear sites' weights as given, for checkpoint_weight()
  std::unique_ptr<FrozenLinear> head_;  // set when the head is quantized
  // A device tensor over a pinned host copy of `tensor` (ModelOptions::embedding_on_host).
  at::Tensor device_view_of_host_copy(const at::Tensor& tensor);
  std::unique_ptr<FrozenLinear> make_base(
      const std::string& name, const at::Tensor& weight,
      bool quantize) const;  // initial states stored in the model file (merge --state), fp32
  std::vector<std::shared_ptr<Site>> sites_;  // L * slots, in linear_sites() order
  size_t slots_ = 0;                          // linear sites per block
  std::shared_ptr<StateAdapter> state_adapter_;
  TensorMap masters_;  // fp32 masters of trainable base tensors
  bool gradient_checkpointing_ = false;
  bool keep_wkv_in_checkpoints_ = false;
  // The memo of the checkpointed block running now (keep_wkv), else null.
  kernels::Wkv7Memo* wkv_memo_ = nullptr;
  bool training_ = false;
};

// A new model initialised exactly as RWKV-LM does (x070: train_temp, spec rwkv-model §1.7; x060:
// RWKV-v5/src/model.py, §4), in fp32.
TensorMap init_model(const ModelConfig& config, uint64_t seed);

}  // namespace peftkit::model

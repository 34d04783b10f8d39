#include "model/rwkv_model.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "cuda_place_of.hpp"
#include "peftkit/error.hpp"
#include "peftkit/sites.hpp"
#include "peftkit/tensor_io.hpp"
#include "wkv7/wkv7.hpp"

namespace peftkit::model {
namespace {

constexpr double kLayerNormEps = 1e-5;  // spec §1.5, both architectures

// A dense weight; a trained one is an fp32 master that is cast to the compute dtype per use.
class DenseLinear final : public FrozenLinear {
 public:
  DenseLinear(at::Tensor weight, at::ScalarType compute)
      : weight_(std::move(weight)), compute_(compute) {}
  at::Tensor forward(const at::Tensor& x) const override {
    return at::linear(x, weight_.to(compute_));
  }
  at::Tensor dense_weight() const override { return weight_.detach().to(compute_); }
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }

 private:
  at::Tensor weight_;
  at::ScalarType compute_;
};

}  // namespace

struct RwkvModel::Site {
  std::string name;
  std::unique_ptr<FrozenLinear> base;
  std::shared_ptr<LinearAdapter> adapter;
};

RwkvModel::RwkvModel(const TensorMap& weights, const ModelOptions& options,
                     const std::string& where)
    : config_(ModelConfig::from_tensors(weights, where)), options_(options) {
  if (!at::isFloatingType(options.dtype))
    throw Error("model dtype must be a floating-point type, not " +
                std::string(c10::toString(options.dtype)));
  require_finite(weights, where);
  auto quantized = [&](const std::string& name) {
    if (!options.quantizer) return false;
    if (name == "head.weight") return options.quantize_head;
    const std::string_view site = std::string_view(name).substr(0, name.size() - 7);
    return name.ends_with(".weight") && site_matches_any(site, options.quantize_targets);
  };
  std::vector<std::string> site_names;
  slots_ = config_.block_linear_names().size();
  for (int64_t l = 0; l < config_.n_layer; ++l)
    for (const std::string& slot : config_.block_linear_names())
      site_names.push_back(block_prefix(l) + slot);
  // Quantized weights are never kept dense: each is moved to the device and packed on its own.
  for (const auto& [name, tensor] : weights) {
    if (merged_state_shape(config_, name))
      merged_states_[name] = tensor.to(options.device, at::kFloat);
    else if (name == "emb.weight" && options.embedding_on_host && options.device.is_cuda())
      weights_[name] = device_view_of_host_copy(tensor);
    else if (!quantized(name))
      weights_[name] = tensor.to(options.device, options.dtype);
  }
  for (const auto& name : site_names) {
    const at::Tensor& w = weights.at(name + ".weight");
    checkpoint_weights_[name] = w;
    auto site = std::make_shared<Site>();
    site->name = name;
    site->base =
        make_base(name + ".weight", quantized(name + ".weight") ? w : weights_.at(name + ".weight"),
                  quantized(name + ".weight"));
    sites_.push_back(std::move(site));
  }
  if (quantized("head.weight")) head_ = make_base("head.weight", weights.at("head.weight"), true);
  options_.prequantized = nullptr;  // the caller's map was only needed here
}

at::Tensor RwkvModel::device_view_of_host_copy(const at::Tensor& tensor) {
  const c10::cuda::CUDAGuard on_the_device(options_.device);  // pinned in the device's context
  host_embedding_ =
      at::empty(tensor.sizes(), at::TensorOptions().dtype(options_.dtype).pinned_memory(true));
  host_embedding_.copy_(tensor);
  // Pinned memory from the CUDA allocator has one address for host and device (unified virtual
  // addressing), so a device tensor may point at it; the context keeps the host tensor alive.
  return at::for_blob(host_embedding_.data_ptr(), host_embedding_.sizes())
      .context(new at::Tensor(host_embedding_),
               [](void* kept) { delete static_cast<at::Tensor*>(kept); })
      .target_device(options_.device)
      .options(at::TensorOptions().dtype(options_.dtype).device(options_.device))
      .make_tensor();
}

std::unique_ptr<FrozenLinear> RwkvModel::make_base(const std::string& name,
                                                   const at::Tensor& weight, bool quantize) const {
  if (!quantize) return std::make_unique<DenseLinear>(weight, options_.dtype);
  if (options_.prequantized) {
    TensorMap packed;
    const std::string prefix = name + ".";
    for (auto it = options_.prequantized->lower_bound(prefix);
         it != options_.prequantized->end() && it->first.compare(0, prefix.size(), prefix) == 0;
         ++it)
      packed[it->first.substr(prefix.size())] = it->second.to(options_.device);
    if (!packed.empty()) {
      auto loaded = options_.quantizer->load(packed);
      if (loaded->out_features() != weight.size(0) || loaded->in_features() != weight.size(1))
        throw Error("the pre-quantized " + name + " is [" + std::to_string(loaded->out_features()) +
                    ", " + std::to_string(loaded->in_features()) + "] but the model's weight is " +
                    c10::str(weight.sizes()) + " (a cache of another model)");
      return loaded;
    }
  }
  return options_.quantizer->quantize(weight.to(options_.device));
}

TensorMap RwkvModel::quantized_weights() const {
  TensorMap out;
  auto add = [&](const std::string& name, const FrozenLinear& base) {
    if (const auto* q = dynamic_cast<const QuantizedLinear*>(&base))
      for (const auto& [part, tensor] : q->packed()) out[name + "." + part] = tensor;
  };
  for (const auto& site : sites_) add(site->name + ".weight", *site->base);
  if (head_) add("head.weight", *head_);
  return out;
}

int64_t RwkvModel::linear_weight_bytes() const {
  int64_t bytes = 0;
  for (const auto& site : sites_) {
    if (const auto* q = dynamic_cast<const QuantizedLinear*>(site->base.get()))
      bytes += q->nbytes();
    else
      bytes +=
          site->base->in_features() * site->base->out_features() * c10::elementSize(options_.dtype);
  }
  return bytes;
}

at::Tensor RwkvModel::effective_weight(std::string_view name) {
  const size_t index = site_index(name);
  const Site& site = *sites_[index];
  const at::Tensor identity = at::eye(site.base->in_features(), activation_options());
  return apply_linear(static_cast<int64_t>(index / slots_), index % slots_, identity).t();
}

at::Tensor RwkvModel::head_weight() const {
  return head_ ? head_->dense_weight() : weight("head.weight");
}

at::Tensor RwkvModel::checkpoint_weight(std::string_view site) const {
  auto it = checkpoint_weights_.find(std::string(site));
  if (it == checkpoint_weights_.end())
    throw Error("checkpoint_weight: no linear site '" + std::string(site) + "'");
  return it->second;
}

std::unique_ptr<RwkvModel> RwkvModel::load(const std::filesystem::path& path,
                                           const ModelOptions& options) {
  return std::make_unique<RwkvModel>(read_tensor_file(path).tensors, options, path.string());
}

at::Tensor RwkvModel::weight(const std::string& name) const {
  if (auto it = masters_.find(name); it != masters_.end()) return it->second.to(options_.dtype);
  return weights_.at(name);
}

TensorMap RwkvModel::weights() const {
  TensorMap out = weights_;
  if (host_embedding_.defined()) out["emb.weight"] = host_embedding_;  // copies need no device
  for (const auto& [name, master] : masters_) out[name] = master;
  return out;
}

std::vector<TrainableTensor> RwkvModel::make_trainable(
    const std::function<bool(const std::string&)>& select) {
  std::vector<TrainableTensor> trainable;
  for (const auto& [name, tensor] : weights_) {
    if (!select(name) || masters_.count(name)) continue;
    at::Tensor master = tensor.detach().to(at::kFloat).clone().requires_grad_(true);
    masters_[name] = master;
    for (auto& site : sites_)
      if (site->name + ".weight" == name)
        site->base = std::make_unique<DenseLinear>(master, options_.dtype);
    // RWKV-PEFT's decay group: tensors with at least two non-trivial dimensions.
    trainable.push_back({name, master, 1.0, tensor.squeeze().dim() >= 2});
  }
  return trainable;
}

c10::TensorOptions RwkvModel::activation_options() const {
  return c10::TensorOptions().dtype(options_.dtype).device(options_.device);
}

ModelState RwkvModel::initial_state(int64_t batch) const {
  const int64_t C = config_.n_embd, H = config_.n_head, N = config_.head_size;
  ModelState state;
  auto activations = activation_options();
  auto fp32 = activations.dtype(at::kFloat);
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    at::Tensor wkv, att, ffn;
    if (state_adapter_) {
      wkv = state_adapter_->initial_wkv_state(static_cast<int>(l));
      att = state_adapter_->initial_att_shift(static_cast<int>(l));
      ffn = state_adapter_->initial_ffn_shift(static_cast<int>(l));
    }
    // States merged into the model file are the defaults.
    auto merged = [&](const char* suffix) {
      auto it = merged_states_.find(block_prefix(l) + suffix);
      return it == merged_states_.end() ? at::Tensor() : it->second;
    };
    if (!wkv.defined()) wkv = merged("att.time_state");
    if (!att.defined()) att = merged("att.time_shift");
    if (!ffn.defined()) ffn = merged("ffn.time_shift");
    // A shared [H, N, N] state is broadcast to the batch; autograd sums its gradient over it.
    state.wkv.push_back(wkv.defined() ? wkv.to(fp32).unsqueeze(0).expand({batch, H, N, N})
                                      : at::zeros({batch, H, N, N}, fp32));
    state.att_shift.push_back(att.defined() ? att.to(activations).unsqueeze(0).expand({batch, C})
                                            : at::zeros({batch, C}, activations));
    state.ffn_shift.push_back(ffn.defined() ? ffn.to(activations).unsqueeze(0).expand({batch, C})
                                            : at::zeros({batch, C}, activations));
  }
  return state;
}

at::Tensor RwkvModel::apply_linear(int64_t layer, size_t slot, const at::Tensor& x) {
  const Site& site = *sites_[layer * slots_ + slot];
  return site.adapter ? site.adapter->forward(x, *site.base) : site.base->forward(x);
}

at::Tensor RwkvModel::forward(const at::Tensor& tokens, ModelState* state) {
  return head(forward_hidden(tokens, state));
}

at::Tensor RwkvModel::head(const at::Tensor& hidden) const {
  return head_ ? head_->forward(hidden) : at::linear(hidden, weight("head.weight"));
}

at::Tensor RwkvModel::forward_hidden(const at::Tensor& tokens, ModelState* state) {
  if (tokens.dim() != 2 || tokens.scalar_type() != at::kLong)
    throw Error("model input must be int64 tokens [B, T], got " +
                std::string(c10::toString(tokens.scalar_type())) + " with " +
                std::to_string(tokens.dim()) + " dimensions");
  // Checked on the host; device tokens cost a wait for the device, and a graph capture cannot wait.
  if (tokens.numel() > 0 && !kernels::cuda::capturing_graph(tokens) &&
      (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= config_.vocab))
    throw Error("token ids must be in [0, " + std::to_string(config_.vocab) + ")");
  ModelState local;
  if (!state) {
    local = initial_state(tokens.size(0));
    state = &local;
  }
  auto ln = [&](const at::Tensor& x, const std::string& name) {
    return at::layer_norm(x, {config_.n_embd}, weight(name + ".weight"), weight(name + ".bias"),
                          kLayerNormEps);
  };
  at::Tensor x = at::embedding(weight("emb.weight"), tokens.to(options_.device));
  x = ln(x, "blocks.0.ln0");
  at::Tensor v_first;
  const bool checkpoint = gradient_checkpointing_ && at::GradMode::is_enabled();
  for (int64_t l = 0; l < config_.n_layer; ++l)
    x = checkpoint ? checkpointed_block(l, x, v_first, *state) : block(l, x, v_first, *state);
  return ln(x, "ln_out");
}

at::Tensor RwkvModel::block(int64_t l, const at::Tensor& x_in, at::Tensor& v_first,
                            ModelState& state) {
  auto ln = [&](const at::Tensor& x, const std::string& name) {
    return at::layer_norm(x, {config_.n_embd}, weight(name + ".weight"), weight(name + ".bias"),
                          kLayerNormEps);
  };
  const bool x060 = config_.arch == Architecture::kX060;
  const at::Tensor x1 = ln(x_in, block_prefix(l) + "ln1");
  const at::Tensor x =
      x_in + (x060 ? time_mix_x060(l, x1, state) : time_mix_x070(l, x1, v_first, state));
  const at::Tensor x2 = ln(x, block_prefix(l) + "ln2");
  return x + (x060 ? channel_mix_x060(l, x2, state) : channel_mix_x070(l, x2, state));
}

namespace {

// Runs one block without keeping its activations, and again with autograd in the backward
// (reentrant checkpointing: the recomputation's backward also fills the parameters' gradients).
// Inputs: x, v_first (empty for layer 0), att_shift, wkv, ffn_shift; outputs: the same, updated.
using BlockFn =
    std::function<torch::autograd::variable_list(const torch::autograd::variable_list&)>;

struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(BlockFn f) : fn(std::move(f)) {}
  BlockFn fn;
};

at::Generator default_generator(const at::Device& device) {
  return device.is_cuda() ? at::globalContext().defaultGenerator(device)
                          : at::detail::getDefaultCPUGenerator();
}
at::Tensor rng_state(const at::Device& device) { return default_generator(device).get_state(); }
void set_rng_state(const at::Device& device, const at::Tensor& state) {
  at::Generator generator = default_generator(device);
  generator.set_state(state);
}

FnHolder* holder(torch::autograd::AutogradContext* ctx) {
  return static_cast<FnHolder*>(ctx->saved_data["fn"].toCapsule().get());
}

class BlockCheckpoint : public torch::autograd::Function<BlockCheckpoint> {
 public:
  // `anchor` requires grad so that the outputs are part of the graph even when no other input is
  // (a frozen base under PEFT), the trap of reentrant checkpointing with frozen weights.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, BlockFn fn,
                                                at::Tensor anchor, at::Tensor x, at::Tensor v_first,
                                                at::Tensor att, at::Tensor wkv, at::Tensor ffn) {
    (void)anchor;
    ctx->save_for_backward({x, v_first, att, wkv, ffn});
    ctx->saved_data["fn"] = c10::IValue::make_capsule(c10::make_intrusive<FnHolder>(std::move(fn)));
    // The recomputation must draw the same random numbers (LoRA dropout) as this forward. A CUDA
    // graph capture cannot read the RNG state; the trainer captures only steps that draw none.
    if (!kernels::cuda::capturing_graph(x)) ctx->saved_data["rng"] = rng_state(x.device());
    at::NoGradGuard no_grad;
    return holder(ctx)->fn({x, v_first, att, wkv, ffn});
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto inputs = ctx->get_saved_variables();
    torch::autograd::variable_list leaves;
    for (const auto& input : inputs)
      leaves.push_back(input.numel()
                           ? input.detach().requires_grad_(input.requires_grad() ||
                                                           at::isFloatingType(input.scalar_type()))
                           : input);
    torch::autograd::variable_list outputs;
    {
      at::AutoGradMode enable(true);
      const bool replay_rng = ctx->saved_data.count("rng") > 0;
      const at::Tensor now = replay_rng ? rng_state(inputs[0].device()) : at::Tensor();
      if (replay_rng) set_rng_state(inputs[0].device(), ctx->saved_data["rng"].toTensor());
      outputs = holder(ctx)->fn(leaves);
      if (replay_rng) set_rng_state(inputs[0].device(), now);
    }
    torch::autograd::variable_list roots, root_grads;
    for (size_t i = 0; i < outputs.size(); ++i)
      if (grads[i].defined() && outputs[i].defined() && outputs[i].requires_grad()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grads[i]);
      }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    torch::autograd::variable_list result = {at::Tensor(), at::Tensor()};  // none for fn and anchor
    for (const auto& leaf : leaves)
      result.push_back(leaf.numel() && leaf.grad().defined() ? leaf.grad() : at::Tensor());
    return result;
  }
};

}  // namespace

void RwkvModel::set_gradient_checkpointing(bool enabled, bool keep_wkv) {
  if (keep_wkv && !enabled)
    throw Error(
        "[train] grad_cp_keep_wkv = true needs grad_cp = true (it keeps the WKV forward "
        "of a recomputed block)");
  if (keep_wkv && config_.arch != Architecture::kX070)
    throw Error(
        "[train] grad_cp_keep_wkv = true applies to x070 (RWKV-7) models; this one is x060");
  if (keep_wkv && options_.reference_kernels)
    throw Error(
        "[train] grad_cp_keep_wkv = true keeps the WKV kernel's forward; kernel = "
        "\"reference\" has none to keep");
  gradient_checkpointing_ = enabled;
  keep_wkv_in_checkpoints_ = keep_wkv;
}

at::Tensor RwkvModel::checkpointed_block(int64_t l, const at::Tensor& x, at::Tensor& v_first,
                                         ModelState& state) {
  // Filled by the first pass (no gradients), taken by the recomputation; freed with the graph.
  auto memo = keep_wkv_in_checkpoints_ ? std::make_shared<kernels::Wkv7Memo>() : nullptr;
  auto fn = [this, l, memo](const torch::autograd::variable_list& in) {
    wkv_memo_ = memo.get();
    struct ClearOnExit {
      kernels::Wkv7Memo*& slot;
      ~ClearOnExit() { slot = nullptr; }
    } clear{wkv_memo_};
    ModelState layer_state;
    layer_state.att_shift.assign(config_.n_layer, at::Tensor());
    layer_state.wkv.assign(config_.n_layer, at::Tensor());
    layer_state.ffn_shift.assign(config_.n_layer, at::Tensor());
    layer_state.att_shift[l] = in[2];
    layer_state.wkv[l] = in[3];
    layer_state.ffn_shift[l] = in[4];
    at::Tensor v = in[1].numel() ? in[1] : at::Tensor();
    at::Tensor out = block(l, in[0], v, layer_state);
    // x060 carries no value residual: the empty placeholder goes out as it came in.
    return torch::autograd::variable_list{out, v.defined() ? v : in[1], layer_state.att_shift[l],
                                          layer_state.wkv[l], layer_state.ffn_shift[l]};
  };
  at::Tensor v_in = v_first.defined() ? v_first : at::empty({0}, x.options());
  const at::Tensor anchor = at::zeros({}, x.options().dtype(at::kFloat)).requires_grad_(true);
  auto out = BlockCheckpoint::apply(std::move(fn), anchor, x, v_in, state.att_shift[l],
                                    state.wkv[l], state.ffn_shift[l]);
  v_first = out[1].numel() ? out[1] : at::Tensor();
  state.att_shift[l] = out[2];
  state.wkv[l] = out[3];
  state.ffn_shift[l] = out[4];
  return out[0];
}

std::vector<LinearSite> RwkvModel::linear_sites() const {
  std::vector<LinearSite> sites;
  for (size_t i = 0; i < sites_.size(); ++i)
    sites.push_back({sites_[i]->name, static_cast<int>(i / slots_), sites_[i]->base->in_features(),
                     sites_[i]->base->out_features()});
  return sites;
}

std::vector<StateSite> RwkvModel::state_sites() const {
  std::vector<StateSite> sites;
  for (int64_t l = 0; l < config_.n_layer; ++l)
    sites.push_back({block_prefix(l) + "att", static_cast<int>(l), config_.n_head,
                     config_.head_size, config_.n_embd});
  return sites;
}

size_t RwkvModel::site_index(std::string_view name) const {
  for (size_t i = 0; i < sites_.size(); ++i)
    if (sites_[i]->name == name) return i;
  std::string slots;
  for (const std::string& slot : config_.block_linear_names())
    slots += (slots.empty() ? "" : "|") + slot;
  throw Error("no linear site '" + std::string(name) + "'; " + architecture_title(config_.arch) +
              " sites are blocks.{0.." + std::to_string(config_.n_layer - 1) + "}." + slots);
}

const FrozenLinear& RwkvModel::linear(std::string_view site) const {
  return *sites_[site_index(site)]->base;
}

void RwkvModel::set_base_weight(std::string_view site, const at::Tensor& weight) {
  Site& s = *sites_[site_index(site)];
  if (weight.sizes() != at::IntArrayRef({s.base->out_features(), s.base->in_features()}))
    throw Error("set_base_weight(" + s.name + "): expected shape [" +
                std::to_string(s.base->out_features()) + ", " +
                std::to_string(s.base->in_features()) + "], got " + c10::str(weight.sizes()));
  // A quantized site is quantized again (QPiSSA quantizes the residual).
  if (dynamic_cast<const QuantizedLinear*>(s.base.get())) {
    s.base = options_.quantizer->quantize(weight.detach().to(options_.device));
    return;
  }
  at::Tensor w = weight.detach().to(options_.device, options_.dtype);
  weights_[s.name + ".weight"] = w;
  s.base = std::make_unique<DenseLinear>(w, options_.dtype);
}

void RwkvModel::set_linear_adapter(std::string_view site, std::shared_ptr<LinearAdapter> adapter) {
  sites_[site_index(site)]->adapter = std::move(adapter);
}

void RwkvModel::set_state_adapter(std::shared_ptr<StateAdapter> adapter) {
  state_adapter_ = std::move(adapter);
}

}  // namespace peftkit::model

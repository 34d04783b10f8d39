#include "low_rank.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::plugins {
namespace {

// The largest |alpha / r| (or alpha / sqrt(r)) an adapter may carry.
constexpr double kMaxPlausibleScale = 1e4;

}  // namespace

bool matches_any_suffix(const std::string& site, const std::vector<std::string>& patterns) {
  for (const auto& p : patterns)
    if (site.size() >= p.size() && site.compare(site.size() - p.size(), p.size(), p) == 0) return true;
  return false;
}

std::string join_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

LowRankAdapter::LowRankAdapter(const ModelView& model, at::Tensor a, at::Tensor b, double scale, double dropout)
    : model_(model), a_(std::move(a)), b_(std::move(b)), scale_(scale), dropout_(dropout) {}

at::Tensor LowRankAdapter::forward(const at::Tensor& x, const FrozenLinear& base) {
  const at::Tensor dropped = dropout_ > 0 && model_.training() ? at::dropout(x, dropout_, true) : x;
  const at::Tensor down = at::linear(dropped, a_.to(x.scalar_type()));
  const at::Tensor out = base.forward(x);
  // The scale goes into the small B and the sum into the up-projection's GEMM (beta = 1): no
  // elementwise pass over the [tokens, out] activations, forward or backward.
  const at::Tensor up = (b_ * scale_).to(x.scalar_type());
  return at::addmm(out.reshape({-1, out.size(-1)}), down.reshape({-1, down.size(-1)}), up.t()).view(out.sizes());
}

void add_to_weight(at::Tensor& weight, const at::Tensor& delta) {
  const at::ScalarType compute = at::promote_types(weight.scalar_type(), at::kFloat);
  weight = (weight.to(compute) + delta.to(weight.device(), compute)).to(weight.scalar_type());
}

void load_tensor(const TensorMap& tensors, const std::string& key, at::Tensor& target, std::string_view method) {
  auto it = tensors.find(key);
  if (it == tensors.end()) throw Error(std::string(method) + ": the adapter has no " + key);
  if (it->second.sizes() != target.sizes())
    throw Error(std::string(method) + ": " + key + " has shape " + c10::str(it->second.sizes()) + ", expected " +
                c10::str(target.sizes()) + " (another rank or another base model?)");
  at::NoGradGuard no_grad;
  target.copy_(it->second.to(target.options()));
}

void check_stored_scalar(const TensorMap& tensors, const std::string& key, double configured,
                         std::string_view recipe_key) {
  auto it = tensors.find(key);
  if (it == tensors.end()) return;
  const double stored = it->second.item<double>();
  if (stored != configured)
    throw Error("the adapter was trained with " + key + " = " + c10::str(stored) + " but " + std::string(recipe_key) +
                " = " + c10::str(configured) + "; set it to " + c10::str(stored) +
                " (a different value would mis-scale the adapter)");
}

LowRankPairs::LowRankPairs(std::string method, int64_t r, double alpha, bool rslora)
    : method_(std::move(method)), r_(r), alpha_(alpha), rslora_(rslora) {}

double LowRankPairs::scale() const {
  return rslora_ ? alpha_ / std::sqrt(static_cast<double>(r_)) : alpha_ / static_cast<double>(r_);
}

void LowRankPairs::add(std::string site, at::Tensor a, at::Tensor b) {
  pairs_.push_back({std::move(site), std::move(a), std::move(b)});
}

std::vector<TrainableTensor> LowRankPairs::trainable_tensors() const {
  std::vector<TrainableTensor> out;
  for (const auto& p : pairs_) {
    out.push_back({p.name + ".lora_A", p.a, 1.0, true});
    out.push_back({p.name + ".lora_B", p.b, 1.0, true});
  }
  return out;
}

void LowRankPairs::store(TensorMap& out) const {
  for (const auto& p : pairs_) {
    out[p.name + ".lora_A"] = p.a.detach().to(at::kCPU);
    out[p.name + ".lora_B"] = p.b.detach().to(at::kCPU);
  }
  out[method_ + ".r"] = at::scalar_tensor(r_, at::kLong);
  out[method_ + ".alpha"] = at::scalar_tensor(alpha_, at::kDouble);
  out[method_ + ".rslora"] = at::scalar_tensor(rslora_ ? 1 : 0, at::kLong);
}

void LowRankPairs::load(const TensorMap& tensors) {
  const std::string table = "[peft." + method_ + "] ";
  // A stored hyper-parameter is checked against sense before it is used: a damaged alpha would
  // merge to finite garbage.
  for (const char* key : {".r", ".alpha", ".rslora"}) {
    auto it = tensors.find(method_ + key);
    if (it != tensors.end() && (it->second.numel() != 1 || !std::isfinite(it->second.item<double>())))
      throw Error(method_ + ": the stored " + method_ + key + " is not one finite number (found " +
                  c10::str(it->second.sizes()) + " holding " + c10::str(it->second.flatten().slice(0, 0, 4)) +
                  "); the file is damaged");
  }
  if (!std::isfinite(scale()) || std::abs(scale()) > kMaxPlausibleScale)
    throw Error(method_ + ": alpha = " + c10::str(alpha_) + " with r = " + std::to_string(r_) +
                " gives the update scale " + c10::str(scale()) + "; scales beyond " + c10::str(kMaxPlausibleScale) +
                " are refused as implausible (published adapters use 0.01 to 100): check the file's " + method_ +
                ".alpha or the recipe");
  check_stored_scalar(tensors, method_ + ".r", static_cast<double>(r_), table + "r");
  check_stored_scalar(tensors, method_ + ".alpha", alpha_, table + "alpha");
  check_stored_scalar(tensors, method_ + ".rslora", rslora_ ? 1 : 0, table + "use_rslora");
  for (auto& p : pairs_) {
    load_tensor(tensors, p.name + ".lora_A", p.a, method_);
    load_tensor(tensors, p.name + ".lora_B", p.b, method_);
  }
}

void LowRankPairs::add_to_weights(TensorMap& weights, double sign,
                                  const std::function<at::Tensor(size_t)>& extra) const {
  auto f64 = [](const at::Tensor& t) { return t.detach().to(at::kCPU, at::kDouble); };
  for (size_t i = 0; i < pairs_.size(); ++i) {
    const Pair& p = pairs_[i];
    auto it = weights.find(p.name + ".weight");
    if (it == weights.end()) throw Error(method_ + ": the model has no " + p.name + ".weight to merge into");
    at::Tensor delta = at::matmul(f64(p.b), f64(p.a));
    if (extra) delta = delta + extra(i);
    add_to_weight(it->second, delta * (sign * scale()));
  }
}

void LowRankPairs::write_hf_folder(const std::filesystem::path& folder, double dropout) const {
  std::filesystem::create_directories(folder);
  TensorMap tensors;
  std::vector<std::string> modules;
  for (const auto& p : pairs_) {
    tensors["base_model.model." + p.name + ".lora_A.weight"] = p.a.detach().to(at::kCPU, at::kFloat).contiguous();
    tensors["base_model.model." + p.name + ".lora_B.weight"] = p.b.detach().to(at::kCPU, at::kFloat).contiguous();
    modules.push_back(p.name);
  }
  write_safetensors(folder / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  const nlohmann::json json = {
      {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", r_}, {"lora_alpha", alpha_},
      {"lora_dropout", dropout}, {"use_rslora", rslora_}, {"target_modules", modules},
      {"bias", "none"}, {"fan_in_fan_out", false}, {"init_lora_weights", true}, {"inference_mode", false},
      {"base_model_name_or_path", nullptr}, {"use_dora", false}, {"modules_to_save", nullptr}};
  write_text_file(folder / "adapter_config.json", json.dump(2) + "\n");
}

}  // namespace peftkit::plugins

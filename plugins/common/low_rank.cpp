#include "low_rank.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::plugins {

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
  const at::Tensor low_rank = at::linear(at::linear(dropped, a_.to(x.scalar_type())), b_.to(x.scalar_type()));
  return base.forward(x) + low_rank * scale_;
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

void write_hf_lora_folder(const std::filesystem::path& folder, const std::vector<HfLoraSite>& sites,
                          const HfLoraConfig& config) {
  std::filesystem::create_directories(folder);
  TensorMap tensors;
  std::vector<std::string> modules;
  for (const auto& s : sites) {
    tensors["base_model.model." + s.name + ".lora_A.weight"] = s.a.detach().to(at::kCPU, at::kFloat).contiguous();
    tensors["base_model.model." + s.name + ".lora_B.weight"] = s.b.detach().to(at::kCPU, at::kFloat).contiguous();
    modules.push_back(s.name);
  }
  write_safetensors(folder / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  const nlohmann::json json = {
      {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", config.r}, {"lora_alpha", config.alpha},
      {"lora_dropout", config.dropout}, {"use_rslora", config.rslora}, {"target_modules", modules},
      {"bias", "none"}, {"fan_in_fan_out", false}, {"init_lora_weights", true}, {"inference_mode", false},
      {"base_model_name_or_path", nullptr}, {"use_dora", false}, {"modules_to_save", nullptr}};
  std::ofstream(folder / "adapter_config.json") << json.dump(2) << "\n";
}

}  // namespace peftkit::plugins

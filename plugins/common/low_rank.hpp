// low_rank.hpp: pieces shared by the built-in low-rank plugins (lora, pissa). Not part of the SDK:
// a third-party plugin reads only core/include/peftkit (see examples/dora-plugin).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "peftkit/model.hpp"

namespace peftkit::plugins {

// Whether a site name ends with one of the patterns ("att.key" matches "blocks.3.att.key").
bool matches_any_suffix(const std::string& site, const std::vector<std::string>& patterns);
// "[a, b, c]" for messages.
std::string join_list(const std::vector<std::string>& items);

// y = base(x) + scale * B A dropout(x); A [r, in] and B [out, r] are the method's fp32 tensors,
// cast to the activation dtype on use. Dropout is active only while the model trains.
class LowRankAdapter final : public LinearAdapter {
 public:
  // The model owns its adapters, so `model` outlives this one.
  LowRankAdapter(const ModelView& model, at::Tensor a, at::Tensor b, double scale, double dropout);
  at::Tensor forward(const at::Tensor& x, const FrozenLinear& base) override;

 private:
  const ModelView& model_;
  at::Tensor a_, b_;
  double scale_, dropout_;
};

// W + delta computed in at least fp32 and stored back in W's dtype and device.
void add_to_weight(at::Tensor& weight, const at::Tensor& delta);

// Copies `tensors[key]` into `target` (same shape required); `method` prefixes messages.
void load_tensor(const TensorMap& tensors, const std::string& key, at::Tensor& target, std::string_view method);

// Refuses an adapter whose stored scalar hyper-parameter (e.g. "lora.alpha") differs from the
// configured one: merging or continuing it with another value would silently mis-scale it.
void check_stored_scalar(const TensorMap& tensors, const std::string& key, double configured,
                         std::string_view recipe_key);

// One adapted site of an HF PEFT LoRA adapter.
struct HfLoraSite {
  std::string name;  // "blocks.0.att.key"
  at::Tensor a;      // [r, in]
  at::Tensor b;      // [out, r]
};
struct HfLoraConfig {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool rslora = false;
};
// Writes adapter_config.json + adapter_model.safetensors (F32, base_model.model.<site>.lora_A.weight
// / .lora_B.weight) into `folder`, which is created.
void write_hf_lora_folder(const std::filesystem::path& folder, const std::vector<HfLoraSite>& sites,
                          const HfLoraConfig& config);

}  // namespace peftkit::plugins

// low_rank.hpp: pieces shared by the built-in low-rank plugins (lora, pissa). Not part of the SDK:
// a third-party plugin reads only core/include/peftkit (see examples/dora-plugin).
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "peftkit/model.hpp"
#include "peftkit/peft_method.hpp"

namespace peftkit::plugins {

// "[a, b, c]" for messages.
std::string join_list(const std::vector<std::string>& items);

// A stored scalar setting (<method>.alpha); nullopt when absent. Throws naming it when it is not
// one finite number: a damaged value would merge to finite garbage.
std::optional<double> stored_number(const TensorMap& tensors, const std::string& key);

// The low-rank pairs a file holds: <site>.lora_A with its <site>.lora_B, and PiSSA's init pairs
// <site>.init_lora_A / .init_lora_B.
struct StoredPairs {
  std::vector<std::string> sites;
  std::vector<std::string> tensors;  // every pair tensor, init pairs included
  int64_t rank = 0;
  int64_t parameters = 0;  // elements of the trained pairs (init pairs are frozen)
  bool init_pairs = false;
};
StoredPairs find_stored_pairs(const TensorMap& tensors);

// A .pth of pairs whose scale is stored as <method>.r / .alpha / .rslora (peftkit's, and LoRA
// exports): certain when r and alpha are stored, else a guess that cannot be mounted alone.
Recognition recognise_stored_pairs(const TensorMap& tensors, const StoredPairs& pairs,
                                   const std::string& method, std::string kind);

// An HF PEFT folder of peft_type LORA without DoRA: its r, lora_alpha, use_rslora and
// target_modules as options, its tensors renamed to <site>.lora_A / .lora_B.
Recognition recognise_hf_lora(const SavedFile& file);

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
void load_tensor(const TensorMap& tensors, const std::string& key, at::Tensor& target,
                 std::string_view method);

// Refuses an adapter whose stored scalar hyper-parameter (e.g. "lora.alpha") differs from the
// configured one: merging or continuing it with another value would silently mis-scale it.
void check_stored_scalar(const TensorMap& tensors, const std::string& key, double configured,
                         std::string_view recipe_key);

// A method's low-rank pairs, A [r, in] and B [out, r] per site (fp32, trained in place), with r,
// alpha and rsLoRA. Saved in RWKV-PEFT's layout, <site>.lora_A / <site>.lora_B, plus
// <method>.r / .alpha / .rslora, so that loading with other values is refused, never mis-scaled.
class LowRankPairs {
 public:
  struct Pair {
    std::string name;  // "blocks.0.att.key"
    at::Tensor a, b;
  };
  // method: "lora", "pissa": names the scalars and the recipe table in messages.
  LowRankPairs(std::string method, int64_t r, double alpha, bool rslora);

  int64_t r() const { return r_; }
  double alpha() const { return alpha_; }
  bool rslora() const { return rslora_; }
  double scale() const;  // alpha / r, or alpha / sqrt(r)

  void add(std::string site, at::Tensor a, at::Tensor b);
  const std::vector<Pair>& pairs() const { return pairs_; }
  bool empty() const { return pairs_.empty(); }

  std::vector<TrainableTensor> trainable_tensors() const;
  void store(TensorMap& out) const;  // CPU copies of the pairs, and the scalars
  void load(const TensorMap& tensors);
  // W += sign * s B A for every pair (fp64 update, stored in W's dtype); `extra` adds to the update
  // of a site (PiSSA subtracts its init pair).
  void add_to_weights(TensorMap& weights, double sign,
                      const std::function<at::Tensor(size_t)>& extra = nullptr) const;
  // adapter_config.json + adapter_model.safetensors (F32, base_model.model.<site>.lora_A.weight /
  // .lora_B.weight) in `folder`, which is created.
  void write_hf_folder(const std::filesystem::path& folder, double dropout) const;

 private:
  std::string method_;
  int64_t r_;
  double alpha_;
  bool rslora_;
  std::vector<Pair> pairs_;
};

}  // namespace peftkit::plugins

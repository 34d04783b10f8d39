// config.hpp: the architecture and geometry of an RWKV model, read from its tensors (spec
// rwkv-model §1.6 for x070, §4 for x060): nothing is assumed that the checkpoint can tell.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "peftkit/model.hpp"

namespace peftkit::model {

enum class Architecture {
  kX060,  // RWKV-6 "Finch"
  kX070,  // RWKV-7 "Goose"
};

// "x060" / "x070"; the parse names the accepted spellings in its error.
const char* architecture_name(Architecture arch);
Architecture parse_architecture(const std::string& text);
// "RWKV-6" / "RWKV-7", for people.
const char* architecture_title(Architecture arch);

struct ModelConfig {
  Architecture arch = Architecture::kX070;
  int64_t n_layer = 0;
  int64_t n_embd = 0;     // C
  int64_t head_size = 0;  // N
  int64_t n_head = 0;     // H = C / N
  int64_t vocab = 0;      // V
  int64_t ffn = 0;        // F (4C in x070 models, int(3.5C / 32) * 32 in x060 ones)
  // x070: low-rank dims of the w/a/v/g LoRAs; blocks.0.att.v0/v1/v2 present (unused).
  int64_t dim_w = 0, dim_a = 0, dim_v = 0, dim_g = 0;
  bool layer0_value_lora = false;
  // x060: low-rank dims of the five-way token-shift mix (time_maa_w1/w2) and the decay.
  int64_t dim_mix = 0, dim_decay = 0;

  // Detects the architecture from the keys (att.time_maa_x: x060, att.r_k: x070), infers the
  // geometry and checks that every tensor the model needs is present with the right shape and that
  // no unknown tensor is there; `where` names the file in messages.
  static ModelConfig from_tensors(const TensorMap& tensors, const std::string& where);
  // RWKV-LM's geometry for a new model: low-rank dims as in the released models.
  static ModelConfig for_size(Architecture arch, int64_t n_layer, int64_t n_embd, int64_t vocab,
                              int64_t head_size);
  static ModelConfig for_size(int64_t n_layer, int64_t n_embd, int64_t vocab, int64_t head_size) {
    return for_size(Architecture::kX070, n_layer, n_embd, vocab, head_size);
  }

  // The linear sites of one block, "att.receptance" ... "ffn.value", in the model's order.
  const std::vector<std::string>& block_linear_names() const;
  // Every tensor of the architecture with its shape.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors() const;

  int64_t parameter_count() const;
  // Floats of recurrent state per sequence: L * (H * N * N + 2 * C) for both architectures.
  int64_t state_floats() const { return n_layer * (n_head * head_size * head_size + 2 * n_embd); }
  // "RWKV-7 L12 C768 H12 N64 V65536 F3072 lora 64/64/32/128"
  std::string describe() const;
};

// The shape of an initial state merged into a model file (as RWKV-PEFT's merge_state.py writes
// it): blocks.{i}.att.time_state [H, N, N], and peftkit's token-shift states
// blocks.{i}.att.time_shift / ffn.time_shift [C]; nullopt for any other name.
std::optional<std::vector<int64_t>> merged_state_shape(const ModelConfig& config,
                                                       const std::string& name);
// Whether a name is one of those states, for any layer count.
bool is_merged_state_name(const std::string& name);

}  // namespace peftkit::model

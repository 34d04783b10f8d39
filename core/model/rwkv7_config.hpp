// rwkv7_config.hpp: the geometry of an RWKV-7 (x070) model, read from its tensors (spec
// rwkv-model §1.6): nothing is assumed that the checkpoint can tell.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "peftkit/model.hpp"

namespace peftkit::model {

struct Rwkv7Config {
  int64_t n_layer = 0;
  int64_t n_embd = 0;                                  // C
  int64_t head_size = 0;                               // N
  int64_t n_head = 0;                                  // H = C / N
  int64_t vocab = 0;                                   // V
  int64_t ffn = 0;                                     // F (4C in every official model)
  int64_t dim_w = 0, dim_a = 0, dim_v = 0, dim_g = 0;  // low-rank dims of the w/a/v/g LoRAs
  bool layer0_value_lora = false;                      // blocks.0.att.v0/v1/v2 present (unused)

  // Infers the geometry and checks that every tensor the model needs is present with the right
  // shape and that no unknown tensor is there; `where` names the file in messages.
  static Rwkv7Config from_tensors(const TensorMap& tensors, const std::string& where);
  // RWKV-LM's geometry for a new model: low-rank dims by the formulas of the released models.
  static Rwkv7Config for_size(int64_t n_layer, int64_t n_embd, int64_t vocab, int64_t head_size);

  // Parameter count, spec §1.6.
  int64_t parameter_count() const;
  // Floats of recurrent state per sequence: L * (H * N * N + 2 * C).
  int64_t state_floats() const { return n_layer * (n_head * head_size * head_size + 2 * n_embd); }
  std::string describe() const;  // "L12 C768 H12 N64 V65536 F3072 lora 64/64/32/128"
};

// The shape of an initial state merged into a model file (as RWKV-PEFT's merge_state.py writes
// it): blocks.{i}.att.time_state [H, N, N], and peftkit's token-shift states
// blocks.{i}.att.time_shift / ffn.time_shift [C]; nullopt for any other name.
std::optional<std::vector<int64_t>> merged_state_shape(const Rwkv7Config& config,
                                                       const std::string& name);
// Whether a name is one of those states, for any layer count.
bool is_merged_state_name(const std::string& name);

}  // namespace peftkit::model

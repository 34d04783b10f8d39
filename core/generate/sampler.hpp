// sampler.hpp: RWKV's decoding rule (ChatRWKV's sample_logits plus its repetition penalties).
//
//   Sampler sampler(settings, seed);
//   int32_t token = sampler.sample(logits);   // logits [V] of the last position
//   sampler.accept(token);                    // updates the penalties
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <unordered_map>

namespace peftkit::generate {

struct SamplerSettings {
  double temperature = 1.0;  // 0: greedy
  double top_p = 0.7;        // keep the smallest set of tokens whose probability reaches top_p
  int64_t top_k = 100;       // 0: off
  double presence_penalty = 0.25;   // subtracted once a token has occurred
  double frequency_penalty = 0.25;  // subtracted per (decayed) occurrence
  double penalty_decay = 0.996;     // occurrence counts decay by this each step
};

class Sampler {
 public:
  Sampler(const SamplerSettings& settings, uint64_t seed);
  // Applies the penalties, then top-p, top-k and temperature, and draws a token.
  int32_t sample(const at::Tensor& logits);
  // Records a generated token for the penalties.
  void accept(int32_t token);
  // The probabilities sample() draws from (penalties, top-p, top-k, temperature applied).
  at::Tensor probabilities(const at::Tensor& logits) const;

 private:
  SamplerSettings settings_;
  at::Generator generator_;
  std::unordered_map<int32_t, double> occurrences_;
};

}  // namespace peftkit::generate

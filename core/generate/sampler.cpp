#include "generate/sampler.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "peftkit/error.hpp"

namespace peftkit::generate {

Sampler::Sampler(const SamplerSettings& settings, uint64_t seed)
    : settings_(settings), generator_(at::make_generator<at::CPUGeneratorImpl>(seed)) {
  if (settings.temperature < 0) throw Error("temperature must be >= 0");
  if (settings.top_p <= 0 || settings.top_p > 1) throw Error("top-p must be in (0, 1]");
  if (settings.top_k < 0) throw Error("top-k must be >= 0");
}

at::Tensor Sampler::probabilities(const at::Tensor& logits_in) const {
  at::Tensor logits = logits_in.detach().to(at::kCPU, at::kFloat).clone();
  for (const auto& [token, count] : occurrences_)
    logits[token] -= settings_.presence_penalty + count * settings_.frequency_penalty;
  at::Tensor probs = at::softmax(logits, -1);
  if (settings_.temperature == 0) {
    at::Tensor greedy = at::zeros_like(probs);
    greedy[probs.argmax().item<int64_t>()] = 1.0;
    return greedy;
  }
  auto [sorted, order] = at::sort(probs, -1, /*descending=*/true);
  if (settings_.top_p < 1.0) {
    // The cutoff is the probability of the first sorted token where the cumulative sum reaches
    // top_p.
    at::Tensor cumulative = at::cumsum(sorted, -1);
    const int64_t index = (cumulative >= settings_.top_p).to(at::kInt).argmax().item<int64_t>();
    probs.masked_fill_(probs < sorted[index], 0.0);
  }
  if (settings_.top_k > 0 && settings_.top_k < probs.size(0))
    probs.index_fill_(0, order.slice(0, settings_.top_k), 0.0);
  if (settings_.temperature != 1.0) probs = at::pow(probs, 1.0 / settings_.temperature);
  return probs / probs.sum();
}

int32_t Sampler::sample(const at::Tensor& logits) {
  at::Tensor probs = probabilities(logits);
  return static_cast<int32_t>(at::multinomial(probs, 1, false, generator_).item<int64_t>());
}

void Sampler::accept(int32_t token) {
  for (auto& [t, count] : occurrences_) count *= settings_.penalty_decay;
  occurrences_[token] += 1.0;
}

}  // namespace peftkit::generate

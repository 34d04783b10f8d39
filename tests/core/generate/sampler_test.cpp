#include "generate/sampler.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace peftkit {
namespace {

generate::SamplerSettings plain() {
  generate::SamplerSettings s;
  s.temperature = 1.0;
  s.top_p = 1.0;
  s.top_k = 0;
  s.presence_penalty = 0;
  s.frequency_penalty = 0;
  return s;
}

// logits whose softmax is exactly `p`
at::Tensor logits_of(std::vector<double> p) {
  return at::log(at::tensor(p, at::kDouble)).to(at::kFloat);
}

TEST(Sampler, TopPKeepsTokensUpToTheCutoffProbability) {
  generate::SamplerSettings s = plain();
  s.top_p = 0.6;  // cumulative 0.4, 0.7 reaches 0.6 at the second token: cutoff 0.3
  at::Tensor p = generate::Sampler(s, 0).probabilities(logits_of({0.1, 0.4, 0.3, 0.2}));
  EXPECT_TRUE(at::allclose(p, at::tensor({0.0f, 0.4f / 0.7f, 0.3f / 0.7f, 0.0f}), 1e-5, 1e-6)) << p;
}

TEST(Sampler, TopKAndTemperature) {
  generate::SamplerSettings s = plain();
  s.top_k = 2;
  s.temperature = 0.5;  // p^(1/T) = p^2, renormalised
  at::Tensor p = generate::Sampler(s, 0).probabilities(logits_of({0.1, 0.4, 0.3, 0.2}));
  EXPECT_TRUE(at::allclose(p, at::tensor({0.0f, 0.16f / 0.25f, 0.09f / 0.25f, 0.0f}), 1e-5, 1e-6))
      << p;
  s.temperature = 0;
  EXPECT_EQ(generate::Sampler(s, 0).sample(logits_of({0.1, 0.4, 0.3, 0.2})), 1);
}

TEST(Sampler, PenaltiesLowerRepeatedTokensAndDecay) {
  generate::SamplerSettings s = plain();
  s.presence_penalty = 0.5;
  s.frequency_penalty = 0.25;
  s.penalty_decay = 0.5;
  generate::Sampler sampler(s, 0);
  sampler.accept(2);
  sampler.accept(2);  // count of 2: 1 * 0.5 + 1 = 1.5
  at::Tensor logits = at::zeros({4});
  at::Tensor expected = at::softmax(at::tensor({0.0f, 0.0f, -(0.5f + 1.5f * 0.25f), 0.0f}), 0);
  EXPECT_TRUE(at::allclose(sampler.probabilities(logits), expected, 1e-6, 1e-7));
}

TEST(Sampler, DrawsFromTheDistributionReproducibly) {
  generate::Sampler a(plain(), 9), b(plain(), 9);
  const at::Tensor logits = logits_of({0.5, 0.25, 0.25});
  std::vector<int> counts(3);
  for (int i = 0; i < 4000; ++i) {
    const int32_t token = a.sample(logits);
    EXPECT_EQ(token, b.sample(logits));
    ++counts[token];
  }
  EXPECT_NEAR(counts[0] / 4000.0, 0.5, 0.03);
  EXPECT_NEAR(counts[1] / 4000.0, 0.25, 0.03);
}

TEST(Sampler, RejectsInvalidSettings) {
  generate::SamplerSettings s = plain();
  s.top_p = 0;
  EXPECT_TRUE(testing::throws_with([&] { generate::Sampler(s, 0); }, "top-p must be in (0, 1]"));
  s = plain();
  s.temperature = -1;
  EXPECT_TRUE(testing::throws_with([&] { generate::Sampler(s, 0); }, "temperature must be >= 0"));
}

}  // namespace
}  // namespace peftkit

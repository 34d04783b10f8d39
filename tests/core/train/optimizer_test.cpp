#include "train/optimizer.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace peftkit {
namespace {

// Adam written out for one scalar in double: the formula of spec rwkv-peft-reference §1.5.
struct ScalarAdam {
  double p, m = 0, v = 0;
  int t = 0;
  void step(double g, double lr, double b1, double b2, double eps, double wd) {
    ++t;
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    p -= lr * (m / (1 - std::pow(b1, t))) / (std::sqrt(v / (1 - std::pow(b2, t))) + eps);
  }
};

TEST(Adam, MatchesTheFormulaWithScalesAndDecoupledDecay) {
  at::Tensor weight =
      at::tensor({0.5, -1.0, 2.0, 0.25}, at::kDouble).view({2, 2}).requires_grad_(true);
  at::Tensor vector = at::tensor({1.0, -2.0}, at::kDouble).requires_grad_(true);
  train::Adam adam({{"w", weight, 1.0, true}, {"v", vector, 2.0, false}}, {0.9, 0.99, 1e-8, 0.1});
  std::vector<ScalarAdam> w_ref{{0.5}, {-1.0}, {2.0}, {0.25}}, v_ref{{1.0}, {-2.0}};
  for (int step = 0; step < 5; ++step) {
    adam.zero_grad();
    at::Tensor loss = (weight.square() * (step + 1)).sum() + vector.pow(3).sum();
    loss.backward();
    for (int i = 0; i < 4; ++i) {
      double p = w_ref[i].p;
      w_ref[i].step(2 * p * (step + 1), 1e-2, 0.9, 0.99, 1e-8, 0.1);
    }
    for (int i = 0; i < 2; ++i) {
      double p = v_ref[i].p;
      v_ref[i].step(3 * p * p, 2e-2, 0.9, 0.99, 1e-8, 0.0);  // lr scale 2, no decay
    }
    adam.step(1e-2);
  }
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(weight.view({-1})[i].item<double>(), w_ref[i].p, 1e-12);
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(vector[i].item<double>(), v_ref[i].p, 1e-12);
  EXPECT_EQ(adam.steps(), 5);
}

TEST(Adam, ClipsTheGlobalNorm) {
  at::Tensor a = at::zeros({2}, at::kDouble).requires_grad_(true),
             b = at::zeros({1}, at::kDouble).requires_grad_(true);
  train::Adam adam({{"a", a}, {"b", b}}, {});
  a.mutable_grad() = at::tensor({3.0, 0.0}, at::kDouble);
  b.mutable_grad() = at::tensor({4.0}, at::kDouble);
  EXPECT_DOUBLE_EQ(adam.clip_grad_norm(1.0), 5.0);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-6);
}

TEST(Adam, StateRoundTripContinuesIdentically) {
  auto run = [](bool restore_midway) {
    at::Tensor p = at::tensor({1.0, 2.0, 3.0}).requires_grad_(true);
    auto adam = std::make_unique<train::Adam>(std::vector<train::OptimizedTensor>{{"p", p}},
                                              train::AdamSettings{});
    for (int step = 0; step < 6; ++step) {
      if (restore_midway && step == 3) {
        TensorMap state = adam->state_dict();
        for (auto& [k, v] : state) v = v.clone();
        adam = std::make_unique<train::Adam>(std::vector<train::OptimizedTensor>{{"p", p}},
                                             train::AdamSettings{});
        adam->load_state_dict(state);
      }
      adam->zero_grad();
      (p * p * p).sum().backward();
      adam->step(0.1);
    }
    return p.detach().clone();
  };
  EXPECT_TRUE(at::equal(run(false), run(true)));
}

}  // namespace
}  // namespace peftkit

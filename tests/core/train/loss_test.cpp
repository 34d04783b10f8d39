#include "train/loss.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace peftkit {
namespace {

TEST(CrossEntropyL2Wrap, GradientMatchesHandComputedValues) {
  // Row 0: logits (0, ln 3), target 0: p = (1/4, 3/4), CE gradient p - onehot = (-3/4, 3/4), and
  // L2Wrap adds 1e-4 * ln 3 / rows at the arg-max (index 1).
  // Row 1: logits (2, 0), target ignored: no CE gradient; L2Wrap adds 1e-4 * 2 / rows at index 0.
  at::Tensor logits = at::tensor({0.0, std::log(3.0), 2.0, 0.0}, at::kDouble).view({1, 2, 2}).requires_grad_(true);
  at::Tensor targets = at::tensor({0, -100}, at::kLong).view({1, 2});
  auto [loss, count] = cross_entropy_l2wrap(logits, targets);
  EXPECT_EQ(count, 1);
  EXPECT_NEAR(loss.item<double>(), std::log(4.0), 1e-6);  // -log(1/4)
  loss.backward();
  const double rows = 2;
  at::Tensor expected = at::tensor({-0.75, 0.75 + 1e-4 * std::log(3.0) / rows, 1e-4 * 2.0 / rows, 0.0}, at::kDouble);
  EXPECT_TRUE(at::allclose(logits.grad().view({-1}), expected, 1e-6, 1e-9)) << logits.grad();
}

TEST(CrossEntropyL2Wrap, MatchesPyTorchCrossEntropyOnLargerInputs) {
  at::manual_seed(0);
  at::Tensor logits = (3 * at::randn({3, 700, 50})).requires_grad_(true);  // 2100 rows: several chunks
  at::Tensor targets = at::randint(50, {3, 700});
  targets.index_put_({at::rand({3, 700}) < 0.3}, -100);
  auto [loss, count] = cross_entropy_l2wrap(logits, targets);
  loss.backward();
  at::Tensor reference = logits.detach().clone().requires_grad_(true);
  at::Tensor ce = at::cross_entropy_loss(reference.view({-1, 50}), targets.view({-1}), {}, at::Reduction::Mean, -100);
  ce.backward();
  EXPECT_NEAR(loss.item<double>(), ce.item<double>(), 1e-5);
  EXPECT_EQ(count, (targets != -100).sum().item<int64_t>());
  at::Tensor wrap = at::zeros({2100, 50});
  auto [max_value, max_index] = logits.detach().view({-1, 50}).max(-1);
  wrap.scatter_(1, max_index.unsqueeze(1), (max_value * 1e-4 / 2100).unsqueeze(1));
  EXPECT_TRUE(at::allclose(logits.grad().view({-1, 50}), reference.grad().view({-1, 50}) + wrap, 1e-5, 1e-7));
}

TEST(CrossEntropyL2Wrap, GradientKeepsTheLogitsDtype) {
  at::Tensor logits = at::randn({1, 4, 8}).to(at::kBFloat16).requires_grad_(true);
  auto [loss, count] = cross_entropy_l2wrap(logits, at::randint(8, {1, 4}));
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  loss.backward();
  EXPECT_EQ(logits.grad().scalar_type(), at::kBFloat16);
}

}  // namespace
}  // namespace peftkit

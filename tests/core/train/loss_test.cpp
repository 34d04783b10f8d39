#include "train/loss.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace peftkit {
namespace {

TEST(CrossEntropyL2Wrap, GradientMatchesHandComputedValues) {
  // Row 0: logits (0, ln 3), target 0: p = (1/4, 3/4), CE gradient p - onehot = (-3/4, 3/4), and
  // L2Wrap adds 1e-4 * ln 3 / rows at the arg-max (index 1).
  // Row 1: logits (2, 0), target ignored: no gradient at all (no CE, no L2Wrap).
  at::Tensor logits =
      at::tensor({0.0, std::log(3.0), 2.0, 0.0}, at::kDouble).view({1, 2, 2}).requires_grad_(true);
  at::Tensor targets = at::tensor({0, -100}, at::kLong).view({1, 2});
  at::Tensor loss = train::cross_entropy_l2wrap(logits, targets);
  EXPECT_NEAR(loss.item<double>(), std::log(4.0), 1e-6);  // -log(1/4)
  loss.backward();
  const double rows = 2;
  at::Tensor expected =
      at::tensor({-0.75, 0.75 + 1e-4 * std::log(3.0) / rows, 0.0, 0.0}, at::kDouble);
  EXPECT_TRUE(at::allclose(logits.grad().view({-1}), expected, 1e-6, 1e-9)) << logits.grad();
}

// Issue 14 item 7: a batch without a counted target (padding, masked prompts) must not move the
// weights; L2Wrap used to act on every row.
TEST(CrossEntropyL2Wrap, WithEveryTargetIgnoredTheLossAndItsGradientAreZero) {
  for (bool fused : {false, true}) {
    // Through the fused head with an identity head the hidden rows are the logits.
    at::Tensor logits = at::tensor({0.0, std::log(3.0), 2.0, 0.0}, at::kDouble)
                            .view({1, 2, 2})
                            .requires_grad_(true);
    const at::Tensor targets = at::full({1, 2}, -100, at::kLong);
    at::Tensor loss =
        fused ? train::head_cross_entropy_l2wrap(logits, at::eye(2, at::kDouble), targets)
              : train::cross_entropy_l2wrap(logits, targets);
    EXPECT_EQ(loss.item<double>(), 0.0);
    (loss * 2).backward();
    EXPECT_EQ(logits.grad().abs().max().item<double>(), 0.0) << fused << logits.grad();
  }
}

TEST(CrossEntropyL2Wrap, MatchesPyTorchCrossEntropyOnLargerInputs) {
  at::manual_seed(0);
  at::Tensor logits =
      (3 * at::randn({3, 700, 50})).requires_grad_(true);  // 2100 rows: several chunks
  at::Tensor targets = at::randint(50, {3, 700});
  targets.index_put_({at::rand({3, 700}) < 0.3}, -100);
  at::Tensor loss = train::cross_entropy_l2wrap(logits, targets);
  loss.backward();
  at::Tensor reference = logits.detach().clone().requires_grad_(true);
  at::Tensor ce = at::cross_entropy_loss(reference.view({-1, 50}), targets.view({-1}), {},
                                         at::Reduction::Mean, -100);
  ce.backward();
  EXPECT_NEAR(loss.item<double>(), ce.item<double>(), 1e-5);
  at::Tensor wrap = at::zeros({2100, 50});
  auto [max_value, max_index] = logits.detach().view({-1, 50}).max(-1);
  // L2Wrap on the rows whose target counts only.
  const at::Tensor counts = (targets.view({-1}) != -100).to(at::kFloat);
  wrap.scatter_(1, max_index.unsqueeze(1), (max_value * counts * 1e-4 / 2100).unsqueeze(1));
  EXPECT_TRUE(at::allclose(logits.grad().view({-1, 50}), reference.grad().view({-1, 50}) + wrap,
                           1e-5, 1e-7));
}

TEST(CrossEntropyL2Wrap, PiecesOfABatchAddUpToTheWholeLossAndGradient) {
  // Segments along time, each scaled as part of the whole (as the trainer's chunk_ctx uses them).
  at::manual_seed(3);
  const at::Tensor logits0 = 3 * at::randn({2, 300, 50}, at::kDouble);
  const at::Tensor head = at::eye(50, at::kDouble);  // the fused head with identity weights
  at::Tensor targets = at::randint(50, {2, 300});
  targets.slice(1, 100, 130).fill_(-100);
  for (bool fused : {false, true}) {
    auto loss_of = [&](const at::Tensor& x, const at::Tensor& t, const train::WholeBatch* whole) {
      return fused ? train::head_cross_entropy_l2wrap(x, head, t, whole)
                   : train::cross_entropy_l2wrap(x, t, whole);
    };
    at::Tensor all = logits0.clone().requires_grad_(true);
    at::Tensor whole_loss = loss_of(all, targets, nullptr);
    (whole_loss * 2).backward();
    at::Tensor pieces = logits0.clone().requires_grad_(true);
    const train::WholeBatch whole = train::whole_batch(targets, at::kCPU);
    at::Tensor sum = at::zeros({}, at::kFloat);
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 120}, {120, 257}, {257, 300}}) {
      at::Tensor piece = loss_of(pieces.slice(1, begin, end), targets.slice(1, begin, end), &whole);
      (piece * 2).backward();
      sum += piece.detach();
    }
    EXPECT_NEAR(sum.item<double>(), whole_loss.item<double>(), 1e-6 * whole_loss.item<double>())
        << fused;
    EXPECT_TRUE(at::allclose(pieces.grad(), all.grad(), 1e-6, 1e-9)) << fused;
  }
}

TEST(CrossEntropyL2Wrap, GradientKeepsTheLogitsDtype) {
  at::Tensor logits = at::randn({1, 4, 8}).to(at::kBFloat16).requires_grad_(true);
  at::Tensor loss = train::cross_entropy_l2wrap(logits, at::randint(8, {1, 4}));
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  loss.backward();
  EXPECT_EQ(logits.grad().scalar_type(), at::kBFloat16);
}

TEST(HeadCrossEntropyL2Wrap, EqualsTheHeadFollowedByTheLossIncludingGradients) {
  // 2 x 300 rows cross the 256-row chunks; some targets ignored. Both compute the softmax in fp32,
  // so they agree to fp32 rounding whatever the input dtype.
  for (auto dtype : {at::kDouble, at::kFloat}) {
    const at::Tensor hidden0 = at::randn({2, 300, 16}, dtype);
    const at::Tensor head0 = at::randn({50, 16}, dtype) * 0.5;
    at::Tensor targets = at::randint(50, {2, 300});
    targets.slice(1, 0, 7).fill_(-100);
    at::Tensor h1 = hidden0.clone().requires_grad_(true), w1 = head0.clone().requires_grad_(true);
    at::Tensor h2 = hidden0.clone().requires_grad_(true), w2 = head0.clone().requires_grad_(true);
    at::Tensor unfused = train::cross_entropy_l2wrap(at::linear(h1, w1), targets);
    at::Tensor fused = train::head_cross_entropy_l2wrap(h2, w2, targets);
    const double tolerance = 2e-5;
    EXPECT_NEAR(fused.item<double>(), unfused.item<double>(), tolerance * unfused.item<double>());
    (unfused * 3).backward();
    (fused * 3).backward();
    EXPECT_TRUE(at::allclose(h2.grad(), h1.grad(), tolerance, tolerance)) << dtype;
    EXPECT_TRUE(at::allclose(w2.grad(), w1.grad(), tolerance, tolerance)) << dtype;
  }
  // A frozen head gets no gradient and costs none.
  at::Tensor h = at::randn({1, 5, 16}, at::kDouble).requires_grad_(true);
  at::Tensor loss = train::head_cross_entropy_l2wrap(h, at::randn({50, 16}, at::kDouble),
                                                     at::randint(50, {1, 5}));
  loss.backward();
  EXPECT_TRUE(h.grad().defined());
}

// On the device the loss runs as kernels/loss's kernels on bf16 logits; against the same bf16
// inputs in float64 on the CPU it differs by the bf16 rounding of the logits and of their
// gradient only.
TEST(HeadCrossEntropyL2WrapCuda, Bf16OnTheDeviceMatchesFloat64OnTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(11);
  const at::Tensor hidden0 = at::randn({2, 300, 64}).to(at::kBFloat16);
  const at::Tensor head0 = (at::randn({4096, 64}) * 0.3).to(at::kBFloat16);
  at::Tensor targets = at::randint(4096, {2, 300});
  targets.slice(1, 0, 9).fill_(-100);
  auto run = [&](const at::Device& device, at::ScalarType dtype) {
    at::Tensor h = hidden0.to(device, dtype).requires_grad_(true);
    at::Tensor w = head0.to(device, dtype).requires_grad_(true);
    at::Tensor loss = train::head_cross_entropy_l2wrap(h, w, targets.to(device));
    (loss * 3).backward();
    return std::vector<at::Tensor>{loss.detach().cpu().to(at::kDouble),
                                   h.grad().cpu().to(at::kDouble), w.grad().cpu().to(at::kDouble)};
  };
  const auto got = run(at::kCUDA, at::kBFloat16), want = run(at::kCPU, at::kDouble);
  const char* names[] = {"loss", "hidden gradient", "head gradient"};
  for (size_t i = 0; i < got.size(); ++i) {
    const double error = ((got[i] - want[i]).norm() / want[i].norm()).item<double>();
    EXPECT_LE(error, i == 0 ? 2e-3 : 1e-2) << names[i];
    std::printf("[ loss cuda ] %-16s relative error %.2e\n", names[i], error);
  }
}

}  // namespace
}  // namespace peftkit

// The loss's per-row kernels against the formulas in float64: the reference in CI, the CUDA
// kernels on the GPU machine.
#include "loss/softmax_loss.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>

namespace peftkit::kernels {
namespace {

constexpr int64_t kIgnore = -100;

struct Expected {
  at::Tensor nll, grad;  // float64, CPU
};

// logsumexp(row) - row[label] and ce (softmax - onehot) + wrap max at the first arg-max, per row,
// element by element in float64.
Expected formulas(const at::Tensor& logits, const at::Tensor& labels, double ce, double wrap) {
  const at::Tensor x = logits.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor ids = labels.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = x.size(0), V = x.size(1);
  Expected out{at::zeros({n}, at::kDouble), at::zeros({n, V}, at::kDouble)};
  auto xa = x.accessor<double, 2>();
  auto ga = out.grad.accessor<double, 2>();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = ids[r].item<int64_t>();
    if (label == kIgnore) continue;
    double max = -std::numeric_limits<double>::infinity();
    int64_t first = 0;
    for (int64_t v = 0; v < V; ++v)
      if (xa[r][v] > max) max = xa[r][v], first = v;
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(xa[r][v] - max);
    out.nll[r] = std::log(sum) + max - xa[r][label];
    for (int64_t v = 0; v < V; ++v) ga[r][v] = ce * std::exp(xa[r][v] - max) / sum;
    ga[r][label] -= ce;
    ga[r][first] += wrap * max;
  }
  return out;
}

struct Case {
  at::Tensor logits, labels;
};

// Rows of 3 N(0, 1) logits, a third of them ignored, one with its largest value twice (the first
// takes L2Wrap), one with -inf entries.
Case make_case(int64_t n, int64_t V, at::ScalarType dtype, const at::Device& device) {
  at::Tensor x = 3 * at::randn({n, V}, at::kDouble);
  at::Tensor labels = at::randint(V, {n}, at::kLong);
  labels.index_put_({at::arange(n) % 3 == 1}, kIgnore);
  x[0][V / 3] = 20.0;
  x[0][V - 1] = 20.0;
  x[2][V / 2] = -std::numeric_limits<double>::infinity();
  x[2][V / 5] = -std::numeric_limits<double>::infinity();
  if (labels[2].item<int64_t>() == V / 2 || labels[2].item<int64_t>() == V / 5) labels[2] = 0;
  return {x.to(device, dtype), labels.to(device)};
}

double max_relative(const at::Tensor& got, const at::Tensor& want, double floor) {
  const at::Tensor g = got.to(at::kCPU, at::kDouble);
  return ((g - want).abs() / (want.abs() + floor)).max().item<double>();
}

void expect_matches_formulas(const at::Device& device, at::ScalarType dtype, int64_t n, int64_t V,
                             bool reference) {
  at::manual_seed(n * 7 + V);
  const Case c = make_case(n, V, dtype, device);
  const double ce = 0.37, wrap = 1e-4 / 3;
  const at::Tensor ce_t = at::full({}, ce, at::TensorOptions(device).dtype(at::kFloat));
  const at::Tensor wrap_t = at::full({}, wrap, at::TensorOptions(device).dtype(at::kFloat));
  const Expected want =
      formulas(c.logits, c.labels, static_cast<float>(ce), static_cast<float>(wrap));
  const at::Tensor nll = reference ? softmax_nll_reference(c.logits, c.labels, kIgnore)
                                   : softmax_nll(c.logits, c.labels, kIgnore);
  const at::Tensor grad =
      reference ? softmax_nll_l2wrap_gradient_reference(c.logits, c.labels, kIgnore, ce_t, wrap_t)
                : softmax_nll_l2wrap_gradient(c.logits, c.labels, kIgnore, ce_t, wrap_t);
  const std::string what = std::string(reference ? "reference " : "kernel ") +
                           c10::toString(dtype) + " rows " + std::to_string(n) + " V " +
                           std::to_string(V);
  ASSERT_EQ(nll.scalar_type(), at::kFloat) << what;
  ASSERT_EQ(grad.scalar_type(), dtype) << what;
  ASSERT_EQ(grad.sizes(), c.logits.sizes()) << what;
  // fp32 arithmetic on inputs exact in float64; the gradient rounds once to its dtype.
  const double nll_error = max_relative(nll, want.nll, 1.0);
  const double grad_bound = dtype == at::kBFloat16 ? 1.0 / 256 : 2e-5;
  const double grad_error = max_relative(grad, want.grad, 1e-30);
  EXPECT_LE(nll_error, 2e-6) << what;
  EXPECT_LE(grad_error, grad_bound) << what;
  // Ignored rows: no loss, no gradient at all.
  const at::Tensor ignored = (c.labels == kIgnore).cpu();
  EXPECT_EQ(nll.cpu().index({ignored}).abs().sum().item<double>(), 0.0) << what;
  EXPECT_EQ(grad.cpu().index({ignored}).abs().sum().item<double>(), 0.0) << what;
  if (!reference) {
    EXPECT_TRUE(at::equal(nll, softmax_nll(c.logits, c.labels, kIgnore))) << what << " run to run";
    EXPECT_TRUE(
        at::equal(grad, softmax_nll_l2wrap_gradient(c.logits, c.labels, kIgnore, ce_t, wrap_t)))
        << what << " run to run";
  }
  std::printf("[ softmax loss ] %-40s nll %.2e  gradient %.2e\n", what.c_str(), nll_error,
              grad_error);
}

TEST(SoftmaxLoss, ReferenceMatchesTheFloat64Formulas) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kDouble})
    expect_matches_formulas(at::kCPU, dtype, 7, 50, true);
  expect_matches_formulas(at::kCPU, at::kFloat, 5, 4096, true);
}

TEST(SoftmaxLoss, RefusesMalformedRows) {
  const at::Tensor logits = at::randn({3, 5});
  EXPECT_THROW(softmax_nll(logits, at::zeros({4}, at::kLong), kIgnore), c10::Error);
  EXPECT_THROW(softmax_nll(logits.view({15}), at::zeros({15}, at::kLong), kIgnore), c10::Error);
}

// V = 65536 and 1000 take the 16-byte loads (bf16 and fp32), 50, 9 and 1002 (bf16) element loads.
TEST(SoftmaxLossCuda, MatchesTheFloat64FormulasForEveryRowLayout) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (auto [n, V] : std::vector<std::pair<int64_t, int64_t>>{
             {37, 65536}, {300, 1000}, {5, 1002}, {64, 50}, {4, 9}})
      expect_matches_formulas(at::kCUDA, dtype, n, V, false);
  // No rows: nothing to launch.
  const at::Tensor none = at::empty({0, 10}, at::TensorOptions(at::kCUDA).dtype(at::kBFloat16));
  EXPECT_EQ(softmax_nll(none, at::empty({0}, at::kLong), kIgnore).numel(), 0);
}

TEST(SoftmaxLossCuda, NanLogitsAndLabelsOutsideTheVocabularyGiveANanLoss) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::Tensor logits = at::randn({3, 64}, at::TensorOptions(at::kCUDA).dtype(at::kBFloat16));
  logits[0][7] = std::numeric_limits<float>::quiet_NaN();
  const at::Tensor labels = at::tensor({1, 64, 2}, at::kLong);
  const at::Tensor nll = softmax_nll(logits, labels, kIgnore).cpu();
  EXPECT_TRUE(std::isnan(nll[0].item<float>()));
  EXPECT_TRUE(std::isnan(nll[1].item<float>()));
  EXPECT_TRUE(std::isfinite(nll[2].item<float>()));
}

}  // namespace
}  // namespace peftkit::kernels

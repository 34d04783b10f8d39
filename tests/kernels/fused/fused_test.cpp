// The fused block ops: the references against the spec's formulas written out element by element
// in float64 (CPU, runs in CI), and on the GPU machine the CUDA kernels against the references in
// float64 from the same inputs, outputs and every gradient, run to run bit-identical.
#include "fused/fused.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace peftkit::kernels {
namespace {

constexpr int64_t B = 2, T = 5, H = 3, N = 32, C = H * N;

at::Tensor uniform(at::IntArrayRef sizes, double lo, double hi) {
  return at::empty(sizes, at::kDouble).uniform_(lo, hi);
}

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want.to(at::kDouble)).norm().item<double>() /
         want.to(at::kDouble).norm().item<double>();
}

TEST(FusedReference, TokenShiftMixIsTheLerpWithThePreviousToken) {
  at::manual_seed(1);
  const at::Tensor x = uniform({B, T, C}, -1, 1), shift = uniform({B, C}, -1, 1),
                   mixes = uniform({6, C}, 0, 1);
  const at::Tensor out = at::stack(token_shift_mix_reference(x, shift, mixes));
  auto X = x.accessor<double, 3>();
  auto S = shift.accessor<double, 2>(), M = mixes.accessor<double, 2>();
  auto O = out.accessor<double, 4>();
  for (int64_t m = 0; m < 6; ++m)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          const double previous = t == 0 ? S[b][c] : X[b][t - 1][c];
          EXPECT_NEAR(O[m][b][t][c], X[b][t][c] + (previous - X[b][t][c]) * M[m][c], 1e-14);
        }
}

TEST(FusedReference, KkAbNormalisesPerHeadAndBuildsAAndB) {
  at::manual_seed(2);
  const at::Tensor k = uniform({B, T, C}, -1, 1), a = uniform({B, T, C}, 0, 1),
                   k_k = uniform({C}, 0.5, 1.5), k_a = uniform({C}, 0, 1);
  const KkAb out = kk_ab_reference(k, a, k_k, k_a, H);
  auto K = k.accessor<double, 3>(), A = a.accessor<double, 3>();
  auto KK = k_k.accessor<double, 1>(), KA = k_a.accessor<double, 1>();
  auto Ko = out.k.accessor<double, 3>(), Ao = out.a.accessor<double, 3>(),
       Bo = out.b.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double norm = 0;
        for (int64_t n = 0; n < N; ++n) norm += std::pow(K[b][t][h * N + n] * KK[h * N + n], 2);
        norm = std::sqrt(norm);
        for (int64_t n = 0; n < N; ++n) {
          const int64_t c = h * N + n;
          const double kk = K[b][t][c] * KK[c] / norm;
          EXPECT_NEAR(Ko[b][t][c], K[b][t][c] * (1 + (A[b][t][c] - 1) * KA[c]), 1e-14);
          EXPECT_NEAR(Ao[b][t][c], -kk, 1e-14);
          EXPECT_NEAR(Bo[b][t][c], kk * A[b][t][c], 1e-14);
        }
      }
}

TEST(FusedReference, NormBonusGateIsGroupNormPlusBonusTimesGate) {
  at::manual_seed(3);
  const double eps = 64e-5;
  const at::Tensor y = uniform({B, T, C}, -2, 2), r = uniform({B, T, C}, -1, 1),
                   k = uniform({B, T, C}, -1, 1), v = uniform({B, T, C}, -1, 1),
                   g = uniform({B, T, C}, -1, 1), w = uniform({C}, 0.5, 1.5),
                   bias = uniform({C}, -0.1, 0.1), r_k = uniform({C}, -1, 1);
  const at::Tensor out = norm_bonus_gate_reference(y, r, k, v, g, w, bias, r_k, H, eps);
  auto Y = y.accessor<double, 3>(), R = r.accessor<double, 3>(), K = k.accessor<double, 3>(),
       V = v.accessor<double, 3>(), G = g.accessor<double, 3>();
  auto W = w.accessor<double, 1>(), Bi = bias.accessor<double, 1>(), RK = r_k.accessor<double, 1>();
  auto O = out.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double mean = 0, var = 0, bonus = 0;
        for (int64_t n = 0; n < N; ++n) mean += Y[b][t][h * N + n] / N;
        for (int64_t n = 0; n < N; ++n) var += std::pow(Y[b][t][h * N + n] - mean, 2) / N;
        for (int64_t n = 0; n < N; ++n)
          bonus += R[b][t][h * N + n] * K[b][t][h * N + n] * RK[h * N + n];
        for (int64_t n = 0; n < N; ++n) {
          const int64_t c = h * N + n;
          const double normed = (Y[b][t][c] - mean) / std::sqrt(var + eps) * W[c] + Bi[c];
          EXPECT_NEAR(O[b][t][c], (normed + bonus * V[b][t][c]) * G[b][t][c], 1e-12);
        }
      }
}

TEST(FusedReference, ReluSquare) {
  const at::Tensor x = at::linspace(-2, 2, 9, at::kDouble);
  EXPECT_TRUE(at::equal(relu_square_reference(x), at::clamp_min(x, 0) * at::clamp_min(x, 0)));
}

// One fused op on the GPU against its reference in float64: every output and every gradient, with
// the loss sum(out_i * weight_i) (weights rounded to the kernel's dtype, as its gradients are).
using Op = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

void expect_kernel_matches_reference(const std::string& name, const Op& kernel, const Op& reference,
                                     const std::vector<at::Tensor>& inputs, at::ScalarType dtype,
                                     double bound) {
  auto run = [&](const Op& op, at::Device device, at::ScalarType type) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor& t : inputs)
      leaves.push_back(t.to(dtype).to(device, type).detach().requires_grad_(true));
    const std::vector<at::Tensor> outs = op(leaves);
    at::Tensor loss = at::zeros({}, at::TensorOptions(device).dtype(at::kDouble));
    for (size_t i = 0; i < outs.size(); ++i) {
      at::manual_seed(100 + static_cast<int64_t>(i));
      const at::Tensor weight =
          at::randn(outs[i].sizes(), at::kDouble).to(dtype).to(at::kDouble).to(device);
      loss = loss + (outs[i].to(at::kDouble) * weight).sum();
    }
    loss.backward();
    std::vector<at::Tensor> result;
    for (const at::Tensor& o : outs) result.push_back(o.detach().cpu().to(at::kDouble));
    for (const at::Tensor& l : leaves) result.push_back(l.grad().cpu().to(at::kDouble));
    return result;
  };
  const auto want = run(reference, at::kCPU, at::kDouble);
  const auto got = run(kernel, at::kCUDA, dtype);
  const auto again = run(kernel, at::kCUDA, dtype);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double error = relative_error(got[i], want[i]);
    const std::string what =
        name + (i < got.size() - inputs.size()
                    ? " output " + std::to_string(i)
                    : " gradient of input " + std::to_string(i - (got.size() - inputs.size())));
    EXPECT_LE(error, bound) << what << " " << dtype;
    EXPECT_TRUE(at::equal(got[i], again[i])) << what << " differs run to run";
    std::printf("[ fused cuda ] %-40s %-9s relative error %.2e\n", what.c_str(),
                c10::toString(dtype), error);
  }
}

TEST(FusedCuda, EveryOpMatchesItsFloat64ReferenceIncludingGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const auto& [dtype, bound] : {std::pair{at::kFloat, 1e-5}, std::pair{at::kBFloat16, 2e-3}}) {
    for (const auto& shape :
         std::vector<std::vector<int64_t>>{{2, 37, 3, 64}, {16, 1, 4, 32}, {1, 130, 2, 128}}) {
      const int64_t b = shape[0], t = shape[1], h = shape[2], n = shape[3], c = h * n;
      at::manual_seed(b * 1000 + t);
      expect_kernel_matches_reference(
          "token_shift_mix",
          [](const std::vector<at::Tensor>& in) { return token_shift_mix(in[0], in[1], in[2]); },
          [](const std::vector<at::Tensor>& in) {
            return token_shift_mix_reference(in[0], in[1], in[2]);
          },
          {uniform({b, t, c}, -1, 1), uniform({b, c}, -1, 1), uniform({6, c}, 0, 1)}, dtype, bound);
      // Mixes nobody uses reach the backward as null gradients.
      expect_kernel_matches_reference(
          "token_shift_mix, mixes 1 and 4 of 6 used",
          [](const std::vector<at::Tensor>& in) {
            const auto out = token_shift_mix(in[0], in[1], in[2]);
            return std::vector<at::Tensor>{out[1], out[4]};
          },
          [](const std::vector<at::Tensor>& in) {
            const auto out = token_shift_mix_reference(in[0], in[1], in[2]);
            return std::vector<at::Tensor>{out[1], out[4]};
          },
          {uniform({b, t, c}, -1, 1), uniform({b, c}, -1, 1), uniform({6, c}, 0, 1)}, dtype, bound);
      expect_kernel_matches_reference(
          "kk_ab, b unused",
          [h](const std::vector<at::Tensor>& in) {
            const KkAb out = kk_ab(in[0], in[1], in[2], in[3], h);
            return std::vector<at::Tensor>{out.k, out.a};
          },
          [h](const std::vector<at::Tensor>& in) {
            const KkAb out = kk_ab_reference(in[0], in[1], in[2], in[3], h);
            return std::vector<at::Tensor>{out.k, out.a};
          },
          {uniform({b, t, c}, -1, 1), uniform({b, t, c}, 0, 1), uniform({c}, 0.5, 1.5),
           uniform({c}, 0, 1)},
          dtype, bound);
      expect_kernel_matches_reference(
          "kk_ab",
          [h](const std::vector<at::Tensor>& in) {
            const KkAb out = kk_ab(in[0], in[1], in[2], in[3], h);
            return std::vector<at::Tensor>{out.k, out.a, out.b};
          },
          [h](const std::vector<at::Tensor>& in) {
            const KkAb out = kk_ab_reference(in[0], in[1], in[2], in[3], h);
            return std::vector<at::Tensor>{out.k, out.a, out.b};
          },
          {uniform({b, t, c}, -1, 1), uniform({b, t, c}, 0, 1), uniform({c}, 0.5, 1.5),
           uniform({c}, 0, 1)},
          dtype, bound);
      expect_kernel_matches_reference(
          "norm_bonus_gate",
          [h](const std::vector<at::Tensor>& in) {
            return std::vector<at::Tensor>{
                norm_bonus_gate(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], h, 64e-5)};
          },
          [h](const std::vector<at::Tensor>& in) {
            return std::vector<at::Tensor>{norm_bonus_gate_reference(
                in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], h, 64e-5)};
          },
          {uniform({b, t, c}, -2, 2), uniform({b, t, c}, -1, 1), uniform({b, t, c}, -1, 1),
           uniform({b, t, c}, -1, 1), uniform({b, t, c}, -1, 1), uniform({c}, 0.5, 1.5),
           uniform({c}, -0.1, 0.1), uniform({c}, -1, 1)},
          dtype, bound);
      expect_kernel_matches_reference(
          "relu_square",
          [](const std::vector<at::Tensor>& in) {
            return std::vector<at::Tensor>{relu_square(in[0])};
          },
          [](const std::vector<at::Tensor>& in) {
            return std::vector<at::Tensor>{relu_square_reference(in[0])};
          },
          {uniform({b, t, 4 * c}, -1, 1)}, dtype, bound);
    }
  }
}

// GPU only: ReLU² and the token shift's forward take 16-byte packs of elements where sizes and
// pointers allow, elements otherwise: ReLU² of a size that leaves a tail and of a view that starts
// one element in (not 16-byte aligned); the token shift with C = 37 (no packs) and C = 36 (packs of
// 4 fp32, not of 8 bf16).
TEST(FusedCuda, PackedAndElementwisePathsMatchTheReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(12);
  for (const auto& [dtype, bound] : {std::pair{at::kFloat, 1e-5}, std::pair{at::kBFloat16, 2e-3}}) {
    for (const int64_t c : {37, 36})
      expect_kernel_matches_reference(
          "token_shift_mix C " + std::to_string(c),
          [](const std::vector<at::Tensor>& in) { return token_shift_mix(in[0], in[1], in[2]); },
          [](const std::vector<at::Tensor>& in) {
            return token_shift_mix_reference(in[0], in[1], in[2]);
          },
          {uniform({2, 5, c}, -1, 1), uniform({2, c}, -1, 1), uniform({6, c}, 0, 1)}, dtype, bound);
    for (const int64_t offset : {0, 1})
      expect_kernel_matches_reference(
          "relu_square from element " + std::to_string(offset),
          [offset](const std::vector<at::Tensor>& in) {
            return std::vector<at::Tensor>{relu_square(in[0].slice(0, offset))};
          },
          [offset](const std::vector<at::Tensor>& in) {
            return std::vector<at::Tensor>{relu_square_reference(in[0].slice(0, offset))};
          },
          {uniform({1003 + offset}, -1, 1)}, dtype, bound);
  }
}

// GPU only: with the per-channel parameters frozen the kernels skip their partial sums and autograd
// gets no gradient for them; the activations' gradients are the same bits as when they train.
TEST(FusedCuda, FrozenParametersGetNoGradientAndTheActivationsGradientsStayTheSame) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const int64_t b = 2, t = 37, h = 3, n = 64, c = h * n;
  at::manual_seed(11);
  auto gpu = [](std::vector<int64_t> shape, double low, double high) {
    return uniform(shape, low, high).to(at::kCUDA, at::kBFloat16);
  };
  // The first `activations` inputs always train; the rest (parameters) when `train_parameters`.
  auto gradients = [](const Op& op, const std::vector<at::Tensor>& inputs, size_t activations,
                      bool train_parameters) {
    std::vector<at::Tensor> leaves;
    for (size_t i = 0; i < inputs.size(); ++i)
      leaves.push_back(inputs[i].detach().requires_grad_(i < activations || train_parameters));
    at::Tensor loss = at::zeros({}, at::TensorOptions(at::kCUDA).dtype(at::kDouble));
    for (const at::Tensor& o : op(leaves)) loss = loss + o.to(at::kDouble).square().sum();
    loss.backward();
    std::vector<at::Tensor> result;
    for (const at::Tensor& l : leaves) result.push_back(l.grad());
    return result;
  };
  auto expect = [&](const std::string& name, const Op& op, const std::vector<at::Tensor>& inputs,
                    size_t activations) {
    const auto trained = gradients(op, inputs, activations, true);
    const auto frozen = gradients(op, inputs, activations, false);
    for (size_t i = 0; i < inputs.size(); ++i) {
      ASSERT_TRUE(trained[i].defined()) << name << " input " << i;
      if (i < activations)
        EXPECT_TRUE(at::equal(trained[i], frozen[i])) << name << " input " << i;
      else
        EXPECT_FALSE(frozen[i].defined()) << name << " frozen parameter " << i;
    }
  };
  expect(
      "token_shift_mix",
      [](const std::vector<at::Tensor>& in) { return token_shift_mix(in[0], in[1], in[2]); },
      {gpu({b, t, c}, -1, 1), gpu({b, c}, -1, 1), gpu({6, c}, 0, 1)}, 2);
  expect(
      "kk_ab",
      [h](const std::vector<at::Tensor>& in) {
        const KkAb out = kk_ab(in[0], in[1], in[2], in[3], h);
        return std::vector<at::Tensor>{out.k, out.a, out.b};
      },
      {gpu({b, t, c}, -1, 1), gpu({b, t, c}, 0, 1), gpu({c}, 0.5, 1.5), gpu({c}, 0, 1)}, 2);
  expect(
      "norm_bonus_gate",
      [h](const std::vector<at::Tensor>& in) {
        return std::vector<at::Tensor>{
            norm_bonus_gate(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], h, 64e-5)};
      },
      {gpu({b, t, c}, -2, 2), gpu({b, t, c}, -1, 1), gpu({b, t, c}, -1, 1), gpu({b, t, c}, -1, 1),
       gpu({b, t, c}, -1, 1), gpu({c}, 0.5, 1.5), gpu({c}, -0.1, 0.1), gpu({c}, -1, 1)},
      5);
}

// GPU only: 17 M rows, far more than a grid's y dimension could count (65535 blocks; the kernels
// put rows on x, up to 2^31 - 1; a micro_bsz of 65536 at ctx 512 has 33.5 M), give what the same
// kernels give on each sequence of the batch alone (2.2 M rows). The parameter gradients sum over
// every row, in another order.
TEST(FusedCuda, BatchesBeyondTheGridsSecondDimensionMatchEachSequenceAlone) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 8, T = (int64_t{17} << 20) / B + 3, H = 1, N = 32, C = H * N;
  at::manual_seed(7);
  auto on_gpu = [](std::vector<int64_t> shape, double low, double high) {
    return at::empty(shape, at::TensorOptions(at::kCUDA).dtype(at::kFloat)).uniform_(low, high);
  };
  // batched[i]: input i has the batch first (the outputs all have it).
  auto compare = [&](const std::string& name, const Op& op, const std::vector<at::Tensor>& inputs,
                     const std::vector<bool>& batched) {
    auto run = [&](const std::vector<at::Tensor>& in) {
      std::vector<at::Tensor> leaves;
      for (const at::Tensor& t : in) leaves.push_back(t.detach().requires_grad_(true));
      const auto outs = op(leaves);
      at::Tensor loss = at::zeros({}, at::TensorOptions(at::kCUDA).dtype(at::kDouble));
      for (const at::Tensor& o : outs) loss = loss + o.to(at::kDouble).square().sum();
      loss.backward();
      std::vector<at::Tensor> result(outs.begin(), outs.end());
      for (const at::Tensor& l : leaves) result.push_back(l.grad());
      return result;
    };
    const auto whole = run(inputs);
    std::vector<std::vector<at::Tensor>> parts;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<at::Tensor> part;
      for (size_t i = 0; i < inputs.size(); ++i)
        part.push_back(batched[i] ? inputs[i].narrow(0, b, 1).contiguous() : inputs[i]);
      parts.push_back(run(part));
    }
    const size_t outputs = whole.size() - inputs.size();
    for (size_t i = 0; i < whole.size(); ++i) {
      const bool per_row = i < outputs || batched[i - outputs];
      std::vector<at::Tensor> pieces;
      for (const auto& part : parts) pieces.push_back(part[i]);
      const at::Tensor want = per_row ? at::cat(pieces) : at::stack(pieces).sum(0);
      ASSERT_EQ(whole[i].sizes(), want.sizes()) << name << " result " << i;
      const double error = relative_error(whole[i].to(at::kDouble), want.to(at::kDouble));
      EXPECT_LE(error, per_row ? 1e-7 : 1e-5) << name << " result " << i;
      std::printf("[ fused cuda ] %-16s result %zu of %lld rows: relative error %.2e\n",
                  name.c_str(), i, static_cast<long long>(B * T), error);
    }
  };
  compare("token_shift_mix",
          [](const std::vector<at::Tensor>& in) { return token_shift_mix(in[0], in[1], in[2]); },
          {on_gpu({B, T, C}, -1, 1), on_gpu({B, C}, -1, 1), on_gpu({2, C}, 0, 1)},
          {true, true, false});
  compare(
      "kk_ab",
      [H](const std::vector<at::Tensor>& in) {
        const KkAb out = kk_ab(in[0], in[1], in[2], in[3], H);
        return std::vector<at::Tensor>{out.k, out.a, out.b};
      },
      {on_gpu({B, T, C}, -1, 1), on_gpu({B, T, C}, 0, 1), on_gpu({C}, 0.5, 1.5), on_gpu({C}, 0, 1)},
      {true, true, false, false});
}

}  // namespace
}  // namespace peftkit::kernels

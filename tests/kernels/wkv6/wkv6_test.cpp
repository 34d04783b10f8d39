// The CPU WKV6 kernel against the recurrence of spec rwkv-model §4 written here with tensor ops in
// float64 (in the official CUDA kernel's per-element form), and its gradients against central
// finite differences.
#include "wkv6/wkv6.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <sstream>

#include "binding.hpp"
#include "kernels/finite_differences.hpp"
#include "test_util.hpp"

namespace peftkit::kernels {
namespace {

struct Inputs {
  at::Tensor r, k, v, w, u, s0;
};

// Inputs like RWKV-CUDA's benchmark: decays from w in [-6, 1] (d from 0.998 down to 0.066).
Inputs random_inputs(int64_t B, int64_t T, int64_t H, int64_t N, at::ScalarType dtype,
                     uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto uniform = [&](std::vector<int64_t> shape, double lo, double hi) {
    return at::empty(shape, at::kDouble).uniform_(lo, hi, g);
  };
  Inputs in{uniform({B, T, H, N}, -1, 1), uniform({B, T, H, N}, -1, 1),
            uniform({B, T, H, N}, -1, 1), uniform({B, T, H, N}, -6, 1),
            uniform({H, N}, -1, 1),       at::normal(0, 1, {B, H, N, N}, g, at::kDouble)};
  for (at::Tensor* t : {&in.r, &in.k, &in.v, &in.w, &in.u, &in.s0}) *t = t->to(dtype);
  return in;
}

// Element by element as the spec writes it: y_i = sum_j r_j (u_j k_j v_i + S[i][j]), then
// S[i][j] = S[i][j] d_j + k_j v_i, with d = exp(-exp(w)).
std::pair<at::Tensor, at::Tensor> reference(const Inputs& in) {
  const int64_t B = in.r.size(0), T = in.r.size(1), H = in.r.size(2), N = in.r.size(3);
  auto acc = [](const at::Tensor& x) { return x.to(at::kDouble).contiguous(); };
  const at::Tensor r = acc(in.r), k = acc(in.k), v = acc(in.v), w = acc(in.w), u = acc(in.u);
  at::Tensor S = in.s0.defined() ? acc(in.s0).clone() : at::zeros({B, H, N, N}, at::kDouble);
  at::Tensor y = at::zeros({B, T, H, N}, at::kDouble);
  auto R = r.accessor<double, 4>(), K = k.accessor<double, 4>(), V = v.accessor<double, 4>(),
       W = w.accessor<double, 4>(), Y = y.accessor<double, 4>();
  auto U = u.accessor<double, 2>();
  auto s = S.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < N; ++i) {
          double out = 0;
          for (int64_t j = 0; j < N; ++j)
            out += R[b][t][h][j] * (U[h][j] * K[b][t][h][j] * V[b][t][h][i] + s[b][h][i][j]);
          Y[b][t][h][i] = out;
        }
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < N; ++j)
            s[b][h][i][j] =
                s[b][h][i][j] * std::exp(-std::exp(W[b][t][h][j])) + K[b][t][h][j] * V[b][t][h][i];
      }
  return {y, S};
}

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want.to(at::kDouble)).norm().item<double>() /
         want.to(at::kDouble).norm().item<double>();
}

TEST(Wkv6Cpu, MatchesTheFloat64RecurrenceIncludingChunkTails) {
  for (int64_t T : {1, 16, 37}) {
    Inputs in = random_inputs(2, T, 3, 8, at::kDouble, 10 + T);
    auto [y_ref, s_ref] = reference(in);
    auto [y, s] = wkv6(in.r, in.k, in.v, in.w, in.u, in.s0);
    EXPECT_LT(relative_error(y, y_ref), 1e-13) << T;
    EXPECT_LT(relative_error(s, s_ref), 1e-13) << T;
    Inputs fp32 = random_inputs(2, T, 3, 8, at::kFloat, 10 + T);
    auto [y32, s32] = wkv6(fp32.r, fp32.k, fp32.v, fp32.w, fp32.u, fp32.s0);
    EXPECT_EQ(y32.scalar_type(), at::kFloat);
    EXPECT_LT(relative_error(y32, y_ref), 1e-5) << T;
    EXPECT_LT(relative_error(s32, s_ref), 1e-5) << T;
  }
}

TEST(Wkv6Cpu, TheOutputReadsTheStateBeforeTheUpdate) {
  // One token from a zero state: y = v (u k . r) exactly; the state is then v k^T.
  Inputs in = random_inputs(1, 1, 1, 4, at::kDouble, 2);
  auto [y, s] = wkv6(in.r, in.k, in.v, in.w, in.u, at::Tensor());
  const at::Tensor bonus = (in.u[0] * in.k[0][0][0] * in.r[0][0][0]).sum();
  EXPECT_TRUE(at::allclose(y[0][0][0], in.v[0][0][0] * bonus, 1e-14, 1e-14));
  EXPECT_TRUE(at::allclose(s[0][0], at::outer(in.v[0][0][0], in.k[0][0][0]), 1e-14, 1e-14));
}

TEST(Wkv6Cpu, StatePassingIsExact) {
  Inputs in = random_inputs(2, 40, 2, 8, at::kFloat, 4);
  auto [y, s] = wkv6(in.r, in.k, in.v, in.w, in.u, in.s0);
  auto part = [&](const at::Tensor& x, int64_t from, int64_t to) { return x.slice(1, from, to); };
  auto [y1, s1] =
      wkv6(part(in.r, 0, 21), part(in.k, 0, 21), part(in.v, 0, 21), part(in.w, 0, 21), in.u, in.s0);
  auto [y2, s2] = wkv6(part(in.r, 21, 40), part(in.k, 21, 40), part(in.v, 21, 40),
                       part(in.w, 21, 40), in.u, s1);
  EXPECT_TRUE(at::allclose(at::cat({y1, y2}, 1), y, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(s2, s, 1e-6, 1e-6));
}

// Loss sum(y^2 - tanh(y)) + sum(s_T * c) exercises dy and the final-state gradient (spec §8 A).
TEST(Wkv6Cpu, GradientsMatchCentralFiniteDifferencesInFloat64) {
  Inputs in = random_inputs(2, 19, 2, 4, at::kDouble, 5);  // 19 > 16: two checkpoint chunks
  at::Tensor c = at::randn({2, 2, 4, 4}, at::kDouble);
  std::vector<at::Tensor*> params = {&in.r, &in.k, &in.v, &in.w, &in.u, &in.s0};
  const char* names[] = {"r", "k", "v", "w", "u", "s0"};
  auto loss = [&]() {
    auto [y, s] = wkv6(in.r, in.k, in.v, in.w, in.u, in.s0);
    return (y.square() - at::tanh(y)).sum() + (s * c).sum();
  };
  for (at::Tensor* p : params) p->requires_grad_(true);
  loss().backward();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor analytic = params[i]->grad().clone();
    const at::Tensor numeric = testing::central_differences(loss, *params[i]);
    EXPECT_LT(relative_error(analytic, numeric), 1e-7) << "gradient of " << names[i];
  }
}

TEST(Wkv6Cpu, TensorOpReferenceAgreesWithTheKernelIncludingGradients) {
  Inputs in = random_inputs(2, 23, 2, 8, at::kFloat, 7);
  std::vector<at::Tensor*> params = {&in.r, &in.k, &in.v, &in.w, &in.u, &in.s0};
  auto run = [&](bool use_reference) {
    for (at::Tensor* p : params) *p = p->detach().requires_grad_(true);
    auto [y, s] = use_reference ? wkv6_reference(in.r, in.k, in.v, in.w, in.u, in.s0)
                                : wkv6(in.r, in.k, in.v, in.w, in.u, in.s0);
    ((y * y).sum() + s.sum()).backward();
    std::vector<at::Tensor> out = {y.detach(), s.detach()};
    for (at::Tensor* p : params) out.push_back(p->grad().clone());
    return out;
  };
  const auto kernel = run(false), tensor_ops = run(true);
  for (size_t i = 0; i < kernel.size(); ++i)
    EXPECT_LT(relative_error(kernel[i], tensor_ops[i]), 1e-5) << "output " << i;
}

// GPU machine only: the chunked CUDA kernels against the CPU kernel in float64 from the same
// inputs (rounded to the kernel's dtype first): y, the final state and every gradient, u and the
// initial state included, under a weighted loss on y and the final state (so ds_final flows in).
// Bounds (relative L2): bf16 2e-3 and its dh0 2e-4, fp32 1e-5. Shapes cover T not a multiple of 16,
// both head sizes, B*H from 1 to 512, T up to 16384, an initial state shared by the batch, and
// decays from almost 1 to e^-20 per step (long chunks of strong decay must neither overflow nor
// lose the weak ones). Outputs are poisoned with NaN first (an unwritten element fails); a second
// run must be bit-identical, and the forward without autograd must give the same y and state.
TEST(Wkv6Cuda, MatchesTheFloat64CpuKernelIncludingGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t B, T, H, N;
    at::ScalarType dtype;
    double bound, ds0_bound;
    double w_low = -6, w_high = 1;
    bool shared_state = false;
    bool final_state_loss = true;  // false: no gradient reaches the final state (as in training)
  };
  const Case cases[] = {{2, 37, 3, 64, at::kFloat, 1e-5, 1e-5},
                        {2, 37, 3, 64, at::kBFloat16, 2e-3, 2e-4},
                        {4, 1, 8, 64, at::kBFloat16, 2e-3, 2e-4},
                        {1, 16, 2, 32, at::kFloat, 1e-5, 1e-5},
                        {3, 100, 2, 32, at::kBFloat16, 2e-3, 2e-4},
                        {8, 33, 64, 64, at::kBFloat16, 2e-3, 2e-4},
                        {4, 70, 3, 64, at::kBFloat16, 2e-3, 2e-4, -6, 1, true},
                        {2, 64, 4, 64, at::kFloat, 1e-5, 1e-5, -1, 3},
                        {2, 64, 4, 64, at::kFloat, 1e-5, 1e-5, -12, -6},
                        {1, 16384, 1, 64, at::kBFloat16, 2e-3, 2e-4},
                        {1, 16383, 1, 64, at::kFloat, 1e-5, 1e-5},
                        // The tiny x060 training model: N 32, two chunks, init-model's decays,
                        // a batch-shared trained state and no loss on the final state.
                        {2, 32, 2, 32, at::kFloat, 1e-5, 1e-5, -6, -1, true, false},
                        {2, 37, 3, 32, at::kFloat, 1e-5, 1e-5, -6, 1, false, false},
                        // More (batch, head) pairs than a grid's y dimension counts (65535).
                        {65541, 3, 1, 32, at::kFloat, 1e-5, 1e-5}};
  poison_kernel_outputs_for_testing(true);
  for (const auto& c : cases) {
    Inputs in = random_inputs(c.B, c.T, c.H, c.N, c.dtype, 31 + c.T);
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(c.T);
    in.w = at::empty(in.w.sizes(), at::kDouble).uniform_(c.w_low, c.w_high, g).to(c.dtype);
    in.s0 = in.s0.to(at::kFloat);
    if (c.shared_state) in.s0 = in.s0.slice(0, 0, 1);
    // dy reaches the kernel in y's dtype: the reference gets the same rounded dy.
    const at::Tensor weight_y =
        at::randn({c.B, c.T, c.H, c.N}, at::kDouble).to(c.dtype).to(at::kDouble);
    const at::Tensor weight_s = at::randn({c.B, c.H, c.N, c.N}, at::kDouble);
    auto run = [&](at::Device device, at::ScalarType dtype) {
      std::vector<at::Tensor> leaves;
      for (const at::Tensor* t : {&in.r, &in.k, &in.v, &in.w, &in.u, &in.s0}) {
        const bool wide = t == &in.s0 || t == &in.u;  // fp32 parameters in training
        leaves.push_back(t->to(device, wide && dtype != at::kDouble ? at::kFloat : dtype)
                             .detach()
                             .requires_grad_(true));
      }
      const at::Tensor s0 = leaves[5].expand({c.B, c.H, c.N, c.N});
      auto [y, s] = wkv6(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], s0);
      at::Tensor loss = (y.to(at::kDouble) * weight_y.to(device)).sum();
      if (c.final_state_loss) loss = loss + (s.to(at::kDouble) * weight_s.to(device)).sum();
      loss.backward();
      std::vector<at::Tensor> out = {y.detach().cpu().to(at::kDouble),
                                     s.detach().cpu().to(at::kDouble)};
      for (const auto& leaf : leaves) out.push_back(leaf.grad().cpu().to(at::kDouble));
      return out;
    };
    const auto want = run(at::kCPU, at::kDouble);
    const auto got = run(at::kCUDA, c.dtype);
    const char* names[] = {"y", "s_final", "dr", "dk", "dv", "dw", "du", "ds0"};
    std::ostringstream where;
    where << " B" << c.B << " T" << c.T << " H" << c.H << " N" << c.N << " " << c.dtype << " w in ["
          << c.w_low << ", " << c.w_high << "]" << (c.shared_state ? " shared h0" : "")
          << (c.final_state_loss ? "" : " no dL/ds_final");
    for (size_t i = 0; i < want.size(); ++i) {
      const double error = relative_error(got[i], want[i]);
      EXPECT_LE(error, i == 7 ? c.ds0_bound : c.bound) << names[i] << where.str();
      std::printf("[ wkv6 cuda ] %-8s %-50s relative error %.2e\n", names[i], where.str().c_str(),
                  error);
    }
    // Again on a side stream, as training runs (CUDA graphs cannot capture the default stream).
    const auto again = [&] {
      c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool(false, 0));
      return run(at::kCUDA, c.dtype);
    }();
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_TRUE(at::equal(again[i], got[i])) << names[i] << where.str();
    at::NoGradGuard no_grad;
    auto device_input = [&](const at::Tensor& t) { return t.to(at::kCUDA, c.dtype); };
    auto [y, s] =
        wkv6(device_input(in.r), device_input(in.k), device_input(in.v), device_input(in.w),
             in.u.to(at::kCUDA, at::kFloat), in.s0.to(at::kCUDA).expand({c.B, c.H, c.N, c.N}));
    EXPECT_TRUE(at::equal(y.cpu().to(at::kDouble), got[0])) << where.str();
    EXPECT_TRUE(at::equal(s.cpu().to(at::kDouble), got[1])) << where.str();
  }
  poison_kernel_outputs_for_testing(false);
}

TEST(Wkv6Cpu, RejectsMismatchedShapes) {
  Inputs in = random_inputs(1, 4, 2, 4, at::kFloat, 8);
  EXPECT_TRUE(testing::throws_with([&] { wkv6(in.r, in.k, in.v, in.w, in.u.view({-1}), in.s0); },
                                   "wkv6: u must be [H, N] = [2, 4], got [8]"));
  EXPECT_TRUE(
      testing::throws_with([&] { wkv6(in.r, in.k.narrow(1, 0, 3), in.v, in.w, in.u, in.s0); },
                           "wkv6: r, k, v and w must have shape [1, 4, 2, 4], got [1, 3, 2, 4]"));
  EXPECT_TRUE(
      testing::throws_with([&] { wkv6(in.r, in.k, in.v, in.w, in.u, in.s0.transpose(0, 1)); },
                           "wkv6: s0 must be [B, H, N, N] = [1, 2, 4, 4], got [2, 1, 4, 4]"));
}

}  // namespace
}  // namespace peftkit::kernels

// The CPU WKV7 kernel against the recurrence of spec rwkv-model §1.3 written with tensor ops in
// float64, and its gradients against central finite differences.
#include "wkv7/wkv7.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <sstream>

#include "binding.hpp"
#include "kernels/finite_differences.hpp"
#include "test_util.hpp"

namespace peftkit::kernels {
namespace {

struct Inputs {
  at::Tensor r, z, k, v, a, b, s0;
};

// Realistic inputs (spec §8 A): a, b from a unit-norm kk and a rate in (0, 1).
Inputs random_inputs(int64_t B, int64_t T, int64_t H, int64_t N, at::ScalarType dtype,
                     uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto uniform = [&](double lo, double hi) {
    return at::empty({B, T, H, N}, at::kDouble).uniform_(lo, hi, g);
  };
  at::Tensor kk = uniform(-1, 1);
  kk = kk / kk.norm(2, {-1}, true);
  at::Tensor rate = uniform(0, 1);
  Inputs in{uniform(-1, 1),
            uniform(-6, 2),
            uniform(-1, 1),
            uniform(-1, 1),
            -kk,
            kk * rate,
            at::normal(0, 1, {B, H, N, N}, g, at::kDouble)};
  for (at::Tensor* t : {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.s0}) *t = t->to(dtype);
  return in;
}

// y and the final state, step by step with tensor ops (independent of the kernel's loops).
std::pair<at::Tensor, at::Tensor> reference(const Inputs& in) {
  const int64_t T = in.r.size(1);
  at::Tensor S =
      in.s0.defined()
          ? in.s0.to(at::kDouble)
          : at::zeros({in.r.size(0), in.r.size(2), in.r.size(3), in.r.size(3)}, at::kDouble);
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < T; ++t) {
    auto at_t = [&](const at::Tensor& x) { return x.select(1, t).to(at::kDouble); };  // [B, H, N]
    at::Tensor d = at::exp(-at::exp(-at::softplus(-at_t(in.z)) - 0.5));
    at::Tensor sa = at::matmul(S, at_t(in.a).unsqueeze(-1));  // [B, H, N, 1]
    S = S * d.unsqueeze(-2) + sa * at_t(in.b).unsqueeze(-2) +
        at_t(in.v).unsqueeze(-1) * at_t(in.k).unsqueeze(-2);
    ys.push_back(at::matmul(S, at_t(in.r).unsqueeze(-1)).squeeze(-1));
  }
  return {at::stack(ys, 1), S};
}

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want).norm().item<double>() / want.norm().item<double>();
}

TEST(Wkv7Cpu, DecayIsTheSoftClampedFormOfSpec) {
  at::Tensor z = at::linspace(-8, 8, 33, at::kDouble);
  EXPECT_TRUE(
      at::allclose(wkv7_decay(z), at::exp(-at::exp(-at::softplus(-z) - 0.5)), 1e-14, 1e-14));
}

TEST(Wkv7Cpu, MatchesTheFloat64RecurrenceIncludingChunkTails) {
  for (int64_t T : {1, 16, 37}) {
    Inputs in = random_inputs(2, T, 3, 8, at::kDouble, 10 + T);
    auto [y_ref, s_ref] = reference(in);
    auto [y, s] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0);
    EXPECT_LT(relative_error(y, y_ref), 1e-13) << T;
    EXPECT_LT(relative_error(s, s_ref), 1e-13) << T;
    Inputs fp32 = random_inputs(2, T, 3, 8, at::kFloat, 10 + T);
    auto [y32, s32] = wkv7(fp32.r, fp32.z, fp32.k, fp32.v, fp32.a, fp32.b, fp32.s0);
    EXPECT_EQ(y32.scalar_type(), at::kFloat);
    EXPECT_LT(relative_error(y32, y_ref), 1e-5) << T;
  }
}

TEST(Wkv7Cpu, ZeroInitialStateWhenNoneIsGiven) {
  Inputs in = random_inputs(1, 9, 2, 4, at::kDouble, 3);
  auto [y0, s_zero] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, at::zeros_like(in.s0));
  auto [y1, s_none] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, at::Tensor());
  EXPECT_TRUE(at::equal(y0, y1));
  EXPECT_TRUE(at::equal(s_zero, s_none));
}

TEST(Wkv7Cpu, StatePassingIsExact) {
  Inputs in = random_inputs(2, 40, 2, 8, at::kFloat, 4);
  auto [y, s] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0);
  auto part = [&](const at::Tensor& x, int64_t from, int64_t to) { return x.slice(1, from, to); };
  auto [y1, s1] = wkv7(part(in.r, 0, 21), part(in.z, 0, 21), part(in.k, 0, 21), part(in.v, 0, 21),
                       part(in.a, 0, 21), part(in.b, 0, 21), in.s0);
  auto [y2, s2] = wkv7(part(in.r, 21, 40), part(in.z, 21, 40), part(in.k, 21, 40),
                       part(in.v, 21, 40), part(in.a, 21, 40), part(in.b, 21, 40), s1);
  EXPECT_TRUE(at::allclose(at::cat({y1, y2}, 1), y, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(s2, s, 1e-6, 1e-6));
}

// Loss sum(y^2 - tanh(y)) + sum(s_T * c) exercises dy and the final-state gradient (spec §8 A).
TEST(Wkv7Cpu, GradientsMatchCentralFiniteDifferencesInFloat64) {
  Inputs in = random_inputs(1, 19, 2, 4, at::kDouble, 5);  // 19 > 16: two checkpoint chunks
  at::Tensor c = at::randn({1, 2, 4, 4}, at::kDouble);
  std::vector<at::Tensor*> params = {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.s0};
  const char* names[] = {"r", "z", "k", "v", "a", "b", "s0"};
  auto loss = [&]() {
    auto [y, s] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0);
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

TEST(Wkv7Cpu, TensorOpReferenceAgreesWithTheKernelIncludingGradients) {
  Inputs in = random_inputs(2, 23, 2, 8, at::kFloat, 7);
  std::vector<at::Tensor*> params = {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.s0};
  auto run = [&](bool reference) {
    for (at::Tensor* p : params) *p = p->detach().requires_grad_(true);
    auto [y, s] = reference ? wkv7_reference(in.r, in.z, in.k, in.v, in.a, in.b, in.s0)
                            : wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0);
    ((y * y).sum() + s.sum()).backward();
    std::vector<at::Tensor> out = {y.detach(), s.detach()};
    for (at::Tensor* p : params) out.push_back(p->grad());
    return out;
  };
  auto kernel = run(false), reference = run(true);
  for (size_t i = 0; i < kernel.size(); ++i)
    EXPECT_LT(relative_error(kernel[i], reference[i].to(at::kDouble)), 1e-5) << i;
}

// GPU machine only: the CUDA kernels against the CPU kernel in float64 from the same inputs
// (rounded to the kernel's input dtype first): outputs, final state and every gradient including
// dh0, with a weighted loss on y and the final state (so ds_final flows in). bf16 cases run the
// chunked tensor-core paths (TF32 and split-TF32 dots), fp32 cases the fp32 passes over time.
// Shapes cover T not a multiple of 16 (chunk tails), every head size, B*H from 1 to 512, T up to
// 16384, both row splits of the passes over time, an initial state shared by the batch; outputs are
// poisoned with NaN first (an unwritten element fails), and a second run must be bit-identical.
TEST(Wkv7Cuda, MatchesTheFloat64CpuKernelIncludingGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t B, T, H, N;
    at::ScalarType dtype;
    double bound;
    bool shared_state = false;
  };
  const Case cases[] = {{2, 37, 3, 64, at::kFloat, 1e-5},
                        {2, 37, 3, 64, at::kBFloat16, 2e-3},
                        {4, 1, 8, 64, at::kBFloat16, 2e-3},
                        {1, 1, 2, 16, at::kFloat, 1e-5},
                        {3, 100, 2, 32, at::kBFloat16, 2e-3},
                        {1, 300, 1, 128, at::kFloat, 1e-5},
                        {1, 257, 2, 128, at::kBFloat16, 2e-3},
                        {4, 17, 4, 16, at::kBFloat16, 2e-3},
                        // B*H = 512: the fused chunked form (by shape, up to 170 SMs).
                        {8, 33, 64, 64, at::kBFloat16, 2e-3},
                        {4, 70, 3, 64, at::kBFloat16, 2e-3, true},
                        {1, 16384, 1, 64, at::kBFloat16, 2e-3},
                        {1, 16383, 1, 64, at::kFloat, 1e-5},
                        // Enough heads that the passes over time keep a (batch, head) in one block
                        // (two rows per thread) on a GPU of up to 160 SMs; fewer split its rows.
                        {3, 50, 30, 64, at::kFloat, 1e-5},
                        {2, 40, 40, 128, at::kFloat, 1e-5}};
  poison_kernel_outputs_for_testing(true);
  for (const auto& c : cases) {
    Inputs in = random_inputs(c.B, c.T, c.H, c.N, c.dtype, 21 + c.T);
    in.s0 = in.s0.to(at::kFloat);
    if (c.shared_state) in.s0 = in.s0.slice(0, 0, 1);
    // dy reaches the kernel in y's dtype: the reference gets the same rounded dy.
    const at::Tensor weight_y =
        at::randn({c.B, c.T, c.H, c.N}, at::kDouble).to(c.dtype).to(at::kDouble);
    const at::Tensor weight_s = at::randn({c.B, c.H, c.N, c.N}, at::kDouble);
    auto run = [&](at::Device device, at::ScalarType dtype) {
      std::vector<at::Tensor> leaves;
      for (const at::Tensor* t : {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.s0})
        leaves.push_back(
            t->to(device, t == &in.s0 ? (dtype == at::kDouble ? at::kDouble : at::kFloat) : dtype)
                .detach()
                .requires_grad_(true));
      const at::Tensor s0 = leaves[6].expand({c.B, c.H, c.N, c.N});
      auto [y, s] = wkv7(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], s0);
      ((y.to(at::kDouble) * weight_y.to(device)).sum() +
       (s.to(at::kDouble) * weight_s.to(device)).sum())
          .backward();
      std::vector<at::Tensor> out = {y.detach().cpu().to(at::kDouble),
                                     s.detach().cpu().to(at::kDouble)};
      for (const auto& leaf : leaves) out.push_back(leaf.grad().cpu().to(at::kDouble));
      return out;
    };
    const auto want = run(at::kCPU, at::kDouble);
    const auto got = run(at::kCUDA, c.dtype);
    const char* names[] = {"y", "s_final", "dr", "dz", "dk", "dv", "da", "db", "ds0"};
    std::ostringstream where;
    where << " B" << c.B << " T" << c.T << " H" << c.H << " N" << c.N << " " << c.dtype
          << (c.shared_state ? " shared h0" : "");
    for (size_t i = 0; i < want.size(); ++i) {
      const double error = relative_error(got[i], want[i]);
      // The states meet tighter bounds than the outputs, whatever the inputs' dtype: the
      // final state within 2e-4 and dh0 within 1e-6 (the README's claims; the chunked passes
      // split into two TF32 parts every product the carried state depends on).
      const double bound = i == 8 ? 1e-6 : i == 1 ? std::min(c.bound, 2e-4) : c.bound;
      EXPECT_LE(error, bound) << names[i] << where.str();
      std::printf("[ wkv7 cuda ] %-8s %-40s relative error %.2e\n", names[i], where.str().c_str(),
                  error);
    }
    // Run to run, the kernels are deterministic.
    const auto again = run(at::kCUDA, c.dtype);
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_TRUE(at::equal(again[i], got[i])) << names[i] << where.str();
    // Without autograd the forward skips what the backward needs, with the same results.
    at::NoGradGuard no_grad;
    auto device_input = [&](const at::Tensor& t) { return t.to(at::kCUDA, c.dtype); };
    auto [y, s] = wkv7(device_input(in.r), device_input(in.z), device_input(in.k),
                       device_input(in.v), device_input(in.a), device_input(in.b),
                       in.s0.to(at::kCUDA).expand({c.B, c.H, c.N, c.N}));
    EXPECT_TRUE(at::equal(y.cpu().to(at::kDouble), got[0])) << where.str();
    EXPECT_TRUE(at::equal(s.cpu().to(at::kDouble), got[1])) << where.str();
  }
  poison_kernel_outputs_for_testing(false);
}

// One bf16 call on the GPU with a weighted loss on y and the final state (dy optional): y, the
// final state and the gradients of r .. b and s0 (as given, so views stay views).
std::vector<at::Tensor> cuda_outputs_and_gradients(const Inputs& in, bool with_dy, uint64_t seed) {
  std::vector<at::Tensor> leaves;
  for (const at::Tensor* t : {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.s0})
    leaves.push_back(t->detach().requires_grad_(true));
  auto [y, s] = wkv7(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor weight_s = at::normal(0, 1, s.sizes(), g, at::kDouble).to(s.options());
  at::Tensor loss = (s * weight_s).sum();
  if (with_dy) {
    const at::Tensor weight_y = at::normal(0, 1, y.sizes(), g, at::kDouble).to(y.options());
    loss = loss + (y.to(at::kFloat) * weight_y.to(at::kFloat)).sum();
  }
  loss.backward();
  std::vector<at::Tensor> out = {y.detach().cpu(), s.detach().cpu()};
  for (const auto& leaf : leaves) out.push_back(leaf.grad().cpu());
  return out;
}

// GPU machine only: the bf16 chunked recurrences' two forms (two kernels through global memory,
// or fused in shared memory) do the same arithmetic, so every output and gradient must agree
// bit for bit; the two-kernel form is checked against float64 above. Every head size, chunk
// tails, one and many heads, no dy (the state gradient's values are zero) and an initial state.
TEST(Wkv7Cuda, FusedAndTwoKernelFormsAgreeBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t B, T, H, N;
    bool with_dy;
  };
  const Case cases[] = {{2, 37, 3, 64, true},   {1, 1, 2, 16, true},   {3, 100, 2, 32, true},
                        {1, 257, 2, 128, true}, {4, 17, 4, 16, false}, {8, 300, 64, 64, true},
                        {1, 2049, 1, 64, true}};
  poison_kernel_outputs_for_testing(true);
  for (const auto& c : cases) {
    Inputs in = random_inputs(c.B, c.T, c.H, c.N, at::kBFloat16, 5 + c.T);
    for (at::Tensor* t : {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b}) *t = t->to(at::kCUDA);
    in.s0 = in.s0.to(at::kCUDA, at::kFloat);
    std::vector<at::Tensor> forms[2];
    for (int fused = 0; fused < 2; ++fused) {
      use_wkv7_chunked_form(fused ? cuda::Wkv7ChunkedForm::kFused
                                  : cuda::Wkv7ChunkedForm::kTwoKernels);
      forms[fused] = cuda_outputs_and_gradients(in, c.with_dy, 3);
    }
    use_wkv7_chunked_form(cuda::Wkv7ChunkedForm::kByShape);
    const char* names[] = {"y", "s_final", "dr", "dz", "dk", "dv", "da", "db", "ds0"};
    for (size_t i = 0; i < forms[0].size(); ++i) {
      EXPECT_FALSE(forms[1][i].isnan().any().item<bool>())
          << names[i] << " B" << c.B << " T" << c.T;
      EXPECT_TRUE(at::equal(forms[0][i], forms[1][i]))
          << names[i] << " B" << c.B << " T" << c.T << " H" << c.H << " N" << c.N;
    }
  }
  poison_kernel_outputs_for_testing(false);
}

// GPU machine only: the kernels copy rows in 16-byte pieces. Inputs that are contiguous views
// starting one element into their allocation (so not 16-byte aligned) give the same results as
// aligned copies of them, in both chunked forms, instead of a misaligned-address fault.
TEST(Wkv7Cuda, InputsNotAlignedTo16BytesGiveTheAlignedResults) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, T = 40, H = 3, N = 64;
  Inputs aligned = random_inputs(B, T, H, N, at::kBFloat16, 31);
  for (at::Tensor* t : {&aligned.r, &aligned.z, &aligned.k, &aligned.v, &aligned.a, &aligned.b})
    *t = t->to(at::kCUDA);
  aligned.s0 = aligned.s0.to(at::kCUDA, at::kFloat);
  auto shift = [](const at::Tensor& x) {
    at::Tensor storage = at::empty({x.numel() + 1}, x.options());
    at::Tensor view = storage.narrow(0, 1, x.numel()).view(x.sizes());
    view.copy_(x);
    return view;
  };
  const Inputs shifted{shift(aligned.r), shift(aligned.z), shift(aligned.k), shift(aligned.v),
                       shift(aligned.a), shift(aligned.b), aligned.s0};
  ASSERT_NE(reinterpret_cast<uintptr_t>(shifted.v.data_ptr()) % 16, 0u);
  ASSERT_TRUE(shifted.v.is_contiguous());
  for (auto form : {cuda::Wkv7ChunkedForm::kTwoKernels, cuda::Wkv7ChunkedForm::kFused}) {
    use_wkv7_chunked_form(form);
    const auto want = cuda_outputs_and_gradients(aligned, true, 7);
    const auto got = cuda_outputs_and_gradients(shifted, true, 7);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(at::equal(got[i], want[i])) << i;
  }
  use_wkv7_chunked_form(cuda::Wkv7ChunkedForm::kByShape);
}

// A memo filled by a call without gradients and taken by the same call with gradients (the
// recomputation under grad_cp): outputs and every gradient equal a plain call's, bit for bit. A
// taken memo is trusted, not recomputed: fed other values, the call returns the kept outputs
// (which proves the forward was not run again). Other shapes are refused.
void check_kept_forward(at::Device device, at::ScalarType dtype, int64_t N) {
  const Inputs first = random_inputs(2, 37, 2, N, dtype, 11);
  auto leaves = [&](const Inputs& in) {
    Inputs out;
    for (auto [to, from] : {std::pair{&out.r, &in.r},
                            {&out.z, &in.z},
                            {&out.k, &in.k},
                            {&out.v, &in.v},
                            {&out.a, &in.a},
                            {&out.b, &in.b},
                            {&out.s0, &in.s0}})
      *to = from->to(device).detach().requires_grad_(true);
    return out;
  };
  auto run = [&](const Inputs& in, Wkv7Memo* memo) {
    auto [y, s] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0, memo);
    ((y.to(at::kFloat) * y.to(at::kFloat)).sum() + s.sum()).backward();
    std::vector<at::Tensor> out = {y.detach().cpu(), s.detach().cpu()};
    for (const at::Tensor* p : {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.s0})
      out.push_back(p->grad().cpu());
    return out;
  };
  const auto plain = run(leaves(first), nullptr);

  Wkv7Memo memo;
  {
    at::NoGradGuard no_grad;
    const Inputs in = leaves(first);
    auto [y, s] = wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0, &memo);
    ASSERT_TRUE(memo.filled());
    EXPECT_TRUE(at::equal(y.cpu(), plain[0]));
    EXPECT_TRUE(at::equal(s.cpu(), plain[1]));
  }
  const auto kept = run(leaves(first), &memo);
  EXPECT_FALSE(memo.filled());
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::equal(kept[i], plain[i])) << i;

  {
    at::NoGradGuard no_grad;
    const Inputs in = leaves(first);
    wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0, &memo);
  }
  const auto other = run(leaves(random_inputs(2, 37, 2, N, dtype, 12)), &memo);
  EXPECT_TRUE(at::equal(other[0], plain[0]));

  {
    at::NoGradGuard no_grad;
    const Inputs in = leaves(first);
    wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0, &memo);
  }
  EXPECT_TRUE(
      testing::throws_with([&] { run(leaves(random_inputs(2, 36, 2, N, dtype, 13)), &memo); },
                           "wkv7: the kept forward was of [2, 37, 2, " + std::to_string(N) + "]"));
}

TEST(Wkv7Cpu, KeptForwardGivesTheSameOutputsAndGradients) {
  check_kept_forward(at::kCPU, at::kFloat, 8);
}

TEST(Wkv7Cuda, KeptForwardGivesTheSameOutputsAndGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  check_kept_forward(at::kCUDA, at::kBFloat16, 64);
}

TEST(Wkv7Cpu, RejectsMismatchedShapes) {
  Inputs in = random_inputs(1, 4, 2, 4, at::kFloat, 6);
  EXPECT_TRUE(
      testing::throws_with([&] { wkv7(in.r, in.z.slice(1, 0, 3), in.k, in.v, in.a, in.b, in.s0); },
                           "wkv7: all inputs must have shape [1, 4, 2, 4], got [1, 3, 2, 4]"));
  EXPECT_TRUE(
      testing::throws_with([&] { wkv7(in.r, in.z, in.k, in.v, in.a, in.b, in.s0.slice(2, 0, 2)); },
                           "wkv7: s0 must be [B, H, N, N] = [1, 2, 4, 4], got [1, 2, 2, 4]"));
}

}  // namespace
}  // namespace peftkit::kernels

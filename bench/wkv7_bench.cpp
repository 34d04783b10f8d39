// wkv7_bench: WKV7 forward and forward + backward on the GPU, bf16 inputs, with an initial state
// (its gradient computed) and the final state, for the shapes of the GPU milestone's table.
//   wkv7_bench [B T H]...          (default: 8 1024 12, 4 4096 32, 1 16384 32; N = 64)
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "cuda_timer.hpp"
#include "wkv7/wkv7.hpp"

int main(int argc, char** argv) {
  if (!at::hasCUDA()) {
    std::printf("no CUDA device\n");
    return 1;
  }
  const auto shapes =
      peftkit::bench::shapes_from_args(argc, argv, {{8, 1024, 12}, {4, 4096, 32}, {1, 16384, 32}});
  std::printf("| B, T, H (N = 64) | forward ms | forward + backward ms |\n|---|---|---|\n");
  for (const auto& shape : shapes) {
    const int64_t B = shape[0], T = shape[1], H = shape[2], N = 64;
    auto opts = at::TensorOptions().device(at::kCUDA);
    auto input = [&](double lo, double hi) {
      return at::empty({B, T, H, N}, opts).uniform_(lo, hi).to(at::kBFloat16);
    };
    at::Tensor kk = at::empty({B, T, H, N}, opts).uniform_(-1, 1);
    kk = kk / kk.norm(2, {-1}, true);
    const at::Tensor r = input(-1, 1), z = input(-6, 2), k = input(-1, 1), v = input(-1, 1);
    const at::Tensor a = (-kk).to(at::kBFloat16), b = (kk * at::rand_like(kk)).to(at::kBFloat16);
    const at::Tensor h0 = at::randn({H, N, N}, opts).requires_grad_(true);
    const double forward = peftkit::bench::time_ms(
        [&] {
          at::NoGradGuard no_grad;
          peftkit::kernels::wkv7(r, z, k, v, a, b, h0.unsqueeze(0).expand({B, H, N, N}));
        },
        10, 3);
    const at::Tensor dy = at::randn({B, T, H, N}, opts).to(at::kBFloat16);
    const double both = peftkit::bench::time_ms(
        [&] {
          auto [y, s] =
              peftkit::kernels::wkv7(r, z, k, v, a, b, h0.unsqueeze(0).expand({B, H, N, N}));
          at::Tensor grad = torch::autograd::grad({y}, {h0}, {dy})[0];
          (void)s;
        },
        10, 3);
    std::printf("| %lld, %lld, %lld | %.3f | %.3f |\n", static_cast<long long>(B),
                static_cast<long long>(T), static_cast<long long>(H), forward, both);
  }
  return 0;
}

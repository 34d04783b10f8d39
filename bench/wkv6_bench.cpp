// wkv6_bench: WKV6 forward and forward + backward on the GPU, bf16 inputs, with an initial state
// shared by the batch (its gradient computed, as state tuning needs) and the final state, at the
// shapes of issue 18 (RWKV-PEFT's wkv6state kernel is timed at the same ones by
// bench/peer_wkv6state.py).
//   wkv6_bench [B T H]...          (default: 8 1024 32, 4 4096 32, 1 16384 40; N = 64)
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "cuda_timer.hpp"
#include "wkv6/wkv6.hpp"

int main(int argc, char** argv) {
  using peftkit::bench::bf16_uniform;
  return peftkit::bench::run_wkv_bench(
      argc, argv, {{8, 1024, 32}, {4, 4096, 32}, {1, 16384, 40}},
      [](int64_t B, int64_t T, int64_t H) {
        const int64_t N = 64;
        auto opts = at::TensorOptions().device(at::kCUDA);
        const at::Tensor r = bf16_uniform(B, T, H, N, -1, 1), k = bf16_uniform(B, T, H, N, -1, 1),
                         v = bf16_uniform(B, T, H, N, -1, 1), w = bf16_uniform(B, T, H, N, -6, 1);
        const at::Tensor u = at::empty({H, N}, opts).uniform_(-1, 1);
        const at::Tensor h0 = at::randn({H, N, N}, opts).requires_grad_(true);
        auto state = [&] { return h0.unsqueeze(0).expand({B, H, N, N}); };
        const double forward = peftkit::bench::time_ms(
            [&] {
              at::NoGradGuard no_grad;
              peftkit::kernels::wkv6(r, k, v, w, u, state());
            },
            10, 3);
        // Every input's gradient is computed (the kernel has one backward), dh0 returned.
        const at::Tensor dy = at::randn({B, T, H, N}, opts).to(at::kBFloat16);
        const double both = peftkit::bench::time_ms(
            [&] {
              auto [y, s] = peftkit::kernels::wkv6(r, k, v, w, u, state());
              at::Tensor grad = torch::autograd::grad({y}, {h0}, {dy})[0];
              (void)s;
            },
            10, 3);
        return peftkit::bench::WkvTimes{forward, both};
      });
}

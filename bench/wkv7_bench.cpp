// wkv7_bench: WKV7 forward and forward + backward on the GPU, bf16 inputs, with an initial state
// (its gradient computed) and the final state, for the shapes of the GPU milestone's table.
//   wkv7_bench [B T H]...          (default: 8 1024 12, 4 4096 32, 1 16384 32, 8 4096 64; N = 64)
// WKV7_CHUNKED_FORM=two|fused forces that form of the chunked kernels (default: by shape).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cuda_timer.hpp"
#include "wkv7/wkv7.hpp"

int main(int argc, char** argv) {
  using peftkit::bench::bf16_uniform;
  using peftkit::kernels::cuda::Wkv7ChunkedForm;
  if (const char* form = std::getenv("WKV7_CHUNKED_FORM")) {
    const std::string name = form;
    if (name != "two" && name != "fused") {
      std::fprintf(stderr, "WKV7_CHUNKED_FORM: expected two or fused, got '%s'\n", form);
      return 2;
    }
    peftkit::kernels::use_wkv7_chunked_form(name == "two" ? Wkv7ChunkedForm::kTwoKernels
                                                          : Wkv7ChunkedForm::kFused);
  }
  return peftkit::bench::run_wkv_bench(
      argc, argv, {{8, 1024, 12}, {4, 4096, 32}, {1, 16384, 32}, {8, 4096, 64}},
      [](int64_t B, int64_t T, int64_t H) {
        const int64_t N = 64;
        auto opts = at::TensorOptions().device(at::kCUDA);
        at::Tensor kk = at::empty({B, T, H, N}, opts).uniform_(-1, 1);
        kk = kk / kk.norm(2, {-1}, true);
        const at::Tensor r = bf16_uniform(B, T, H, N, -1, 1), z = bf16_uniform(B, T, H, N, -6, 2),
                         k = bf16_uniform(B, T, H, N, -1, 1), v = bf16_uniform(B, T, H, N, -1, 1);
        const at::Tensor a = (-kk).to(at::kBFloat16),
                         b = (kk * at::rand_like(kk)).to(at::kBFloat16);
        const at::Tensor h0 = at::randn({H, N, N}, opts).requires_grad_(true);
        auto state = [&] { return h0.unsqueeze(0).expand({B, H, N, N}); };
        const double forward = peftkit::bench::time_ms(
            [&] {
              at::NoGradGuard no_grad;
              peftkit::kernels::wkv7(r, z, k, v, a, b, state());
            },
            10, 3);
        const at::Tensor dy = at::randn({B, T, H, N}, opts).to(at::kBFloat16);
        const double both = peftkit::bench::time_ms(
            [&] {
              auto [y, s] = peftkit::kernels::wkv7(r, z, k, v, a, b, state());
              at::Tensor grad = torch::autograd::grad({y}, {h0}, {dy})[0];
              (void)s;
            },
            10, 3);
        return peftkit::bench::WkvTimes{forward, both};
      });
}

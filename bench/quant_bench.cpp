// quant_bench: dequantization bandwidth on the GPU against the card's copy bandwidth.
//   quant_bench [OUT IN]...        (default: 4096 4096, 8192 8192, 8192 28672)
// For each weight shape it times, with CUDA events over many repetitions: a bf16 device-to-device
// copy of the dequantized size (bytes read + written), NF4 (blocksize 64) and int8 dequantization
// to bf16 (packed bytes read + bf16 bytes written), and prints one table row each.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "cuda_timer.hpp"
#include "quant/quant.hpp"

int main(int argc, char** argv) {
  using namespace peftkit::kernels;
  if (!at::hasCUDA()) {
    std::printf("no CUDA device\n");
    return 1;
  }
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int i = 1; i + 1 < argc; i += 2)
    shapes.push_back({std::atoll(argv[i]), std::atoll(argv[i + 1])});
  if (shapes.empty()) shapes = {{4096, 4096}, {8192, 8192}, {8192, 28672}};
  std::printf(
      "| weight | copy bf16 GB/s | nf4 dequant ms | nf4 GB/s | nf4 / copy | int8 dequant ms | int8 "
      "GB/s | int8 / copy |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (auto [out, in] : shapes) {
    const at::Tensor w = at::randn({out, in}, at::TensorOptions().device(at::kCUDA)) * 0.02;
    const int64_t numel = out * in;
    at::Tensor source = w.to(at::kBFloat16), target = at::empty_like(source);
    const double copy_ms = peftkit::bench::time_ms([&] { target.copy_(source); }, 50, 5);
    const double copy_gbs = 2.0 * numel * 2 / (copy_ms * 1e6);
    const Packed4bit nf4 = quantize_4bit(w, nf4_codebook(), 64);
    const double nf4_ms =
        peftkit::bench::time_ms([&] { dequantize_4bit(nf4, at::kBFloat16); }, 50, 5);
    const double nf4_gbs =
        (nf4.packed.nbytes() + nf4.absmax.nbytes() + numel * 2.0) / (nf4_ms * 1e6);
    const PackedInt8 int8 = quantize_int8_rows(w);
    const double int8_ms =
        peftkit::bench::time_ms([&] { dequantize_int8_rows(int8, at::kBFloat16); }, 50, 5);
    const double int8_gbs = (int8.q.nbytes() + int8.scale.nbytes() + numel * 2.0) / (int8_ms * 1e6);
    std::printf("| %lld x %lld | %.0f | %.4f | %.0f | %.0f%% | %.4f | %.0f | %.0f%% |\n",
                static_cast<long long>(out), static_cast<long long>(in), copy_gbs, nf4_ms, nf4_gbs,
                100 * nf4_gbs / copy_gbs, int8_ms, int8_gbs, 100 * int8_gbs / copy_gbs);
  }
  return 0;
}

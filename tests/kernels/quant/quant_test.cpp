// The quantized formats against an independent NumPy implementation (bit-exact codes, absmax and
// packing), the dequantization error bounds, and gradients through a dequantize-on-use linear.
#include "quant/quant.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>

#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"

namespace peftkit::kernels {
namespace {

at::Tensor weights(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor w = at::randn(shape, g) * 0.05;
  w.view(-1).narrow(0, 0, std::min<int64_t>(130, w.numel())).zero_();  // whole zero blocks
  w.view(-1)[w.numel() - 1] = 0.3;  // an outlier in the last block
  return w;
}

TEST(QuantFormats, CodesAbsmaxAndPackingEqualAnIndependentReference) {
  testing::TempDir dir;
  TensorMap file;
  auto add_4bit = [&](const std::string& name, const at::Tensor& w, const at::Tensor& codebook,
                      int64_t blocksize) {
    const Packed4bit p = quantize_4bit(w, codebook, blocksize);
    file[name + ".input"] = w;
    file[name + ".packed"] = p.packed;
    file[name + ".absmax"] = p.absmax;
    file[name + ".blocksize"] = at::scalar_tensor(blocksize, at::kLong);
  };
  add_4bit("nf4-odd", weights({37, 53}, 1), nf4_codebook(), 64);  // 1961 elements: odd, tail block
  add_4bit("nf4-wide", weights({64, 256}, 2), nf4_codebook(), 256);
  add_4bit("nf4-small-blocks", weights({8, 96}, 3), nf4_codebook(), 32);
  add_4bit("fp4-odd", weights({37, 53}, 4), fp4_codebook(), 64);
  add_4bit("fp4-wide", weights({64, 256}, 5), fp4_codebook(), 128);
  // Values exactly on codebook entries and midpoints: the tie rule is part of the format.
  const at::Tensor book = nf4_codebook();
  const at::Tensor mids = (book.narrow(0, 0, 15) + book.narrow(0, 1, 15)) / 2.0;
  add_4bit("nf4-ties", at::cat({book, mids, -mids}).view({1, -1}), nf4_codebook(), 64);
  for (auto [name, seed] : {std::pair{"int8-odd", 6}, std::pair{"int8-wide", 7}}) {
    const at::Tensor w =
        weights(seed == 6 ? std::vector<int64_t>{37, 53} : std::vector<int64_t>{64, 256}, seed);
    const PackedInt8 p = quantize_int8_rows(w);
    file[std::string(name) + ".input"] = w;
    file[std::string(name) + ".q"] = p.q;
    file[std::string(name) + ".scale"] = p.scale;
  }
  const at::Tensor absmax =
      quantize_4bit(weights({256, 300}, 8), nf4_codebook(), 64).absmax;  // 1200 blocks
  const PackedAbsmax dq = quantize_absmax(absmax);
  file["dq-absmax.input"] = absmax;
  file["dq-absmax.codes"] = dq.codes;
  file["dq-absmax.absmax2"] = dq.absmax;
  file["dq-absmax.offset"] = at::scalar_tensor(dq.offset, at::kDouble);
  write_safetensors(dir / "cases.safetensors", file, {});
  auto check = testing::run_command(std::string(PEFTKIT_PYTHON) + " " + QUANT_REFERENCE + " " +
                                    (dir / "cases.safetensors").string());
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_NE(check.output.find("ok 9 cases"), std::string::npos) << check.output;
}

TEST(QuantFormats, PackingPutsTheEvenElementInTheHighNibble) {
  // Codes 15, 0, 7, 11, 1 (1.0, -1.0, 0, 0.3379..., -0.696...) in one block with absmax 1.
  const at::Tensor w =
      at::tensor({1.0f, -1.0f, 0.0f, 0.33791524171829224f, -0.6961928009986877f}).view({1, 5});
  const Packed4bit p = quantize_4bit(w, nf4_codebook(), 64);
  ASSERT_EQ(p.packed.numel(), 3);
  EXPECT_EQ(p.packed[0].item<uint8_t>(), 0xF0);
  EXPECT_EQ(p.packed[1].item<uint8_t>(), 0x7B);
  EXPECT_EQ(p.packed[2].item<uint8_t>(), 0x10);  // the odd element's partner nibble is zero
  EXPECT_TRUE(at::equal(dequantize_4bit(p, at::kFloat), w));
}

TEST(QuantFormats, DequantizationErrorsStayWithinTheirBounds) {
  const at::Tensor w = weights({96, 200}, 9);
  // NF4: per block, at most half the largest gap between neighbouring codes, times the absmax.
  const at::Tensor book = nf4_codebook();
  const double half_gap = (book.narrow(0, 1, 15) - book.narrow(0, 0, 15)).max().item<double>() / 2;
  for (int64_t blocksize : {32, 64, 1024}) {
    const Packed4bit p = quantize_4bit(w, book, blocksize);
    const at::Tensor error = (dequantize_4bit(p, at::kFloat) - w).abs().reshape(-1);
    const int64_t blocks = p.absmax.size(0);
    const at::Tensor padded = at::constant_pad_nd(error, {0, blocks * blocksize - error.numel()})
                                  .view({blocks, blocksize});
    EXPECT_TRUE((padded.amax(1) <= p.absmax * half_gap * (1 + 1e-6)).all().item<bool>())
        << "blocksize " << blocksize;
  }
  // int8: at most absmax / 254 per row.
  const PackedInt8 q = quantize_int8_rows(w);
  const at::Tensor row_error = (dequantize_int8_rows(q, at::kFloat) - w).abs().amax(1);
  EXPECT_TRUE((row_error <= q.scale / 254 * (1 + 1e-6)).all().item<bool>());
  // Double quantization: the absmax round trip is close, and the 4-bit result barely moves.
  const Packed4bit p = quantize_4bit(w, book, 64);
  const at::Tensor restored = dequantize_absmax(quantize_absmax(p.absmax));
  EXPECT_LE(((restored - p.absmax).abs() / p.absmax.clamp_min(1e-12))
                .masked_select(p.absmax > 0)
                .max()
                .item<double>(),
            0.02);
  EXPECT_EQ(restored.size(0), p.absmax.size(0));
}

TEST(QuantFormats, GradientsFlowToTheInputThroughTheDequantizedWeight) {
  const at::Tensor w = weights({48, 40}, 10);
  const Packed4bit p = quantize_4bit(w, nf4_codebook(), 64);
  const at::Tensor dense = dequantize_4bit(p, at::kDouble);
  at::Tensor x = at::randn({3, 5, 40}, at::kDouble).requires_grad_(true);
  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  const at::Tensor y =
      linear_dequantized(x, [&](at::ScalarType t) { return dequantize_4bit(p, t); });
  const at::Tensor y2 = at::linear(x2, dense);
  EXPECT_TRUE(at::allclose(y, y2, 1e-12, 1e-12));
  const at::Tensor g = at::randn_like(y);
  (y * g).sum().backward();
  (y2 * g).sum().backward();
  EXPECT_TRUE(at::allclose(x.grad(), x2.grad(), 1e-12, 1e-12));
}

// GPU machine only: the CUDA kernels against the tensor-op path on the CPU, bit for bit, on shapes
// with vector tails, with poisoned outputs to catch unwritten elements.
TEST(QuantFormats, CudaDequantizationEqualsTheCpuReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (auto shape : {std::vector<int64_t>{37, 53}, std::vector<int64_t>{64, 256},
                     std::vector<int64_t>{4096, 1024}, std::vector<int64_t>{3, 5}}) {
    const at::Tensor w = weights(shape, 11);
    for (int64_t blocksize : {32, 64, 4096}) {
      const Packed4bit cpu = quantize_4bit(w, nf4_codebook(), blocksize);
      Packed4bit gpu = cpu;
      gpu.packed = cpu.packed.cuda();
      gpu.absmax = cpu.absmax.cuda();
      gpu.codebook = cpu.codebook.cuda();
      for (auto dtype : {at::kBFloat16, at::kFloat}) {
        // Fill the allocator's next block with NaN first: an element the kernel skips stays NaN.
        at::empty({w.numel()}, at::TensorOptions().dtype(dtype).device(at::kCUDA)).fill_(NAN);
        const at::Tensor want = dequantize_4bit(cpu, dtype);
        const at::Tensor got = dequantize_4bit(gpu, dtype).cpu();
        EXPECT_TRUE(at::equal(got, want))
            << c10::str(shape) << " blocksize " << blocksize << " " << dtype;
      }
      // The GPU quantizer gives the CPU's codes.
      const Packed4bit on_gpu = quantize_4bit(w.cuda(), nf4_codebook(), blocksize);
      EXPECT_TRUE(at::equal(on_gpu.packed.cpu(), cpu.packed))
          << c10::str(shape) << " blocksize " << blocksize;
    }
    const PackedInt8 cpu8 = quantize_int8_rows(w);
    const PackedInt8 gpu8{cpu8.q.cuda(), cpu8.scale.cuda()};
    for (auto dtype : {at::kBFloat16, at::kFloat})
      EXPECT_TRUE(
          at::equal(dequantize_int8_rows(gpu8, dtype).cpu(), dequantize_int8_rows(cpu8, dtype)))
          << c10::str(shape) << " " << dtype;
  }
}

}  // namespace
}  // namespace peftkit::kernels

// nf4: 4-bit blockwise quantization of the frozen base in bitsandbytes' layout (spec formats §2.1,
// §2.2): NF4 (or FP4) codes, two per byte with the even element in the high nibble, an fp32 absmax
// per block of `blocksize` elements, optionally double-quantized (QLoRA: the absmax minus its mean
// in blocks of 256, on the 8-bit dynamic map). The weight is dequantized on use, on the GPU by a
// CUDA kernel, and dequantized again in the backward instead of being kept.
#include <ATen/ATen.h>

#include "peftkit/error.hpp"
#include "peftkit/quantizer.hpp"
#include "quant/quant.hpp"

namespace peftkit::nf4 {
namespace {

using kernels::Packed4bit;
using kernels::PackedAbsmax;

at::Tensor shape_tensor(const std::vector<int64_t>& shape) { return at::tensor(shape, at::kLong); }

class Packed4bitLinear final : public QuantizedLinear {
 public:
  Packed4bitLinear(Packed4bit packed, std::optional<PackedAbsmax> nested, at::ScalarType dtype)
      : packed_(std::move(packed)), nested_(std::move(nested)), dtype_(dtype) {}

  at::Tensor forward(const at::Tensor& x) const override {
    return kernels::linear_dequantized(x, [this](at::ScalarType t) { return dequantize(t); });
  }
  at::Tensor dense_weight() const override { return dequantize(dtype_); }
  int64_t in_features() const override { return packed_.shape[1]; }
  int64_t out_features() const override { return packed_.shape[0]; }

  TensorMap packed() const override {
    TensorMap out{{"packed", packed_.packed},
                  {"codebook", packed_.codebook},
                  {"shape", shape_tensor(packed_.shape)},
                  {"blocksize", at::scalar_tensor(packed_.blocksize, at::kLong)},
                  {"dtype", at::scalar_tensor(static_cast<int64_t>(dtype_), at::kLong)}};
    if (nested_) {
      out["absmax_codes"] = nested_->codes;
      out["absmax_absmax"] = nested_->absmax;
      out["absmax_offset"] = at::scalar_tensor(nested_->offset, at::kDouble);
    } else {
      out["absmax"] = packed_.absmax;
    }
    return out;
  }
  int64_t nbytes() const override {
    int64_t n = 0;
    for (const auto& [name, t] : packed()) n += t.nbytes();
    return n;
  }

 private:
  at::Tensor dequantize(at::ScalarType dtype) const {
    if (!nested_) return kernels::dequantize_4bit(packed_, dtype);
    Packed4bit p = packed_;
    p.absmax = kernels::dequantize_absmax(*nested_);
    return kernels::dequantize_4bit(p, dtype);
  }

  Packed4bit packed_;  // absmax undefined when nested_
  std::optional<PackedAbsmax> nested_;
  at::ScalarType dtype_;
};

class Nf4Quantizer final : public Quantizer {
 public:
  Nf4Quantizer(std::string type, int64_t blocksize, bool double_quant)
      : type_(std::move(type)), blocksize_(blocksize), double_quant_(double_quant) {}

  std::unique_ptr<QuantizedLinear> quantize(const at::Tensor& weight) const override {
    if (weight.dim() != 2)
      throw Error("nf4: expected a 2-D weight, found " + c10::str(weight.sizes()));
    Packed4bit p = kernels::quantize_4bit(
        weight, type_ == "fp4" ? kernels::fp4_codebook() : kernels::nf4_codebook(), blocksize_);
    std::optional<PackedAbsmax> nested;
    if (double_quant_) {
      nested = kernels::quantize_absmax(p.absmax);
      p.absmax = at::Tensor();
    }
    return std::make_unique<Packed4bitLinear>(std::move(p), std::move(nested),
                                              weight.scalar_type());
  }

  // The kernels check the parts with TORCH_CHECK; a bad file is the user's error, named as such.
  std::unique_ptr<QuantizedLinear> load(const TensorMap& packed) const override {
    try {
      return load_checked(packed);
    } catch (const c10::Error& e) {
      throw Error(e.what_without_backtrace());
    }
  }

 private:
  std::unique_ptr<QuantizedLinear> load_checked(const TensorMap& packed) const {
    // Every part is checked against the shape before a kernel reads it (a damaged cache would
    // otherwise be read past its ends).
    auto part = [&](const char* key, at::ScalarType dtype,
                    at::IntArrayRef sizes) -> const at::Tensor& {
      return kernels::packed_part(packed, key, dtype, sizes, "nf4");
    };
    Packed4bit p;
    p.shape = kernels::packed_shape(packed, "nf4");
    const int64_t numel = p.shape[0] * p.shape[1];
    p.blocksize = part("blocksize", at::kLong, {}).item<int64_t>();
    p.codebook = part("codebook", at::kFloat, {16});
    if (p.blocksize != blocksize_ ||
        !at::equal(p.codebook.cpu(),
                   type_ == "fp4" ? kernels::fp4_codebook() : kernels::nf4_codebook()))
      throw Error("nf4: the pre-quantized weight was made with other settings (blocksize " +
                  std::to_string(p.blocksize) + ") than [quant.nf4] (" + type_ + ", blocksize " +
                  std::to_string(blocksize_) + ")");
    p.packed = part("packed", at::kByte, {(numel + 1) / 2});
    const int64_t blocks = (numel + p.blocksize - 1) / p.blocksize;
    std::optional<PackedAbsmax> nested;
    if (packed.count("absmax_codes")) {
      const double offset = part("absmax_offset", at::kDouble, {}).item<double>();
      nested = PackedAbsmax{part("absmax_codes", at::kByte, {blocks}),
                            part("absmax_absmax", at::kFloat, {(blocks + 255) / 256}), offset};
    } else {
      p.absmax = part("absmax", at::kFloat, {blocks});
    }
    if (nested.has_value() != double_quant_)
      throw Error(std::string("nf4: the pre-quantized weight was made with double_quant = ") +
                  (nested ? "true" : "false") + " but [quant.nf4] says otherwise");
    return std::make_unique<Packed4bitLinear>(std::move(p), std::move(nested),
                                              kernels::packed_dtype(packed, "nf4"));
  }

  std::string type_;
  int64_t blocksize_;
  bool double_quant_;
};

class Nf4Plugin final : public QuantizerPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_string("type", "nf4", "code table: nf4 (NormalFloat) or fp4 (bitsandbytes' E2M1)",
                    {"nf4", "fp4"})
        .add_int("blocksize", 64, "elements per absmax block: 32, 64, ..., 4096", 32, 4096)
        .add_bool("double_quant", false,
                  "quantize the absmax too (QLoRA's double quantization, blocks of 256)");
  }
  void validate(const Options& options) const override {
    const int64_t b = options.get_int("blocksize");
    if ((b & (b - 1)) != 0)
      throw options.error("blocksize", "must be a power of two, found " + std::to_string(b));
  }
  std::unique_ptr<Quantizer> create(const Options& o) const override {
    return std::make_unique<Nf4Quantizer>(o.get_string("type"), o.get_int("blocksize"),
                                          o.get_bool("double_quant"));
  }
};

}  // namespace
}  // namespace peftkit::nf4

PEFTKIT_PLUGIN(
    peftkit::nf4::Nf4Plugin, "nf4", "0.1.0",
    "4-bit NF4/FP4 blockwise quantization of the frozen base (bitsandbytes layout, double quant)")

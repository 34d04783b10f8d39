// int8: row-wise absmax int8 quantization of the frozen base (LLM.int8's vector-wise weights,
// spec formats §2.4): scale[r] = max |w_r|, q = round(w * 127 / scale[r]). Optionally the columns
// holding an element of magnitude >= `threshold` stay in bf16 beside it (LLM.int8's outliers).
// The weight is dequantized on use, on the GPU by a CUDA kernel, and again in the backward.
#include <ATen/ATen.h>

#include <algorithm>

#include "peftkit/error.hpp"
#include "peftkit/quantizer.hpp"
#include "quant/quant.hpp"

namespace peftkit::int8 {
namespace {

using kernels::PackedInt8;

class Int8Linear final : public QuantizedLinear {
 public:
  // outlier_columns: int64 [k] (possibly empty); outliers: bf16 [out, k].
  Int8Linear(PackedInt8 packed, at::Tensor outlier_columns, at::Tensor outliers,
             at::ScalarType dtype)
      : packed_(std::move(packed)),
        columns_(std::move(outlier_columns)),
        outliers_(std::move(outliers)),
        dtype_(dtype) {}

  at::Tensor forward(const at::Tensor& x) const override {
    return kernels::linear_dequantized(x, [this](at::ScalarType t) { return dequantize(t); });
  }
  at::Tensor dense_weight() const override { return dequantize(dtype_); }
  int64_t in_features() const override { return packed_.q.size(1); }
  int64_t out_features() const override { return packed_.q.size(0); }
  TensorMap packed() const override {
    return {{"q", packed_.q},
            {"scale", packed_.scale},
            {"outlier_columns", columns_},
            {"outliers", outliers_},
            {"dtype", at::scalar_tensor(static_cast<int64_t>(dtype_), at::kLong)}};
  }
  int64_t nbytes() const override {
    return packed_.q.nbytes() + packed_.scale.nbytes() + columns_.nbytes() + outliers_.nbytes();
  }

 private:
  at::Tensor dequantize(at::ScalarType dtype) const {
    at::Tensor w = kernels::dequantize_int8_rows(packed_, dtype);
    if (columns_.numel() > 0) w.index_copy_(1, columns_, outliers_.to(dtype));
    return w;
  }
  PackedInt8 packed_;
  at::Tensor columns_, outliers_;
  at::ScalarType dtype_;
};

class Int8Quantizer final : public Quantizer {
 public:
  explicit Int8Quantizer(double threshold) : threshold_(threshold) {}

  std::unique_ptr<QuantizedLinear> quantize(const at::Tensor& weight) const override {
    if (weight.dim() != 2)
      throw Error("int8: expected a 2-D weight, found " + c10::str(weight.sizes()));
    at::Tensor w = weight.detach();
    at::Tensor columns = at::empty({0}, w.options().dtype(at::kLong));
    at::Tensor outliers = at::empty({w.size(0), 0}, w.options().dtype(at::kBFloat16));
    if (threshold_ > 0) {
      columns = (w.abs() >= threshold_).any(0).nonzero().view(-1);
      if (columns.numel() > 0) {
        outliers = w.index_select(1, columns).to(at::kBFloat16);
        w = w.index_fill(1, columns,
                         0);  // the int8 part holds zeros there, and its scales ignore them
      }
    }
    return std::make_unique<Int8Linear>(kernels::quantize_int8_rows(w), columns, outliers,
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
    // Every part is checked against q's shape before a kernel reads it.
    auto q_it = packed.find("q");
    if (q_it == packed.end() || q_it->second.dim() != 2)
      throw Error("int8: the pre-quantized weight has no 2-D 'q'");
    const int64_t rows = q_it->second.size(0), columns = q_it->second.size(1);
    auto part = [&](const char* key, at::ScalarType dtype,
                    at::IntArrayRef sizes) -> const at::Tensor& {
      return kernels::packed_part(packed, key, dtype, sizes, "int8");
    };
    const at::Tensor& q = part("q", at::kChar, {rows, columns});
    auto k_it = packed.find("outlier_columns");
    const int64_t k = k_it == packed.end() || k_it->second.dim() != 1 ? -1 : k_it->second.size(0);
    const at::Tensor& outlier_columns =
        part("outlier_columns", at::kLong, {std::max<int64_t>(k, 0)});
    if (outlier_columns.numel() > 0 && (outlier_columns.min().item<int64_t>() < 0 ||
                                        outlier_columns.max().item<int64_t>() >= columns))
      throw Error("int8: the pre-quantized outlier_columns name columns outside [0, " +
                  std::to_string(columns) + ")");
    return std::make_unique<Int8Linear>(
        PackedInt8{q, part("scale", at::kFloat, {rows})}, outlier_columns,
        part("outliers", at::kBFloat16, {rows, outlier_columns.numel()}),
        kernels::packed_dtype(packed, "int8"));
  }

  double threshold_;
};

class Int8Plugin final : public QuantizerPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema().add_float(
        "threshold", 0.0,
        "keep columns with an element of magnitude >= threshold in bf16 (LLM.int8's "
        "outliers, 6.0 in transformers); 0 = off",
        Bound{0});
  }
  std::unique_ptr<Quantizer> create(const Options& o) const override {
    return std::make_unique<Int8Quantizer>(o.get_float("threshold"));
  }
};

}  // namespace
}  // namespace peftkit::int8

PEFTKIT_PLUGIN(
    peftkit::int8::Int8Plugin, "int8", "0.1.0",
    "int8 row-wise absmax quantization of the frozen base (LLM.int8 outlier columns optional)")

#include "quant/quant.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#ifdef PEFTKIT_QUANT_CUDA
#include "cuda_place_of.hpp"
#include "quant/dequant_cuda.hpp"
#endif

namespace peftkit::kernels {
namespace {

at::Tensor table(const std::vector<float>& values) { return at::tensor(values, at::kFloat); }

// A kernel may take the tensor: CUDA, contiguous and aligned for vector loads and stores.
[[maybe_unused]] bool kernel_ready(const at::Tensor& t, size_t alignment) {
  return t.is_cuda() && t.is_contiguous() &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % alignment == 0;
}

[[maybe_unused]] void check(const std::string& status) {
  TORCH_CHECK(status.empty(), "CUDA dequantization failed: ", status);
}

}  // namespace

at::Tensor nf4_codebook() {
  static const at::Tensor codebook =
      table({-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
             -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
             0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
             0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f});
  return codebook;
}

at::Tensor fp4_codebook() {
  static const at::Tensor codebook =
      table({0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f, -0.0f, -0.0625f, -8.0f, -12.0f,
             -4.0f, -6.0f, -2.0f, -3.0f}) /
      12.0;
  return codebook;
}

at::Tensor dynamic_map8() {
  // Seven decades 10^-6 .. 10^0, decade i holding 2^i evenly spaced fraction means on each sign,
  // plus 0 and 1 (bitsandbytes' create_dynamic_map with signed = True, 7 exponent bits).
  static const at::Tensor map = [] {
    std::vector<at::Tensor> parts;
    for (int i = 0; i < 7; ++i) {
      const at::Tensor boundaries = at::linspace(0.1, 1.0, (1 << i) + 1, at::kFloat);
      const at::Tensor means =
          (boundaries.narrow(0, 0, 1 << i) + boundaries.narrow(0, 1, 1 << i)) / 2.0;
      const double decade = std::pow(10.0, -6 + i);
      parts.push_back(means * decade);
      parts.push_back(means * -decade);
    }
    parts.push_back(table({0.0f, 1.0f}));
    return std::get<0>(at::sort(at::cat(parts)));
  }();
  return map;
}

at::Tensor nearest_codes(const at::Tensor& values, const at::Tensor& ascending_codebook) {
  const at::Tensor book = ascending_codebook.to(values.device());
  const int64_t n = book.size(0);
  const at::Tensor midpoints = (book.narrow(0, 0, n - 1) + book.narrow(0, 1, n - 1)) / 2.0;
  // bucketize (right = false) counts the midpoints strictly below the value.
  return at::bucketize(values, midpoints, /*out_int32=*/false, /*right=*/false);
}

Packed4bit quantize_4bit(const at::Tensor& weight, const at::Tensor& codebook, int64_t blocksize) {
  Packed4bit p;
  p.shape = weight.sizes().vec();
  p.blocksize = blocksize;
  p.codebook = codebook.to(weight.device());
  const int64_t numel = weight.numel(), blocks = (numel + blocksize - 1) / blocksize;
  const at::Tensor flat = at::constant_pad_nd(weight.detach().to(at::kFloat).reshape(-1),
                                              {0, blocks * blocksize - numel});
  const at::Tensor grouped = flat.view({blocks, blocksize});
  p.absmax = grouped.abs().amax(1);
  const at::Tensor inverse = at::where(p.absmax > 0, 1.0f / p.absmax, at::zeros_like(p.absmax));
  const at::Tensor normalized = (grouped * inverse.unsqueeze(1)).reshape(-1).narrow(0, 0, numel);
  at::Tensor codes;
  if (at::equal(codebook.cpu(), nf4_codebook())) {
    codes = nearest_codes(normalized, codebook);
  } else {
    // FP4: the sign bit from the value, the magnitude from the nearest of the eight non-negative
    // entries (sorted, then mapped back to their bit patterns).
    const at::Tensor magnitudes = codebook.cpu().narrow(0, 0, 8);
    auto [sorted, order] = at::sort(magnitudes);
    const at::Tensor pattern =
        order.to(weight.device()).index_select(0, nearest_codes(normalized.abs(), sorted));
    codes = pattern + (normalized < 0).to(at::kLong) * 8;
  }
  const at::Tensor even = at::constant_pad_nd(codes, {0, numel % 2}).view({-1, 2});
  p.packed = (even.select(1, 0) * 16 + even.select(1, 1)).to(at::kByte);
  return p;
}

at::Tensor dequantize_4bit(const Packed4bit& p, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : p.shape) numel *= d;
#ifdef PEFTKIT_QUANT_CUDA
  if ((dtype == at::kBFloat16 || dtype == at::kFloat) && p.blocksize % 8 == 0 &&
      kernel_ready(p.packed, 4) && kernel_ready(p.absmax, 4) && kernel_ready(p.codebook, 4)) {
    at::Tensor out = at::empty(p.shape, p.packed.options().dtype(dtype));
    check(cuda::dequantize_4bit(
        cuda::place_of(p.packed), p.packed.data_ptr<uint8_t>(), p.absmax.data_ptr<float>(),
        p.codebook.data_ptr<float>(), numel, p.blocksize, out.data_ptr(),
        dtype == at::kBFloat16 ? cuda::OutputType::kBFloat16 : cuda::OutputType::kFloat32));
    return out;
  }
#endif
  const at::Tensor codes = at::stack({p.packed.__rshift__(4), p.packed.bitwise_and(15)}, 1)
                               .reshape(-1)
                               .narrow(0, 0, numel);
  const int64_t blocks = p.absmax.size(0);
  const at::Tensor values = at::constant_pad_nd(p.codebook.index_select(0, codes.to(at::kLong)),
                                                {0, blocks * p.blocksize - numel});
  return (values.view({blocks, p.blocksize}) * p.absmax.unsqueeze(1))
      .reshape(-1)
      .narrow(0, 0, numel)
      .view(p.shape)
      .to(dtype);
}

PackedAbsmax quantize_absmax(const at::Tensor& absmax) {
  constexpr int64_t kBlock = 256;
  PackedAbsmax p;
  p.offset = absmax.mean().item<double>();
  const int64_t n = absmax.size(0), blocks = (n + kBlock - 1) / kBlock;
  const at::Tensor centred =
      at::constant_pad_nd(absmax - static_cast<float>(p.offset), {0, blocks * kBlock - n})
          .view({blocks, kBlock});
  p.absmax = centred.abs().amax(1);
  const at::Tensor inverse = at::where(p.absmax > 0, 1.0f / p.absmax, at::zeros_like(p.absmax));
  const at::Tensor normalized = (centred * inverse.unsqueeze(1)).reshape(-1).narrow(0, 0, n);
  p.codes = nearest_codes(normalized, dynamic_map8()).to(at::kByte);
  return p;
}

at::Tensor dequantize_absmax(const PackedAbsmax& p) {
  constexpr int64_t kBlock = 256;
  const int64_t n = p.codes.size(0);
  const at::Tensor values =
      dynamic_map8().to(p.codes.device()).index_select(0, p.codes.to(at::kLong));
  const at::Tensor scales = p.absmax.repeat_interleave(kBlock).narrow(0, 0, n);
  return values * scales + static_cast<float>(p.offset);
}

PackedInt8 quantize_int8_rows(const at::Tensor& weight) {
  PackedInt8 p;
  const at::Tensor w = weight.detach().to(at::kFloat);
  p.scale = w.abs().amax(1);
  const at::Tensor factor = at::where(p.scale > 0, 127.0f / p.scale, at::zeros_like(p.scale));
  p.q = at::round(w * factor.unsqueeze(1)).clamp(-127, 127).to(at::kChar);
  return p;
}

at::Tensor dequantize_int8_rows(const PackedInt8& p, at::ScalarType dtype) {
#ifdef PEFTKIT_QUANT_CUDA
  if ((dtype == at::kBFloat16 || dtype == at::kFloat) && kernel_ready(p.q, 8) &&
      kernel_ready(p.scale, 4)) {
    at::Tensor out = at::empty(p.q.sizes(), p.q.options().dtype(dtype));
    check(cuda::dequantize_int8_rows(
        cuda::place_of(p.q), p.q.data_ptr<int8_t>(), p.scale.data_ptr<float>(), p.q.size(0),
        p.q.size(1), out.data_ptr(),
        dtype == at::kBFloat16 ? cuda::OutputType::kBFloat16 : cuda::OutputType::kFloat32));
    return out;
  }
#endif
  return (p.q.to(at::kFloat) * (p.scale * (1.0f / 127.0f)).unsqueeze(1)).to(dtype);
}

namespace {

// The dequantizer travels in the autograd context (a capsule), so the graph keeps what it needs.
struct DequantizeHolder : torch::CustomClassHolder {
  explicit DequantizeHolder(std::function<at::Tensor(at::ScalarType)> f)
      : dequantize(std::move(f)) {}
  std::function<at::Tensor(at::ScalarType)> dequantize;
};

class LinearDequantized : public torch::autograd::Function<LinearDequantized> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<DequantizeHolder> holder) {
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    at::Tensor y = at::linear(x, holder->dequantize(x.scalar_type()));
    ctx->saved_data["dequantize"] = c10::IValue::make_capsule(std::move(holder));
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto holder = c10::static_intrusive_pointer_cast<DequantizeHolder>(
        ctx->saved_data["dequantize"].toCapsule());
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {at::matmul(grads[0].to(dtype), holder->dequantize(dtype)), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_dequantized(const at::Tensor& x,
                              std::function<at::Tensor(at::ScalarType)> dequantize) {
  if (!x.requires_grad()) return at::linear(x, dequantize(x.scalar_type()));
  return LinearDequantized::apply(x, c10::make_intrusive<DequantizeHolder>(std::move(dequantize)));
}

const at::Tensor& packed_part(const std::map<std::string, at::Tensor>& packed,
                              const std::string& key, at::ScalarType dtype, at::IntArrayRef sizes,
                              const std::string& format) {
  auto it = packed.find(key);
  TORCH_CHECK_VALUE(it != packed.end(), format, ": the pre-quantized weight has no '", key, "'");
  const at::Tensor& t = it->second;
  TORCH_CHECK_VALUE(t.scalar_type() == dtype && t.sizes() == sizes, format, ": the pre-quantized '",
                    key, "' is ", c10::toString(t.scalar_type()), " ", t.sizes(),
                    "; its other parts need ", c10::toString(dtype), " ", sizes,
                    " (a damaged or foreign cache file)");
  return t;
}

std::vector<int64_t> packed_shape(const std::map<std::string, at::Tensor>& packed,
                                  const std::string& format) {
  const at::Tensor t = packed_part(packed, "shape", at::kLong, {2}, format).contiguous();
  const int64_t rows = t[0].item<int64_t>(), columns = t[1].item<int64_t>();
  int64_t numel = 0;
  TORCH_CHECK_VALUE(rows > 0 && columns > 0 && !__builtin_mul_overflow(rows, columns, &numel),
                    format, ": the pre-quantized shape [", rows, ", ", columns,
                    "] is not a weight's shape");
  return {rows, columns};
}

at::ScalarType packed_dtype(const std::map<std::string, at::Tensor>& packed,
                            const std::string& format) {
  const int64_t code = packed_part(packed, "dtype", at::kLong, {}, format).item<int64_t>();
  for (at::ScalarType t : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble})
    if (code == static_cast<int64_t>(t)) return t;
  TORCH_CHECK_VALUE(false, format, ": the pre-quantized dtype code ", code,
                    " names no floating-point dtype a weight can have");
}

}  // namespace peftkit::kernels

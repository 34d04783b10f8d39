// quant.hpp: the blockwise 4-bit (NF4, FP4) and row-wise int8 formats of the quantizer plugins,
// their quantization and dequantization (CUDA kernels on the GPU, tensor ops elsewhere), and a
// linear layer that dequantizes its weight on use instead of keeping a dense copy (spec formats
// §2).
//
//   Packed4bit p = quantize_4bit(w, nf4_codebook(), 64);
//   at::Tensor w2 = dequantize_4bit(p, at::kBFloat16);     // |w2 - w| <= half the codebook gap *
//   absmax at::Tensor y = linear_dequantized(x, [&](at::ScalarType t) { return dequantize_4bit(p,
//   t); });
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace peftkit::kernels {

// The 16 NF4 values (bitsandbytes' table, ascending; index = code).
at::Tensor nf4_codebook();
// bitsandbytes' FP4 (E2M1) table by bit pattern: bit 3 is the sign.
at::Tensor fp4_codebook();
// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)): 256 ascending values.
at::Tensor dynamic_map8();

// Codes of `values` (fp32): the index of the nearest entry of an ascending codebook; a value
// exactly between two entries takes the lower one (bitsandbytes' decision trees compare with '>').
at::Tensor nearest_codes(const at::Tensor& values, const at::Tensor& ascending_codebook);

struct Packed4bit {
  at::Tensor packed;    // uint8 [(numel + 1) / 2]: element 2j in the high nibble of byte j
  at::Tensor absmax;    // fp32 [ceil(numel / blocksize)] (the dequantized absmax with double quant)
  at::Tensor codebook;  // fp32 [16], indexed by code
  std::vector<int64_t> shape;
  int64_t blocksize = 64;
};

// Blockwise over the row-major flattened tensor: absmax = max |x| of each block of `blocksize`
// elements (fp32), code = the codebook entry nearest to x * (1 / absmax); a zero block gives zero
// codes' value. `codebook` is nf4_codebook() or fp4_codebook().
Packed4bit quantize_4bit(const at::Tensor& weight, const at::Tensor& codebook, int64_t blocksize);
at::Tensor dequantize_4bit(const Packed4bit& p, at::ScalarType dtype);

// Double quantization of the absmax (QLoRA): offset = mean, then blocks of 256 quantized to the
// 8-bit dynamic map with their own fp32 absmax.
struct PackedAbsmax {
  at::Tensor codes;   // uint8 [n]
  at::Tensor absmax;  // fp32 [ceil(n / 256)]
  double offset = 0;
};
PackedAbsmax quantize_absmax(const at::Tensor& absmax);
at::Tensor dequantize_absmax(const PackedAbsmax& p);

// Row-wise absmax int8 (LLM.int8's vector-wise weights): scale[r] = max |w_r|,
// q = round(w * (127 / scale[r])) with ties to even.
struct PackedInt8 {
  at::Tensor q;      // int8 [out, in]
  at::Tensor scale;  // fp32 [out]
};
PackedInt8 quantize_int8_rows(const at::Tensor& weight);
at::Tensor dequantize_int8_rows(const PackedInt8& p, at::ScalarType dtype);

// Checks on the parts of a pre-quantized weight read back from a file (the cache a run writes, or
// a hostile copy of it): every size is checked against the others before a kernel reads them.
// `format` names the quantizer in messages; each throws c10::ValueError (TORCH_CHECK_VALUE) naming
// the part, which the quantizer plugins report as peftkit::Error.
const at::Tensor& packed_part(const std::map<std::string, at::Tensor>& packed,
                              const std::string& key, at::ScalarType dtype, at::IntArrayRef sizes,
                              const std::string& format);
// The [out, in] shape stored as an int64 tensor of 2 positive entries.
std::vector<int64_t> packed_shape(const std::map<std::string, at::Tensor>& packed,
                                  const std::string& format);
// A stored dtype code (int64 scalar) that must name fp32, fp16, bf16 or fp64.
at::ScalarType packed_dtype(const std::map<std::string, at::Tensor>& packed,
                            const std::string& format);

// y = x Wᵀ with W = dequantize(x's dtype), dequantized again in the backward rather than saved,
// so a layer holds only its packed weight between forward and backward. Gradient for x only.
at::Tensor linear_dequantized(const at::Tensor& x,
                              std::function<at::Tensor(at::ScalarType)> dequantize);

}  // namespace peftkit::kernels

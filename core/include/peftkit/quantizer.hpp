// quantizer.hpp: the interface of quantizer plugins (int8, nf4, third-party).
//
// A quantizer replaces the frozen dense weight of a linear site by a packed one. The packed weight
// is itself a FrozenLinear, so PEFT methods adapt a quantized base exactly like a dense one.
//
//   class Nf4Plugin final : public peftkit::QuantizerPlugin {
//     peftkit::OptionSchema options() const override {
//       return peftkit::OptionSchema().add_int("blocksize", 64, "elements per absmax block", 32,
//       4096);
//     }
//     std::unique_ptr<peftkit::Quantizer> create(const peftkit::Options& o) const override;
//   };
//   PEFTKIT_PLUGIN(Nf4Plugin, "nf4", "1.0.0", "4-bit NormalFloat, bitsandbytes layout")
#pragma once

#include <cstdint>
#include <memory>

#include "peftkit/model.hpp"
#include "peftkit/options.hpp"
#include "peftkit/plugin.hpp"

namespace peftkit {

class QuantizedLinear : public FrozenLinear {
 public:
  // The packed tensors and statistics, for saving a pre-quantized base; load() restores them.
  virtual TensorMap packed() const = 0;
  // Bytes held by the packed weight and its statistics.
  virtual int64_t nbytes() const = 0;
};

class Quantizer {
 public:
  virtual ~Quantizer();
  // weight [out, in] in any floating dtype, on the device the layer will run on.
  virtual std::unique_ptr<QuantizedLinear> quantize(const at::Tensor& weight) const = 0;
  virtual std::unique_ptr<QuantizedLinear> load(const TensorMap& packed) const = 0;
};

class QuantizerPlugin : public Plugin {
 public:
  static constexpr PluginKind kKind = PluginKind::kQuantizer;
  virtual std::unique_ptr<Quantizer> create(const Options& options) const = 0;
};

}  // namespace peftkit

// The pre-quantized base ([quant] cache_file): a safetensors file whose packed parts one quantizer
// plugin (its source linked in; FUZZ_FORMAT names it) loads; the loaded weight is dequantized, so
// any part inconsistent with the others would be read past its end.
#include <ATen/ATen.h>

#include "fuzz_input.hpp"
#include "host/recipe.hpp"
#include "peftkit/quantizer.hpp"
#include "peftkit/tensor_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto quantizer = [] {
    const auto& plugin = peftkit::fuzz::linked_plugin<peftkit::QuantizerPlugin>();
    return plugin.create(peftkit::host::default_options(plugin.options(), "quant." FUZZ_FORMAT));
  }();
  const auto path = peftkit::fuzz::write_input("cache.safetensors", data, size);
  return peftkit::fuzz::expect_ok_or_error([&] {
    const auto loaded = quantizer->load(peftkit::read_safetensors(path).tensors);
    (void)loaded->dense_weight();
  });
}

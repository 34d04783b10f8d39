// safetensors: the header (strict JSON, duplicate keys, nesting), shapes, offsets and tiling.
#include <ATen/ATen.h>

#include "fuzz_input.hpp"
#include "peftkit/tensor_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = peftkit::fuzz::write_input("input.safetensors", data, size);
  return peftkit::fuzz::expect_ok_or_error([&] {
    for (const auto& [name, tensor] : peftkit::read_safetensors(path).tensors)
      (void)tensor.contiguous();
  });
}

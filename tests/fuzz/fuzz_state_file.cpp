// State files (RWKV-PEFT's blocks.{i}.att.time_state layout) read against a small model's
// geometry, in .pth or safetensors, as `generate --state` does.
#include <ATen/ATen.h>

#include "fuzz_input.hpp"
#include "model/config.hpp"
#include "model/state_file.hpp"
#include "peftkit/tensor_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const peftkit::model::ModelConfig config = [] {
    peftkit::model::ModelConfig c;
    c.n_layer = 2;
    c.n_embd = 64;
    c.head_size = 32;
    c.n_head = 2;
    return c;
  }();
  const auto path = peftkit::fuzz::write_input("state.pth", data, size);
  return peftkit::fuzz::expect_ok_or_error([&] {
    for (const auto& state : peftkit::model::read_state_file(path, config))
      (void)state.contiguous();
  });
}

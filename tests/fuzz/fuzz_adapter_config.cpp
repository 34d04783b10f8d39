// HF PEFT adapter folders: adapter_config.json (the input) beside a small valid
// adapter_model.safetensors, read as `--adapter FOLDER` reads it (no PEFT plugin is installed, so
// a config that passes every check is refused when its plugin is asked for).
#include <ATen/ATen.h>

#include "fuzz_input.hpp"
#include "host/adapters.hpp"
#include "host/plugin_registry.hpp"
#include "peftkit/tensor_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto registry = peftkit::host::PluginRegistry::discover({});
  static const std::filesystem::path folder = [] {
    auto dir = peftkit::fuzz::scratch_dir() / "adapter";
    std::filesystem::create_directories(dir);
    peftkit::write_safetensors(
        dir / "adapter_model.safetensors",
        {{"base_model.model.blocks.0.att.key.lora_A.weight", at::zeros({2, 4})},
         {"base_model.model.blocks.0.att.key.lora_B.weight", at::zeros({4, 2})}});
    return dir;
  }();
  peftkit::fuzz::write_input("adapter/adapter_config.json", data, size);
  return peftkit::fuzz::expect_ok_or_error(
      [&] { peftkit::host::read_adapter(folder, std::nullopt, {}, registry); });
}

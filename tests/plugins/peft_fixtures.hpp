// Shared by the PEFT-plugin tests: the built plugins, a small perturbed RWKV-7 model, methods made
// with chosen settings, and a short `peftkit train` run through a recipe.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "model/rwkv_model.hpp"
#include "model_fixtures.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit::testing {

// The architecture the plugin battery runs on: x070, or x060 when PEFTKIT_TEST_ARCH=x060 (CTest
// runs every plugin test once for each, see tests/plugins/CMakeLists.txt).
inline model::Architecture test_architecture() {
  const char* arch = std::getenv("PEFTKIT_TEST_ARCH");
  return arch ? model::parse_architecture(arch) : model::Architecture::kX070;
}

// L 2, C 64 (H 4, N 16), vocab 300; ffn 256 (x070) or 224 (x060).
inline const model::ModelConfig& small_config() {
  static const model::ModelConfig c =
      model::ModelConfig::for_size(test_architecture(), 2, 64, 300, 16);
  return c;
}

// Linear sites of the small model: 2 layers x 6 (x070) or x 8 (x060: att.gate, ffn.receptance).
inline int64_t small_linear_sites() {
  return small_config().n_layer * static_cast<int64_t>(small_config().block_linear_names().size());
}

// Every tensor perturbed: a fresh model's zero matrices would hide bugs. RWKV-6's zero-initialised
// att.output, ffn.receptance and ffn.value would still be ~1e-3 after that, leaving the initial
// state and most adapters without reach into the logits, so they are drawn as trained ones are.
inline TensorMap small_model_weights() {
  TensorMap weights = perturbed_model(small_config(), 3);
  if (small_config().arch == model::Architecture::kX060) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(4);
    for (auto& [name, t] : weights)
      if (name.ends_with("att.output.weight") || name.ends_with("ffn.receptance.weight") ||
          name.ends_with("ffn.value.weight"))
        t = at::normal(0, 1.0 / std::sqrt(static_cast<double>(t.size(1))), t.sizes(), generator);
  }
  return weights;
}

inline double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / want.norm().item<double>();
}

inline const host::PluginRegistry& plugins() {
  static const host::PluginRegistry registry = host::PluginRegistry::discover({PLUGIN_DIR});
  return registry;
}

// The method with its defaults, then `settings`.
inline std::shared_ptr<PeftMethod> make_method(
    const std::string& name,
    const std::vector<std::pair<std::string, OptionValue>>& settings = {}) {
  auto plugin = plugins().get<PeftPlugin>(name);
  Options options = host::default_options(plugin->options(), "peft." + name);
  for (const auto& [key, value] : settings) options.set(key, value, OptionSource::kRecipe);
  plugin->validate(options);
  return host::keep_loaded(plugin->create(options), plugin);
}

// Trainable tensors set to N(0, std): a trained-looking adapter.
inline void randomise(PeftMethod& method, uint64_t seed, double std = 0.2) {
  at::NoGradGuard no_grad;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& t : method.trainable_tensors()) t.tensor.normal_(0, std, g);
}

inline int64_t trainable_count(PeftMethod& method) {
  int64_t count = 0;
  for (const auto& t : method.trainable_tensors()) count += t.tensor.numel();
  return count;
}

struct TrainRun {
  CommandResult command;
  std::vector<double> losses;
};

// Trains the small model for 10 steps (fp32) with `peft_tables` (TOML for [peft] and its tables)
// in `dir`; the outputs land in dir/out.
inline TrainRun train_small_model(const std::filesystem::path& dir, const std::string& peft_tables,
                                  double lr_init = 1e-2) {
  write_pth(dir / "model.pth", small_model_weights());
  TrainRun run;
  run.command = write_token_stream(PEFTKIT_PYTHON, dir / "tokens.npy");
  if (run.command.exit_code != 0) return run;
  const auto recipe = write_file(
      dir / "recipe.toml",
      "[model]\npath = \"model.pth\"\n[data]\nformat = \"numpy\"\npath = \"tokens.npy\"\n" +
          peft_tables +
          "\n[train]\nctx_len = 16\nmicro_bsz = 2\nepoch_steps = 10\nepoch_count = 1\n" +
          "lr_init = " + std::to_string(lr_init) + "\nlr_final = " + std::to_string(lr_init / 10) +
          "\nprecision = \"fp32\"\ngrad_cp = true\n[output]\ndir = \"out\"\n");
  run.command =
      run_command(peftkit_command("train " + recipe.string() + " --plugin-dir " PLUGIN_DIR));
  if (run.command.exit_code == 0)
    for (const auto& line : read_metrics(dir / "out" / "metrics.jsonl"))
      run.losses.push_back(line["loss"].get<double>());
  return run;
}

}  // namespace peftkit::testing

// peftkit generate: text from a model in RNN mode, streaming tokens as they come. Also the model
// and sampling options that `peftkit chat` and `peftkit eval` share with it.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <iostream>

#include "cli/command.hpp"
#include "generate/generation.hpp"
#include "host/device.hpp"
#include "host/loaded_model.hpp"
#include "host/plugin_registry.hpp"
#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::cli {

void add_model_options(po::options_description& options, const char* default_dtype) {
  options.add_options()("model", po::value<std::string>()->required(),
                        "RWKV-7 or RWKV-6 model (.pth or .safetensors)")(
      "dtype", po::value<std::string>()->default_value(default_dtype),
      "fp32 or bf16 weights and activations")("device",
                                              po::value<std::string>()->default_value("auto"),
                                              "auto (CUDA when present), cpu, cuda or cuda:N");
  add_adapter_options(options);
}

model::ModelOptions model_options_from(const po::variables_map& vm) {
  const std::string dtype_text = vm["dtype"].as<std::string>();
  if (dtype_text != "fp32" && dtype_text != "bf16")
    throw Error("--dtype: expected fp32 or bf16, found '" + dtype_text + "'");
  at::Device device = at::kCPU;
  try {
    device = host::resolve_device(vm["device"].as<std::string>());
  } catch (const Error& e) {
    throw Error(std::string("--device: ") + e.what());
  }
  return model::ModelOptions{dtype_text == "bf16" ? at::kBFloat16 : at::kFloat, device};
}

host::LoadedModel load_model_from(const po::variables_map& vm,
                                  const host::PluginRegistry& plugins) {
  return host::load_model(vm["model"].as<std::string>(), adapters_from(vm, plugins), plugins,
                          model_options_from(vm));
}

void add_sampling_options(po::options_description& options, int64_t max_tokens,
                          bool stop_at_blank_line) {
  options.add_options()("max-tokens", po::value<int64_t>()->default_value(max_tokens),
                        "tokens to generate at most")(
      "temperature", po::value<double>()->default_value(1.0), "sampling temperature (0: greedy)")(
      "top-p", po::value<double>()->default_value(0.7), "nucleus sampling threshold in (0, 1]")(
      "top-k", po::value<int64_t>()->default_value(100), "keep the k most likely tokens (0: off)")(
      "presence-penalty", po::value<double>()->default_value(0.25),
      "subtracted from a token's logit once it occurred")(
      "frequency-penalty", po::value<double>()->default_value(0.25), "subtracted per occurrence")(
      "penalty-decay", po::value<double>()->default_value(0.996),
      "decay of occurrence counts per token")("stop-at-eos", po::value<bool>()->default_value(true),
                                              "stop when the end-of-text token 0 is drawn "
                                              "(false: ban token 0)")(
      "stop-at-blank-line", po::value<bool>()->default_value(stop_at_blank_line),
      "stop after the text \"\\n\\n\"")("seed", po::value<uint64_t>()->default_value(0),
                                        "sampling seed");
}

generate::GenerationSettings generation_settings_from(const po::variables_map& vm) {
  generate::GenerationSettings settings;
  settings.sampling.temperature = vm["temperature"].as<double>();
  settings.sampling.top_p = vm["top-p"].as<double>();
  settings.sampling.top_k = vm["top-k"].as<int64_t>();
  settings.sampling.presence_penalty = vm["presence-penalty"].as<double>();
  settings.sampling.frequency_penalty = vm["frequency-penalty"].as<double>();
  settings.sampling.penalty_decay = vm["penalty-decay"].as<double>();
  settings.seed = vm["seed"].as<uint64_t>();
  settings.max_tokens = vm["max-tokens"].as<int64_t>();
  if (settings.max_tokens < 0)
    throw Error("--max-tokens: expected a count >= 0, found " +
                std::to_string(settings.max_tokens));
  settings.stop_at_eos = vm["stop-at-eos"].as<bool>();
  settings.stop_at_blank_line = vm["stop-at-blank-line"].as<bool>();
  return settings;
}

Command generate_command() {
  Command command;
  command.name = "generate";
  command.takes_adapters = true;
  command.usage =
      "peftkit generate --model FILE [--adapter PATH | --lora PATH | --state FILE]... "
      "(--prompt TEXT | --prompt-file FILE) [options]";
  command.summary =
      "generate text from a prompt in RNN mode, optionally with adapters or a state mounted";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("prompt", po::value<std::string>(), "the text to continue")(
        "prompt-file", po::value<std::string>(),
        "or: the text to continue, read from this file as it is (bytes)");
    add_model_options(options, "fp32");
    add_sampling_options(options, 200, false);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const generate::GenerationSettings settings = generation_settings_from(vm);
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    host::LoadedModel loaded = load_model_from(vm, registry);
    auto tokenizer = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
    if (vm.count("prompt") == vm.count("prompt-file"))
      throw Error("give the text to continue as --prompt TEXT or --prompt-file FILE (one of them)");
    const std::string text =
        vm.count("prompt")
            ? vm["prompt"].as<std::string>()
            : io::read_small_file(vm["prompt-file"].as<std::string>(), 64 << 20, "--prompt-file");
    const std::vector<int32_t> prompt = tokenizer->encode(text);
    if (prompt.empty()) throw Error("--prompt: the prompt is empty");
    model::ModelState state = loaded.model->initial_state(1);
    try {
      generate::continue_text(*loaded.model, *tokenizer, state, prompt, settings,
                              [](const std::string& piece) { std::cout << piece << std::flush; });
    } catch (const Error& e) {
      throw Error(std::string("--prompt: ") + e.what());
    }
    std::cout << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

// peftkit generate: text from a model in RNN mode, streaming tokens as they come.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <iostream>

#include "cli/command.hpp"
#include "generate/sampler.hpp"
#include "host/device.hpp"
#include "model/rwkv7_model.hpp"
#include "host/plugin_registry.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::cli {
namespace {

// Length of the longest prefix of `bytes` that is complete UTF-8 (a character may be split
// across tokens, so the rest waits for the next token).
size_t complete_utf8_prefix(const std::string& bytes) {
  size_t i = 0, complete = 0;
  while (i < bytes.size()) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t length = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + length > bytes.size()) break;
    i += length;
    complete = i;
  }
  return complete;
}

}  // namespace

Command generate_command() {
  Command command;
  command.name = "generate";
  command.usage = "peftkit generate --model FILE [--adapter PATH | --lora PATH | --state FILE]... --prompt TEXT [options]";
  command.summary = "generate text from a prompt in RNN mode, optionally with adapters or a state mounted";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("model", po::value<std::string>()->required(), "RWKV-7 model (.pth or .safetensors)")(
        "prompt", po::value<std::string>()->required(), "the text to continue")(
        "max-tokens", po::value<int64_t>()->default_value(200), "tokens to generate at most")(
        "temperature", po::value<double>()->default_value(1.0), "sampling temperature (0: greedy)")(
        "top-p", po::value<double>()->default_value(0.7), "nucleus sampling threshold in (0, 1]")(
        "top-k", po::value<int64_t>()->default_value(100), "keep the k most likely tokens (0: off)")(
        "presence-penalty", po::value<double>()->default_value(0.25), "subtracted from a token's logit once it occurred")(
        "frequency-penalty", po::value<double>()->default_value(0.25), "subtracted per occurrence")(
        "penalty-decay", po::value<double>()->default_value(0.996), "decay of occurrence counts per token")(
        "stop-at-eos", po::value<bool>()->default_value(true), "stop when the end-of-text token 0 is drawn "
                                                                "(false: ban token 0)")(
        "stop-at-blank-line", po::value<bool>()->default_value(false), "stop after the text \"\\n\\n\"")(
        "seed", po::value<uint64_t>()->default_value(0), "sampling seed")(
        "dtype", po::value<std::string>()->default_value("fp32"), "fp32 or bf16 weights")(
        "device", po::value<std::string>()->default_value("auto"), "auto (CUDA when present), cpu, cuda or cuda:N");
    add_adapter_options(options);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    at::NoGradGuard no_grad;
    const std::string dtype_text = vm["dtype"].as<std::string>();
    if (dtype_text != "fp32" && dtype_text != "bf16")
      throw Error("--dtype: expected fp32 or bf16, found '" + dtype_text + "'");
    at::Device device = at::kCPU;
    try {
      device = host::resolve_device(vm["device"].as<std::string>());
    } catch (const Error& e) {
      throw Error(std::string("--device: ") + e.what());
    }
    const auto registry = host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const std::vector<host::SavedAdapter> adapters = adapters_from(vm, registry);
    const std::string model_path = vm["model"].as<std::string>();
    TensorMap weights = read_tensor_file(model_path).tensors;
    for (const auto& a : adapters) host::overlay_trained_weights(a, weights);
    auto model = std::make_unique<Rwkv7Model>(
        weights, ModelOptions{dtype_text == "bf16" ? at::kBFloat16 : at::kFloat, device}, model_path);
    const std::set<std::string> base_names = host::tensor_names(weights);
    weights.clear();
    std::vector<std::shared_ptr<PeftMethod>> methods;
    for (const auto& a : adapters)
      for (auto& m : host::mount(a, *model, registry, base_names)) methods.push_back(m);
    auto tokenizer = WorldTokenizer::load(find_world_vocab());
    SamplerSettings settings;
    settings.temperature = vm["temperature"].as<double>();
    settings.top_p = vm["top-p"].as<double>();
    settings.top_k = vm["top-k"].as<int64_t>();
    settings.presence_penalty = vm["presence-penalty"].as<double>();
    settings.frequency_penalty = vm["frequency-penalty"].as<double>();
    settings.penalty_decay = vm["penalty-decay"].as<double>();
    Sampler sampler(settings, vm["seed"].as<uint64_t>());
    const bool stop_at_eos = vm["stop-at-eos"].as<bool>();
    const bool stop_at_blank_line = vm["stop-at-blank-line"].as<bool>();

    const std::vector<int32_t> prompt = tokenizer->encode(vm["prompt"].as<std::string>());
    if (prompt.empty()) throw Error("--prompt: the prompt is empty");
    for (int32_t id : prompt)
      if (id >= model->config().vocab)
        throw Error("--prompt: token " + std::to_string(id) + " is outside the model's vocabulary of " +
                    std::to_string(model->config().vocab));
    Rwkv7State state = model->initial_state(1);
    at::Tensor logits = model->forward(at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end())).view({1, -1}), &state);
    at::Tensor last = logits[0][-1];
    std::string pending, text;
    const int64_t max_tokens = vm["max-tokens"].as<int64_t>();
    for (int64_t n = 0; n < max_tokens; ++n) {
      if (!stop_at_eos) last[0] = -std::numeric_limits<float>::infinity();
      const int32_t token = sampler.sample(last);
      if (token == 0) break;  // end of text
      sampler.accept(token);
      pending += tokenizer->token(token);
      const size_t ready = complete_utf8_prefix(pending);
      std::cout << pending.substr(0, ready) << std::flush;
      text += pending.substr(0, ready);
      pending.erase(0, ready);
      if (stop_at_blank_line && text.find("\n\n") != std::string::npos) break;
      last = model->forward(at::full({1, 1}, static_cast<int64_t>(token), at::kLong), &state)[0][-1];
    }
    std::cout << pending << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

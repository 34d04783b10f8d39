// peftkit init-model: a new RWKV-7 model as RWKV-LM initialises one.
// peftkit inspect: what a tensor file is (model, state file, adapter) and its geometry.
#include <ATen/ATen.h>

#include <iostream>
#include <map>
#include <regex>

#include "cli/command.hpp"
#include "model/rwkv7_model.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::cli {
namespace {

struct OfficialSize {
  const char* name;
  int64_t layers, embd;
};
constexpr OfficialSize kSizes[] = {{"0.1b", 12, 768}, {"0.4b", 24, 1024}, {"1.5b", 24, 2048}, {"2.9b", 32, 2560}};

at::ScalarType parse_dtype(const std::string& text) {
  if (text == "bf16") return at::kBFloat16;
  if (text == "fp16") return at::kHalf;
  if (text == "fp32") return at::kFloat;
  throw Error("--dtype: expected bf16, fp16 or fp32, found '" + text + "'");
}

void write_tensors(const std::filesystem::path& out, const TensorMap& tensors) {
  if (out.extension() == ".safetensors")
    write_safetensors(out, tensors, {{"format", "pt"}});
  else if (out.extension() == ".pth")
    write_pth(out, tensors);
  else
    throw Error("--out " + out.string() + ": expected a .pth or .safetensors file name");
}

std::string human(double value) {
  char buffer[32];
  if (value >= 1e9) std::snprintf(buffer, sizeof buffer, "%.3fB", value / 1e9);
  else if (value >= 1e6) std::snprintf(buffer, sizeof buffer, "%.3fM", value / 1e6);
  else std::snprintf(buffer, sizeof buffer, "%.0f", value);
  return buffer;
}

std::string dtype_summary(const TensorMap& tensors) {
  std::map<std::string, int64_t> counts;
  for (const auto& [name, t] : tensors) ++counts[std::string(c10::toString(t.scalar_type()))];
  std::string out;
  for (const auto& [dtype, n] : counts) out += (out.empty() ? "" : ", ") + dtype + " x" + std::to_string(n);
  return out;
}

int64_t total_elements(const TensorMap& tensors) {
  int64_t n = 0;
  for (const auto& [name, t] : tensors) n += t.numel();
  return n;
}

void inspect_model(const TensorMap& tensors, const std::string& where) {
  const Rwkv7Config c = Rwkv7Config::from_tensors(tensors, where);
  std::cout << "kind:          model\n"
            << "architecture:  RWKV-7 (x070)\n"
            << "layers:        " << c.n_layer << "\n"
            << "n_embd:        " << c.n_embd << "\n"
            << "heads:         " << c.n_head << " x " << c.head_size << "\n"
            << "vocab:         " << c.vocab << "\n"
            << "ffn:           " << c.ffn << "\n"
            << "low-rank dims: w " << c.dim_w << ", a " << c.dim_a << ", v " << c.dim_v << ", g " << c.dim_g
            << (c.layer0_value_lora ? " (layer-0 v-LoRA present, unused)" : "") << "\n"
            << "parameters:    " << total_elements(tensors) << " (" << human(double(total_elements(tensors))) << ")\n"
            << "dtypes:        " << dtype_summary(tensors) << "\n"
            << "state:         " << c.state_floats() << " floats per sequence (WKV " << c.n_layer << " x ["
            << c.n_head << ", " << c.head_size << ", " << c.head_size << "] + 2 x " << c.n_layer << " x ["
            << c.n_embd << "] shift)\n";
}

}  // namespace

Command init_model_command() {
  Command command;
  command.name = "init-model";
  command.usage = "peftkit init-model (--layers L --embd C | --size 0.1b|0.4b|1.5b|2.9b) [options] --out FILE";
  command.summary = "write a freshly initialised RWKV-7 model (RWKV-LM's initializer)";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("layers", po::value<int64_t>(), "number of layers")(
        "embd", po::value<int64_t>(), "embedding width C")(
        "size", po::value<std::string>(), "an official geometry: 0.1b (L12 C768), 0.4b (L24 C1024), "
                                          "1.5b (L24 C2048), 2.9b (L32 C2560)")(
        "vocab", po::value<int64_t>()->default_value(65536), "vocabulary size")(
        "head-size", po::value<int64_t>()->default_value(64), "head size N")(
        "seed", po::value<uint64_t>()->default_value(0), "random seed")(
        "dtype", po::value<std::string>()->default_value("bf16"), "bf16 (as official checkpoints), fp16 or fp32")(
        "out", po::value<std::string>()->required(), "output file, .pth or .safetensors");
  };
  command.run = [](const po::variables_map& vm, const CommonOptions&) {
    int64_t layers = 0, embd = 0;
    if (vm.count("size")) {
      if (vm.count("layers") || vm.count("embd"))
        throw Error("init-model: give either --size or --layers and --embd, not both");
      const std::string size = vm["size"].as<std::string>();
      for (const auto& s : kSizes)
        if (size == s.name) layers = s.layers, embd = s.embd;
      if (!layers) throw Error("init-model --size: expected 0.1b, 0.4b, 1.5b or 2.9b, found '" + size + "'");
    } else {
      if (!vm.count("layers") || !vm.count("embd"))
        throw Error("init-model: give --layers and --embd, or --size");
      layers = vm["layers"].as<int64_t>();
      embd = vm["embd"].as<int64_t>();
    }
    const auto config = Rwkv7Config::for_size(layers, embd, vm["vocab"].as<int64_t>(), vm["head-size"].as<int64_t>());
    const at::ScalarType dtype = parse_dtype(vm["dtype"].as<std::string>());
    const std::filesystem::path out = vm["out"].as<std::string>();
    log::info("initialising RWKV-7 " + config.describe() + ", " + human(double(config.parameter_count())) +
              " parameters, seed " + std::to_string(vm["seed"].as<uint64_t>()));
    TensorMap tensors = init_rwkv7(config, vm["seed"].as<uint64_t>());
    for (auto& [name, t] : tensors) t = t.to(dtype);
    write_tensors(out, tensors);
    std::cout << "wrote " << out.string() << " (" << config.describe() << ")\n";
    return 0;
  };
  return command;
}

Command inspect_command() {
  Command command;
  command.name = "inspect";
  command.usage = "peftkit inspect FILE";
  command.summary = "describe a model, state file or adapter: architecture, dims, parameters, dtypes";
  command.describe = [](po::options_description& options, po::positional_options_description& positionals) {
    options.add_options()("file", po::value<std::string>()->required(), "a .pth or .safetensors file");
    positionals.add("file", 1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions&) {
    const std::string file = vm["file"].as<std::string>();
    const TensorFile contents = read_tensor_file(file);
    const TensorMap& t = contents.tensors;
    std::cout << "file:          " << file << "\n";
    static const std::regex kState(R"(blocks\.\d+\.att\.time_state)");
    auto count_suffix = [&](std::string_view suffix, int64_t* size0 = nullptr) {
      int64_t n = 0;
      for (const auto& [name, tensor] : t)
        if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
            (suffix != ".lora_A" || name.find(".init_lora_A") == std::string::npos)) {
          ++n;
          if (size0) *size0 = tensor.size(0);
        }
      return n;
    };
    auto scalar = [&](const char* key) { return t.count(key) ? c10::str(t.at(key).item<double>()) : std::string("not stored"); };
    bool all_state = !t.empty();
    for (const auto& [name, tensor] : t) all_state = all_state && std::regex_match(name, kState);
    int64_t rank = 0;
    const int64_t lora_sites = count_suffix(".lora_A", &rank) + count_suffix(".lora_A.weight", &rank);
    const int64_t miss_sites = count_suffix(".miss_block");
    if (t.count("emb.weight") && t.count("blocks.0.ln1.weight")) {
      bool v6 = false;
      for (const auto& [name, tensor] : t) v6 = v6 || name.find("time_maa_x") != std::string::npos;
      if (v6) {
        std::cout << "kind:          model\narchitecture:  RWKV-6 (x060), not supported yet\n";
        return 0;
      }
      inspect_model(t, file);
    } else if (all_state) {
      const at::Tensor& first = t.begin()->second;
      std::cout << "kind:          state file (RWKV-PEFT time_state layout, value-major)\n"
                << "layers:        " << t.size() << "\n"
                << "state shape:   " << c10::str(first.sizes()) << " per layer (n_embd " << first.size(0) * first.size(1) << ")\n"
                << "elements:      " << total_elements(t) << "\n"
                << "dtypes:        " << dtype_summary(t) << "\n";
    } else if (lora_sites > 0) {
      const bool pissa = count_suffix(".init_lora_A") > 0;
      std::cout << "kind:          " << (pissa ? "PiSSA adapter (with its init pair)" : "LoRA adapter") << "\n"
                << "sites:         " << lora_sites << "\n"
                << "rank:          " << rank << "\n"
                << "alpha:         " << scalar(pissa ? "pissa.alpha" : "lora.alpha") << "\n"
                << "parameters:    " << total_elements(t) << "\n"
                << "dtypes:        " << dtype_summary(t) << "\n";
    } else if (miss_sites > 0) {
      static const char* kModes[] = {"balance", "mini", "bat"};
      const int64_t mode = t.count("miss.mode") ? t.at("miss.mode").item<int64_t>() : 0;
      std::cout << "kind:          MiSS adapter\n"
                << "sites:         " << miss_sites << "\n"
                << "mode:          " << (mode >= 0 && mode < 3 ? kModes[mode] : "unknown") << "\n"
                << "r:             " << scalar("miss.r") << "\n"
                << "parameters:    " << total_elements(t) << "\n"
                << "dtypes:        " << dtype_summary(t) << "\n";
    } else if (contents.metadata.count("peftkit.quantized_from")) {
      int64_t bytes = 0;
      for (const auto& [name, tensor] : t) bytes += tensor.nbytes();
      std::cout << "kind:          pre-quantized base ([quant] cache_file)\n"
                << "weights:       " << std::max(count_suffix(".weight.packed"), count_suffix(".weight.q")) << "\n"
                << "bytes:         " << bytes << "\n";
    } else {
      std::cout << "kind:          unknown tensor file (" << t.size() << " tensors, " << total_elements(t)
                << " elements; dtypes " << dtype_summary(t) << ")\n";
    }
    for (const auto& [k, v] : contents.metadata) std::cout << "metadata:      " << k << " = " << v << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

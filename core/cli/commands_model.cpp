// peftkit init-model: a new RWKV-7 model as RWKV-LM initialises one.
// peftkit inspect: what a tensor file is (model, state file, adapter) and its geometry.
#include <ATen/ATen.h>
#include <unistd.h>

#include <functional>
#include <iostream>
#include <map>
#include <regex>

#include "cli/command.hpp"
#include "host/adapters.hpp"
#include "io/mapped_file.hpp"
#include "io/strict_json.hpp"
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

// `weights`: the model's own tensors (counted as parameters); `all`: with merged states, whose
// geometry is checked too.
void inspect_model(const TensorMap& tensors, const TensorMap& all, const std::string& where) {
  const Rwkv7Config c = Rwkv7Config::from_tensors(all, where);
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
    // The initializer holds the model in fp32 and then in the output dtype: refuse what cannot fit
    // in this machine's memory before allocating any of it.
    const double need = static_cast<double>(config.parameter_count()) * (4.0 + c10::elementSize(dtype));
    const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
    if (memory > 0 && need > memory)
      throw Error("init-model: " + config.describe() + " has " + human(double(config.parameter_count())) +
                  " parameters and needs about " + std::to_string(static_cast<int64_t>(need / (1 << 30))) +
                  " GiB while it is initialised; this machine has " +
                  std::to_string(static_cast<int64_t>(memory / (1 << 30))) + " GiB");
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

namespace {

// The parts of a tensor file, by tensor name (README, "What inspect recognises"). A file may hold
// several: peftkit's rwkv-N.pth carries every method of a run plus its train_parts weights.
struct FileParts {
  TensorMap model;        // tensors named like the model's own (emb, head, ln_out, blocks.N.*)
  TensorMap states;       // blocks.N.att.time_state and the token-shift states
  TensorMap lora, pissa;  // low-rank pairs (PiSSA: with its init pair)
  TensorMap miss;         // MiSS blocks
  TensorMap settings;     // stored hyper-parameters (lora.r, lora.alpha, pissa.*, miss.*): not parameters
  TensorMap unknown;
};

FileParts split_parts(const TensorMap& tensors) {
  static const std::regex kState(R"(blocks\.\d{1,9}\.(att\.time_state|att\.time_shift|ffn\.time_shift))");
  static const std::regex kSetting(R"([a-z0-9_]+\.[a-z0-9_]+)");  // "lora.alpha": no site before it
  static const std::regex kModel(R"(emb\.weight|head\.weight|ln_out\.(weight|bias)|blocks\.\d+\.[A-Za-z0-9_.]+)");
  auto ends = [](const std::string& name, std::string_view suffix) {
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  bool pissa = false;
  for (const auto& [name, t] : tensors) pissa = pissa || ends(name, ".init_lora_A");
  FileParts parts;
  for (const auto& [name, t] : tensors) {
    if (std::regex_match(name, kState)) parts.states[name] = t;
    else if (ends(name, ".lora_A") || ends(name, ".lora_B") || ends(name, ".init_lora_A") || ends(name, ".init_lora_B"))
      (pissa ? parts.pissa : parts.lora)[name] = t;
    else if (ends(name, ".miss_block")) parts.miss[name] = t;
    else if (std::regex_match(name, kModel)) parts.model[name] = t;
    else if (std::regex_match(name, kSetting) && t.numel() == 1) parts.settings[name] = t;
    else parts.unknown[name] = t;
  }
  return parts;
}

std::string stored(const TensorMap& settings, const std::string& key) {
  auto it = settings.find(key);
  return it == settings.end() ? "not stored" : c10::str(it->second.item<double>());
}

int64_t count_suffix(const TensorMap& tensors, std::string_view suffix, int64_t* size0 = nullptr) {
  int64_t n = 0;
  for (const auto& [name, t] : tensors)
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      ++n;
      if (size0) *size0 = t.size(0);
    }
  return n;
}

// One "label: value" line, the value in column 16; `indent` nests it under a "part:" line.
void field(const std::string& indent, const std::string& label, const std::string& value) {
  const std::string head = indent + label + ":";
  std::cout << head << std::string(head.size() < 15 ? 15 - head.size() : 1, ' ') << value << "\n";
}

std::string state_kind(const std::string& layout) { return "state file (" + layout + ")"; }
std::string pairs_kind(bool pissa) { return pissa ? "PiSSA adapter (with its init pair)" : "LoRA adapter"; }

void describe_states(const TensorMap& states, const std::string& indent) {
  field(indent, "layers", std::to_string(count_suffix(states, ".att.time_state")));
  for (const auto& [name, t] : states)
    if (name.find("time_state") != std::string::npos) {
      field(indent, "state shape", c10::str(t.sizes()) + " per layer");
      break;
    }
  if (count_suffix(states, ".time_shift")) field(indent, "shift states", "yes (tune_shift)");
}

void describe_pairs(const TensorMap& pairs, const TensorMap& settings, bool pissa, const std::string& indent) {
  int64_t rank = 0;
  const int64_t sites = count_suffix(pairs, ".lora_A", &rank);  // (".init_lora_A" does not end so)
  const std::string method = pissa ? "pissa" : "lora";
  field(indent, "sites", std::to_string(sites));
  field(indent, "rank", std::to_string(rank));
  field(indent, "alpha", stored(settings, method + ".alpha"));
  field(indent, "rsLoRA", stored(settings, method + ".rslora"));
  if (pissa) field(indent, "init pair", "stored (frozen; not counted as parameters)");
}

void describe_miss(const TensorMap& miss, const TensorMap& settings, const std::string& indent) {
  static const char* kModes[] = {"balance", "mini", "bat"};
  const int64_t mode = settings.count("miss.mode") ? settings.at("miss.mode").item<int64_t>() : -1;
  field(indent, "sites", std::to_string(count_suffix(miss, ".miss_block")));
  field(indent, "mode", mode >= 0 && mode < 3 ? kModes[mode] : "not stored");
  field(indent, "r", stored(settings, "miss.r"));
}

void describe_base_weights(const TensorMap& model, const std::string& indent) {
  std::string names = std::to_string(model.size()) + ":";
  size_t shown = 0;
  for (const auto& [name, t] : model)
    if (shown++ < 6) names += " " + name;
  field(indent, "tensors", names + (model.size() > 6 ? " ..." : ""));
}

// Every part of an adapter or state file. A file of one part reads as before (its fields at the
// top); a file of several names them all and nests each part's fields.
void describe_adapter(const FileParts& parts, const std::string& layout) {
  struct Part {
    std::string kind;
    int64_t parameters;  // trained ones (a PiSSA init pair is frozen)
    std::function<void(const std::string&)> fields;
  };
  auto trained = [](const TensorMap& m) {
    int64_t n = 0;
    for (const auto& [name, t] : m)
      if (name.find(".init_lora_") == std::string::npos) n += t.numel();
    return n;
  };
  std::vector<Part> list;
  if (!parts.states.empty())
    list.push_back({state_kind(layout), trained(parts.states),
                    [&](const std::string& i) { describe_states(parts.states, i); }});
  if (!parts.lora.empty())
    list.push_back({pairs_kind(false), trained(parts.lora),
                    [&](const std::string& i) { describe_pairs(parts.lora, parts.settings, false, i); }});
  if (!parts.pissa.empty())
    list.push_back({pairs_kind(true), trained(parts.pissa),
                    [&](const std::string& i) { describe_pairs(parts.pissa, parts.settings, true, i); }});
  if (!parts.miss.empty())
    list.push_back({"MiSS adapter", trained(parts.miss),
                    [&](const std::string& i) { describe_miss(parts.miss, parts.settings, i); }});
  if (!parts.model.empty())
    list.push_back({"trained base weights (train_parts), laid over the base when mounted", trained(parts.model),
                    [&](const std::string& i) { describe_base_weights(parts.model, i); }});
  int64_t total = 0;
  for (const auto& part : list) total += part.parameters;
  const std::string settings =
      parts.settings.empty() ? "" : " (" + std::to_string(parts.settings.size()) + " stored settings besides)";
  if (list.size() == 1) {
    field("", "kind", list[0].kind);
    list[0].fields("");
  } else {
    std::string joined;
    for (const auto& part : list) {
      const std::string short_kind = part.kind.substr(0, part.kind.find(' '));
      joined += (joined.empty() ? "" : " + ") +
                (part.kind.rfind("trained", 0) == 0 ? std::string("trained base weights")
                 : part.kind.rfind("state", 0) == 0 ? std::string("state")
                                                    : short_kind);
    }
    field("", "kind", "adapter: " + joined);
    for (const auto& part : list) {
      field("", "part", part.kind);
      part.fields("  ");
      field("  ", "parameters", std::to_string(part.parameters));
    }
  }
  field("", "parameters", std::to_string(total) + " trained" + settings);
}

void describe_unknown(const TensorMap& unknown) {
  if (unknown.empty()) return;
  std::cout << "unrecognised:  " << unknown.size() << " tensors no peftkit part names:";
  size_t shown = 0;
  for (const auto& [name, t] : unknown)
    if (shown++ < 6) std::cout << " " << name;
  std::cout << (unknown.size() > 6 ? " ..." : "") << "\n";
}

// How the file's WKV states are laid out, as far as it says (host::recorded_state_layout).
std::string state_layout(const TensorFile& contents, const std::string& file) {
  switch (host::recorded_state_layout(contents, file)) {
    case host::StateLayout::kAi00:
      return "Ai00/web-rwkv layout: RWKV-PEFT's time_state with the last two dimensions transposed";
    case host::StateLayout::kRwkvPeft:
      return "RWKV-PEFT time_state layout, value-major";
    default:
      return "layout not recorded: RWKV-PEFT's value-major or Ai00's transposed; --state-layout decides when mounted";
  }
}

// A file peftkit's trainer wrote as a resumable checkpoint.
void describe_checkpoint(const TensorMap& t) {
  auto number = [&](const char* key) { return t.count(key) ? c10::str(t.at(key).item<double>()) : std::string("?"); };
  const at::Tensor text = t.at("trainer.fingerprint").contiguous();
  TensorMap trained;
  int64_t moments = 0;
  for (const auto& [name, tensor] : t) {
    if (name.rfind("param.", 0) == 0) trained[name.substr(6)] = tensor;
    else if (name.rfind("trainer.", 0) != 0) ++moments;
  }
  std::cout << "kind:          training checkpoint (peftkit train; continue with --resume)\n"
            << "step:          " << number("trainer.step") << "\n"
            << "tokens seen:   " << number("trainer.tokens_seen") << "\n"
            << "settings:      "
            << std::string(reinterpret_cast<const char*>(text.data_ptr<uint8_t>()), static_cast<size_t>(text.numel()))
            << "\n"
            << "trained:       " << trained.size() << " tensors, " << total_elements(trained) << " parameters\n"
            << "optimizer:     " << moments << " Adam state tensors\n";
}

// An HF PEFT adapter folder, as `--adapter FOLDER` reads it.
void describe_hf_folder(const std::filesystem::path& folder) {
  const auto config = io::parse_strict_json(
      io::read_small_file(folder / "adapter_config.json", 1 << 20, "adapter config"), 16,
      (folder / "adapter_config.json").string());
  const TensorFile weights = read_safetensors(folder / "adapter_model.safetensors");
  auto field = [&](const char* key) { return config.contains(key) ? config[key].dump() : std::string("not given"); };
  std::cout << "kind:          HF PEFT adapter folder (peft_type " << field("peft_type") << ")\n"
            << "r:             " << field("r") << "\n"
            << "alpha:         " << field("lora_alpha") << "\n"
            << "targets:       " << field("target_modules") << "\n"
            << "tensors:       " << weights.tensors.size() << "\n"
            << "parameters:    " << total_elements(weights.tensors) << "\n"
            << "dtypes:        " << dtype_summary(weights.tensors) << "\n";
}

}  // namespace

Command inspect_command() {
  Command command;
  command.name = "inspect";
  command.usage = "peftkit inspect FILE|FOLDER";
  command.summary = "describe a model, state file, adapter, checkpoint, pre-quantized base or HF PEFT folder";
  command.describe = [](po::options_description& options, po::positional_options_description& positionals) {
    options.add_options()("file", po::value<std::string>()->required(),
                          "a .pth or .safetensors file, or an HF PEFT adapter folder");
    positionals.add("file", 1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions&) {
    const std::string file = vm["file"].as<std::string>();
    std::cout << "file:          " << file << "\n";
    if (std::filesystem::is_directory(file)) {
      if (!std::filesystem::exists(std::filesystem::path(file) / "adapter_config.json"))
        throw Error(file + ": a folder without adapter_config.json (inspect reads files and HF PEFT adapter folders)");
      describe_hf_folder(file);
      return 0;
    }
    const TensorFile contents = read_tensor_file(file);
    const TensorMap& t = contents.tensors;
    const FileParts parts = split_parts(t);
    if (t.count("trainer.fingerprint")) {
      describe_checkpoint(t);
    } else if (contents.metadata.count("peftkit.quantized_from")) {
      int64_t bytes = 0;
      for (const auto& [name, tensor] : t) bytes += tensor.nbytes();
      std::cout << "kind:          pre-quantized base ([quant] cache_file)\n"
                << "weights:       " << std::max(count_suffix(t, ".weight.packed"), count_suffix(t, ".weight.q")) << "\n"
                << "bytes:         " << bytes << "\n";
    } else if (parts.model.count("emb.weight") && parts.model.count("blocks.0.ln1.weight")) {
      bool v6 = false;
      for (const auto& [name, tensor] : t) v6 = v6 || name.find("time_maa_x") != std::string::npos;
      if (v6) {
        std::cout << "kind:          model\narchitecture:  RWKV-6 (x060), not supported yet\n";
        return 0;
      }
      TensorMap model = parts.model;
      for (const auto& [name, state] : parts.states) model[name] = state;
      inspect_model(parts.model, model, file);
      if (!parts.states.empty())
        std::cout << "merged states: " << count_suffix(parts.states, ".att.time_state")
                  << " layers of initial state (merge --state); generate starts from them\n";
      if (!parts.lora.empty() || !parts.pissa.empty() || !parts.miss.empty() || !parts.settings.empty())
        std::cout << "also:          adapter tensors beside the model (" +
                         std::to_string(parts.lora.size() + parts.pissa.size() + parts.miss.size() + parts.settings.size()) +
                         ")\n";
    } else if (!parts.states.empty() || !parts.lora.empty() || !parts.pissa.empty() || !parts.miss.empty() ||
               (!parts.model.empty() && parts.unknown.empty())) {
      describe_adapter(parts, state_layout(contents, file));
      std::cout << "dtypes:        " << dtype_summary(t) << "\n";
      for (const auto& [name, v] : parts.settings) std::cout << "setting:       " << name << " = " << c10::str(v.item<double>()) << "\n";
    } else {
      std::cout << "kind:          unknown tensor file (" << t.size() << " tensors, " << total_elements(t)
                << " elements; dtypes " << dtype_summary(t) << ")\n";
    }
    if (!t.count("trainer.fingerprint")) describe_unknown(parts.unknown);
    for (const auto& [k, v] : contents.metadata) std::cout << "metadata:      " << k << " = " << v << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

// peftkit init-model: a new RWKV-7 or RWKV-6 model as RWKV-LM initialises one.
// peftkit inspect: what a tensor file is (model, state file, adapter) and its geometry.
#include <ATen/ATen.h>
#include <unistd.h>

#include <functional>
#include <iostream>
#include <map>
#include <regex>
#include <set>

#include "cli/command.hpp"
#include "host/adapters.hpp"
#include "io/mapped_file.hpp"
#include "io/strict_json.hpp"
#include "model/rwkv_model.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::cli {
namespace {

struct OfficialSize {
  model::Architecture arch;
  const char* name;
  int64_t layers, embd;
};
// The released geometries (spec rwkv-model §6 for x070; the RWKV docs' sizes for x060).
constexpr OfficialSize kSizes[] = {
    {model::Architecture::kX070, "0.1b", 12, 768},  {model::Architecture::kX070, "0.4b", 24, 1024},
    {model::Architecture::kX070, "1.5b", 24, 2048}, {model::Architecture::kX070, "2.9b", 32, 2560},
    {model::Architecture::kX060, "0.1b", 12, 768},  {model::Architecture::kX060, "0.4b", 24, 1024},
    {model::Architecture::kX060, "1.6b", 24, 2048}, {model::Architecture::kX060, "3b", 32, 2560},
    {model::Architecture::kX060, "7b", 32, 4096}};

std::string size_names(model::Architecture arch) {
  std::string names;
  for (const auto& s : kSizes)
    if (s.arch == arch) names += (names.empty() ? "" : ", ") + std::string(s.name);
  return names;
}

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
  if (value >= 1e9)
    std::snprintf(buffer, sizeof buffer, "%.3fB", value / 1e9);
  else if (value >= 1e6)
    std::snprintf(buffer, sizeof buffer, "%.3fM", value / 1e6);
  else
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
  return buffer;
}

std::string dtype_summary(const TensorMap& tensors) {
  std::map<std::string, int64_t> counts;
  for (const auto& [name, t] : tensors) ++counts[std::string(c10::toString(t.scalar_type()))];
  std::string out;
  for (const auto& [dtype, n] : counts)
    out += (out.empty() ? "" : ", ") + dtype + " x" + std::to_string(n);
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
  const model::ModelConfig c = model::ModelConfig::from_tensors(all, where);
  std::cout << "kind:          model\n"
            << "architecture:  " << model::architecture_title(c.arch) << " ("
            << model::architecture_name(c.arch) << ")\n"
            << "layers:        " << c.n_layer << "\n"
            << "n_embd:        " << c.n_embd << "\n"
            << "heads:         " << c.n_head << " x " << c.head_size << "\n"
            << "vocab:         " << c.vocab << "\n"
            << "ffn:           " << c.ffn << "\n";
  if (c.arch == model::Architecture::kX060)
    std::cout << "low-rank dims: token-shift mix " << c.dim_mix << ", decay " << c.dim_decay
              << "\n";
  else
    std::cout << "low-rank dims: w " << c.dim_w << ", a " << c.dim_a << ", v " << c.dim_v << ", g "
              << c.dim_g << (c.layer0_value_lora ? " (layer-0 v-LoRA present, unused)" : "")
              << "\n";
  std::cout << "parameters:    " << total_elements(tensors) << " ("
            << human(double(total_elements(tensors))) << ")\n"
            << "dtypes:        " << dtype_summary(tensors) << "\n"
            << "state:         " << c.state_floats() << " floats per sequence (WKV " << c.n_layer
            << " x [" << c.n_head << ", " << c.head_size << ", " << c.head_size << "] + 2 x "
            << c.n_layer << " x [" << c.n_embd << "] shift)\n";
}

}  // namespace

Command init_model_command() {
  Command command;
  command.name = "init-model";
  command.usage =
      "peftkit init-model [--arch x070|x060] (--layers L --embd C | --size NAME) [options] --out "
      "FILE";
  command.summary = "write a freshly initialised RWKV-7 or RWKV-6 model (RWKV-LM's initializer)";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("arch", po::value<std::string>()->default_value("x070"),
                          "x070 (RWKV-7) or x060 (RWKV-6)")(
        "layers", po::value<int64_t>(), "number of layers")("embd", po::value<int64_t>(),
                                                            "embedding width C")(
        "size", po::value<std::string>(),
        "an official geometry: x070 0.1b (L12 C768), 0.4b (L24 C1024), 1.5b (L24 C2048), 2.9b "
        "(L32 C2560); x060 0.1b, 0.4b, 1.6b (L24 C2048), 3b (L32 C2560), 7b (L32 C4096)")(
        "vocab", po::value<int64_t>()->default_value(65536), "vocabulary size")(
        "head-size", po::value<int64_t>()->default_value(64), "head size N")(
        "seed", po::value<uint64_t>()->default_value(0), "random seed")(
        "dtype", po::value<std::string>()->default_value("bf16"),
        "bf16 (as official checkpoints), fp16 or fp32")("out", po::value<std::string>()->required(),
                                                        "output file, .pth or .safetensors");
  };
  command.run = [](const po::variables_map& vm, const CommonOptions&) {
    const model::Architecture arch = model::parse_architecture(vm["arch"].as<std::string>());
    int64_t layers = 0, embd = 0;
    if (vm.count("size")) {
      if (vm.count("layers") || vm.count("embd"))
        throw Error("init-model: give either --size or --layers and --embd, not both");
      const std::string size = vm["size"].as<std::string>();
      for (const auto& s : kSizes)
        if (s.arch == arch && size == s.name) layers = s.layers, embd = s.embd;
      if (!layers)
        throw Error("init-model --size: expected one of " + size_names(arch) + " for " +
                    model::architecture_name(arch) + ", found '" + size + "'");
    } else {
      if (!vm.count("layers") || !vm.count("embd"))
        throw Error("init-model: give --layers and --embd, or --size");
      layers = vm["layers"].as<int64_t>();
      embd = vm["embd"].as<int64_t>();
    }
    const auto config = model::ModelConfig::for_size(arch, layers, embd, vm["vocab"].as<int64_t>(),
                                                     vm["head-size"].as<int64_t>());
    const at::ScalarType dtype = parse_dtype(vm["dtype"].as<std::string>());
    const std::filesystem::path out = vm["out"].as<std::string>();
    // The initializer holds the model in fp32 and then in the output dtype: refuse what cannot fit
    // in this machine's memory before allocating any of it.
    const double need =
        static_cast<double>(config.parameter_count()) * (4.0 + c10::elementSize(dtype));
    const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) *
                          static_cast<double>(::sysconf(_SC_PAGE_SIZE));
    if (memory > 0 && need > memory)
      throw Error("init-model: " + config.describe() + " has " +
                  human(double(config.parameter_count())) + " parameters and needs about " +
                  std::to_string(static_cast<int64_t>(need / (1 << 30))) +
                  " GiB while it is initialised; this machine has " +
                  std::to_string(static_cast<int64_t>(memory / (1 << 30))) + " GiB");
    log::info("initialising " + config.describe() + ", " + human(double(config.parameter_count())) +
              " parameters, seed " + std::to_string(vm["seed"].as<uint64_t>()));
    TensorMap tensors = model::init_model(config, vm["seed"].as<uint64_t>());
    for (auto& [name, t] : tensors) t = t.to(dtype);
    write_tensors(out, tensors);
    std::cout << "wrote " << out.string() << " (" << config.describe() << ")\n";
    return 0;
  };
  return command;
}

namespace {

// One "label: value" line, the value in column 16; `indent` nests it under a "part:" line.
void field(const std::string& indent, const std::string& label, const std::string& value) {
  const std::string head = indent + label + ":";
  std::cout << head << std::string(head.size() < 15 ? 15 - head.size() : 1, ' ') << value << "\n";
}

// Names like the model's own tensors: what an adapter's train_parts saved.
bool is_model_name(const std::string& name) {
  static const std::regex kModel(
      R"(emb\.weight|head\.weight|ln_out\.(weight|bias)|blocks\.\d+\.[A-Za-z0-9_.]+)");
  return std::regex_match(name, kModel);
}

// A stored hyper-parameter ("lora.alpha": one number, no site before it), not a parameter.
bool is_setting(const std::string& name, const at::Tensor& t) {
  static const std::regex kSetting(R"([a-z0-9_]+\.[a-z0-9_]+)");
  return t.numel() == 1 && std::regex_match(name, kSetting);
}

// What the plugins recognise in a saved file, and what is left.
struct Described {
  std::vector<host::RecognisedPart> parts;
  TensorMap base_weights;  // unclaimed, named like model weights (train_parts)
  TensorMap unknown;       // unclaimed, anything else
  TensorMap settings;      // claimed scalars that are stored settings
};

Described describe_file(const SavedFile& file, const host::PluginRegistry& registry) {
  Described d;
  d.parts = host::recognise(file, registry);
  std::set<std::string> claimed;
  for (const auto& part : d.parts)
    claimed.insert(part.recognition.tensors.begin(), part.recognition.tensors.end());
  for (const auto& [name, t] : file.tensors) {
    if (claimed.count(name)) {
      if (is_setting(name, t)) d.settings[name] = t;
    } else {
      (is_model_name(name) ? d.base_weights : d.unknown)[name] = t;
    }
  }
  return d;
}

std::string first_word(const std::string& text) { return text.substr(0, text.find(' ')); }

// Every part of an adapter, state file or HF folder. A file of one part reads with its fields at
// the top; a file of several names them all and nests each part's fields.
void describe_adapter(const Described& d) {
  struct Part {
    std::string kind;
    std::string short_kind;
    int64_t parameters;
    std::vector<std::pair<std::string, std::string>> fields;
  };
  std::vector<Part> list;
  for (const auto& p : d.parts)
    list.push_back({p.recognition.kind, first_word(p.recognition.kind), p.recognition.parameters,
                    p.recognition.fields});
  if (!d.base_weights.empty()) {
    std::string names = std::to_string(d.base_weights.size()) + ":";
    size_t shown = 0;
    for (const auto& [name, t] : d.base_weights)
      if (shown++ < 6) names += " " + name;
    list.push_back({"trained base weights (train_parts), laid over the base when mounted",
                    "trained base weights",
                    total_elements(d.base_weights),
                    {{"tensors", names + (d.base_weights.size() > 6 ? " ..." : "")}}});
  }
  int64_t total = 0;
  for (const auto& part : list) total += part.parameters;
  const std::string settings =
      d.settings.empty() ? ""
                         : " (" + std::to_string(d.settings.size()) + " stored settings besides)";
  if (list.size() == 1) {
    field("", "kind", list[0].kind);
    for (const auto& [label, value] : list[0].fields) field("", label, value);
  } else {
    std::string joined;
    for (const auto& part : list) joined += (joined.empty() ? "" : " + ") + part.short_kind;
    field("", "kind", "adapter: " + joined);
    for (const auto& part : list) {
      field("", "part", part.kind);
      for (const auto& [label, value] : part.fields) field("  ", label, value);
      field("  ", "parameters", std::to_string(part.parameters));
    }
  }
  field("", "parameters", std::to_string(total) + " trained" + settings);
  for (const auto& p : d.parts)
    if (!p.recognition.cannot_mount.empty()) field("", "to mount", p.recognition.cannot_mount);
}

void describe_unknown(const TensorMap& unknown) {
  if (unknown.empty()) return;
  std::cout << "unrecognised:  " << unknown.size() << " tensors no installed plugin recognises:";
  size_t shown = 0;
  for (const auto& [name, t] : unknown)
    if (shown++ < 6) std::cout << " " << name;
  std::cout << (unknown.size() > 6 ? " ..." : "") << "\n";
}

// The methods and options a peftkit adapter records (what `--adapter FILE` mounts with no recipe).
void describe_record(const std::string& record, const std::string& where,
                     const host::PluginRegistry& registry) {
  try {
    const host::RecordedMethods recorded = host::parse_adapter_record(record, where, registry);
    for (const auto& m : recorded.methods) {
      std::string options;
      for (const auto& key : m.options.names())
        options +=
            (options.empty() ? "" : ", ") + key + " = " + format_option_value(m.options.get(key));
      field("", "recorded", m.plugin + " (" + options + ")");
    }
    if (recorded.methods.empty()) field("", "recorded", "no method: trained base weights only");
  } catch (const Error& e) {
    field("", "recorded", std::string("unreadable here: ") + e.what());
  }
}

// A file peftkit's trainer wrote as a resumable checkpoint.
void describe_checkpoint(const TensorMap& t) {
  auto number = [&](const char* key) {
    return t.count(key) ? c10::str(t.at(key).item<double>()) : std::string("?");
  };
  const at::Tensor text = t.at("trainer.fingerprint").contiguous();
  TensorMap trained;
  int64_t moments = 0;
  for (const auto& [name, tensor] : t) {
    if (name.rfind("param.", 0) == 0)
      trained[name.substr(6)] = tensor;
    else if (name.rfind("trainer.", 0) != 0)
      ++moments;
  }
  std::cout << "kind:          training checkpoint (peftkit train; continue with --resume)\n"
            << "step:          " << number("trainer.step") << "\n"
            << "tokens seen:   " << number("trainer.tokens_seen") << "\n"
            << "settings:      "
            << std::string(reinterpret_cast<const char*>(text.data_ptr<uint8_t>()),
                           static_cast<size_t>(text.numel()))
            << "\n"
            << "trained:       " << trained.size() << " tensors, " << total_elements(trained)
            << " parameters\n"
            << "optimizer:     " << moments << " Adam state tensors\n";
}

void describe_model(const SavedFile& file, const host::PluginRegistry& registry) {
  TensorMap merged, model, beside;
  std::set<std::string> claimed;
  for (const auto& part : host::recognise(file, registry))
    claimed.insert(part.recognition.tensors.begin(), part.recognition.tensors.end());
  for (const auto& [name, t] : file.tensors) {
    if (model::is_merged_state_name(name))
      merged[name] = t;
    else if (claimed.count(name))
      beside[name] = t;
    else
      model[name] = t;
  }
  TensorMap all = model;
  for (const auto& [name, t] : merged) all[name] = t;
  inspect_model(model, all, file.path.string());
  int64_t layers = 0;
  for (const auto& [name, t] : merged) layers += name.ends_with(".att.time_state");
  if (!merged.empty())
    std::cout << "merged states: " << layers
              << " layers of initial state (merge --state); generate starts from them\n";
  if (!beside.empty())
    std::cout << "also:          adapter tensors beside the model (" << beside.size() << ")\n";
}

}  // namespace

Command inspect_command() {
  Command command;
  command.name = "inspect";
  command.usage = "peftkit inspect FILE|FOLDER";
  command.summary =
      "describe a model, state file, adapter, checkpoint, pre-quantized base or HF PEFT folder";
  command.describe = [](po::options_description& options,
                        po::positional_options_description& positionals) {
    options.add_options()("file", po::value<std::string>()->required(),
                          "a .pth or .safetensors file, or an HF PEFT adapter folder");
    positionals.add("file", 1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const std::string file = vm["file"].as<std::string>();
    std::cout << "file:          " << file << "\n";
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    if (std::filesystem::is_directory(file)) {
      if (!std::filesystem::exists(std::filesystem::path(file) / "adapter_config.json"))
        throw Error(file +
                    ": a folder without adapter_config.json (inspect reads files and HF PEFT "
                    "adapter folders)");
      const SavedFile folder = host::read_saved_file(file, {});
      const Described d = describe_file(folder, registry);
      const std::string type =
          folder.metadata.count("peft_type") ? folder.metadata.at("peft_type") : "not given";
      field("", "format", "HF PEFT adapter folder (peft_type " + type + ")");
      if (d.parts.empty())
        field("", "kind", "not recognised by any installed plugin");
      else
        describe_adapter(d);
      field("", "tensors", std::to_string(folder.tensors.size()));
      field("", "dtypes", dtype_summary(folder.tensors));
      describe_unknown(d.unknown);
      return 0;
    }
    const SavedFile probe = host::read_saved_file(file, {});
    if (probe.kind ==
        SavedFile::Kind::kOtherFile) {  // a plugin's own file format, or nothing known
      const Described d = describe_file(probe, registry);
      if (d.parts.empty())
        throw Error(
            file +
            ": neither a tensor file (.pth, .safetensors) nor a format an installed plugin reads");
      describe_adapter(d);
      return 0;
    }
    const TensorFile contents = read_tensor_file(file);
    const TensorMap& t = contents.tensors;
    SavedFile saved;
    saved.path = file;
    saved.tensors = t;
    saved.metadata = contents.metadata;
    if (t.count("trainer.fingerprint")) {
      describe_checkpoint(t);
    } else if (contents.metadata.count("peftkit.quantized_from")) {
      int64_t bytes = 0, weights = 0;
      for (const auto& [name, tensor] : t) {
        bytes += tensor.nbytes();
        weights += name.ends_with(".weight.packed") || name.ends_with(".weight.q");
      }
      std::cout << "kind:          pre-quantized base ([quant] cache_file)\n"
                << "weights:       " << weights << "\n"
                << "bytes:         " << bytes << "\n";
    } else if (t.count("emb.weight") && t.count("blocks.0.ln1.weight")) {
      describe_model(saved, registry);
    } else {
      const Described d = describe_file(saved, registry);
      if (!d.parts.empty() || (!d.base_weights.empty() && d.unknown.empty())) {
        describe_adapter(d);
        std::cout << "dtypes:        " << dtype_summary(t) << "\n";
        for (const auto& [name, v] : d.settings)
          std::cout << "setting:       " << name << " = " << c10::str(v.item<double>()) << "\n";
      } else {
        std::cout << "kind:          unknown tensor file (" << t.size() << " tensors, "
                  << total_elements(t) << " elements; dtypes " << dtype_summary(t) << ")\n";
      }
      describe_unknown(d.unknown);
    }
    for (const auto& [k, v] : contents.metadata) {
      if (k == kAdapterRecordKey)
        describe_record(v, file, registry);
      else
        std::cout << "metadata:      " << k << " = " << v << "\n";
    }
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

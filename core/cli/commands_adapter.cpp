// peftkit merge / peftkit export: work from saved adapters without re-running training. Also the
// adapter options that `peftkit generate` shares with them.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <iostream>
#include <set>

#include "cli/command.hpp"
#include "host/adapters.hpp"
#include "host/plugin_registry.hpp"
#include "host/quantization.hpp"
#include "model/rwkv_model.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::cli {
namespace fs = std::filesystem;

namespace {
std::vector<std::string>& method_aliases() {
  static std::vector<std::string> names;
  return names;
}
}  // namespace

void set_method_aliases(std::vector<std::string> names) { method_aliases() = std::move(names); }

void add_adapter_options(po::options_description& options) {
  options.add_options()(
      "adapter", po::value<std::vector<std::string>>()->composing(),
      "a saved adapter (repeatable): rwkv-N.pth of `peftkit train` (it records its methods; "
      "the recipe.toml beside it or --recipe wins), a file or HF PEFT folder an installed "
      "plugin recognises (`peftkit plugins` lists what each imports)");
  for (const auto& name : method_aliases())
    if (!options.find_nothrow(name, false))
      options.add_options()(
          name.c_str(), po::value<std::vector<std::string>>()->composing(),
          ("the same as --adapter, for a file that must hold a " + name + " adapter").c_str());
  options.add_options()(
      "recipe", po::value<std::string>(),
      "the recipe the --adapter was trained with (default: its folder's recipe.toml)")(
      "state-layout", po::value<std::string>()->default_value("auto"),
      "layout of a state file's WKV states: auto (as the file records; a .pth is RWKV-PEFT's), "
      "rwkv-peft "
      "(value-major) or ai00 (Ai00/web-rwkv: the last two dimensions transposed)");
  add_set_option(options);
}

std::vector<host::SavedAdapter> adapters_from(const po::variables_map& vm,
                                              const host::PluginRegistry& plugins) {
  return adapters_from(vm, plugins, set_overrides(vm));
}

std::vector<host::SavedAdapter> adapters_from(const po::variables_map& vm,
                                              const host::PluginRegistry& plugins,
                                              const std::vector<host::Override>& overrides) {
  std::vector<host::AdapterRequest> requests;
  if (vm.count("adapter"))
    for (const auto& p : vm["adapter"].as<std::vector<std::string>>()) requests.push_back({p, {}});
  for (const auto& name : method_aliases())
    if (vm.count(name))
      for (const auto& p : vm[name].as<std::vector<std::string>>()) requests.push_back({p, name});
  std::optional<fs::path> recipe;
  if (vm.count("recipe")) {
    if (requests.size() != 1)
      throw Error("--recipe describes one --adapter; found " + std::to_string(requests.size()));
    recipe = vm["recipe"].as<std::string>();
  }
  const std::map<std::string, std::string> hints = {
      {"state-layout", vm["state-layout"].as<std::string>()}};
  std::vector<host::SavedAdapter> adapters;
  for (const auto& request : requests)
    adapters.push_back(host::read_adapter(request, recipe, overrides, plugins, hints));
  return adapters;
}

namespace {

// The base with the adapters' trained weights laid over it, and the adapters' methods mounted on an
// fp32 CPU model of it (the methods need the model's sites; PiSSA reads its weights).
struct Mounted {
  TensorMap weights;  // the base file's tensors, dtypes kept
  std::unique_ptr<model::RwkvModel> model;
  std::vector<std::shared_ptr<PeftMethod>> methods;
};

Mounted mount_on_base(const fs::path& base_path, const std::vector<host::SavedAdapter>& adapters,
                      const host::PluginRegistry& plugins, bool overlay,
                      const host::QuantizedBase* quantization = nullptr) {
  Mounted m;
  m.weights = read_tensor_file(base_path).tensors;
  if (overlay)
    for (const auto& a : adapters)
      if (const int n = host::overlay_trained_weights(a, m.weights))
        log::info(a.description + ": " + std::to_string(n) +
                  " trained base tensors laid over the base");
  model::ModelOptions options{at::kFloat, at::kCPU};
  if (quantization) quantization->apply(options);
  m.model = std::make_unique<model::RwkvModel>(m.weights, options, base_path.string());
  const std::set<std::string> base_names = host::tensor_names(m.weights);
  for (const auto& a : adapters)
    for (auto& method : host::mount(a, *m.model, plugins, base_names)) m.methods.push_back(method);
  return m;
}

void refuse_same_file(const fs::path& input, const fs::path& output, const char* option) {
  std::error_code ec;
  if (fs::exists(output) && fs::equivalent(input, output, ec))
    throw Error(std::string("--output: ") + output.string() + " is the " + option +
                " itself; write the result to another file");
}

void write_model(const fs::path& path, const TensorMap& weights) {
  if (path.extension() == ".safetensors")
    write_safetensors(path, weights, {{"format", "pt"}});
  else
    write_pth(path, weights);
}

}  // namespace

Command merge_command() {
  Command command;
  command.name = "merge";
  command.takes_adapters = true;
  command.usage =
      "peftkit merge --base FILE (--adapter PATH | --METHOD PATH)... --output FILE [--unmerge]";
  command.summary =
      "fold saved adapters (and states) into a full model file; --unmerge takes them out again";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("base", po::value<std::string>()->required(),
                          "the base model (.pth or .safetensors)")(
        "output", po::value<std::string>()->required(),
        "the merged model: .pth, or .safetensors by extension")(
        "unmerge",
        "recover the base from a merged --base instead (exact for LoRA, PiSSA and MiSS)")(
        "requantize-aware",
        "merge into what training computed with: the quantized base of the adapter's recipe "
        "(dequant(quant(W)), QPiSSA's quantized residual) plus the adapter");
    add_adapter_options(options);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    at::NoGradGuard no_grad;
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const fs::path base = vm["base"].as<std::string>(), output = vm["output"].as<std::string>();
    refuse_same_file(base, output, "--base");
    const std::vector<host::SavedAdapter> adapters = adapters_from(vm, registry);
    if (adapters.empty())
      throw Error("peftkit merge: name at least one --adapter (or --METHOD alias)");
    const bool unmerge = vm.count("unmerge") > 0, requantize = vm.count("requantize-aware") > 0;
    if (unmerge && requantize) throw Error("--unmerge and --requantize-aware exclude each other");
    std::optional<host::QuantizedBase> quantization;
    if (requantize) {
      for (const auto& a : adapters)
        if (a.recipe && a.recipe->quantizer)
          quantization = host::quantized_base(*a.recipe, registry, base);
      // A merge reads the training run's pre-quantized cache when it fits but never writes into a
      // training folder.
      if (quantization) quantization->cache_file.clear();
      if (!quantization)
        throw Error(
            "--requantize-aware: no adapter was trained on a quantized base (its recipe has "
            "[quant] method = "
            "\"none\", or no recipe came with it)");
    }
    Mounted m =
        mount_on_base(base, adapters, registry, !unmerge, quantization ? &*quantization : nullptr);
    if (unmerge) {
      for (const auto& a : adapters)
        for (const auto& [name, tensor] : a.tensors)
          if (m.weights.count(name) && !model::merged_state_shape(m.model->config(), name))
            throw Error("--unmerge: " + a.description + " also trained the base tensor '" + name +
                        "' (train_parts), which cannot be taken out again");
      for (auto it = m.methods.rbegin(); it != m.methods.rend(); ++it)
        (*it)->unmerge_from(m.weights);
      // Merged states are dropped again.
      for (auto it = m.weights.begin(); it != m.weights.end();)
        it = model::merged_state_shape(m.model->config(), it->first) ? m.weights.erase(it)
                                                                     : std::next(it);
    } else if (requantize) {
      // Each linear site as it computed in training (quantized base + adapter); the methods' other
      // keys (states) as merge_into writes them.
      TensorMap merged = m.weights;
      for (const auto& method : m.methods) method->merge_into(merged);
      std::set<std::string> site_weights;
      for (const auto& site : m.model->linear_sites()) site_weights.insert(site.name + ".weight");
      for (auto& [name, tensor] : merged)
        if (!site_weights.count(name)) m.weights[name] = tensor;
      for (const auto& name : site_weights) {
        at::Tensor& w = m.weights.at(name);
        w = m.model->effective_weight(name.substr(0, name.size() - 7))
                .to(at::kCPU, w.scalar_type());
      }
      if (quantization->head)
        m.weights.at("head.weight") =
            m.model->head_weight().to(at::kCPU, m.weights.at("head.weight").scalar_type());
    } else {
      for (const auto& method : m.methods) method->merge_into(m.weights);
    }
    for (const auto& [name, tensor] : m.weights)
      if (at::isFloatingType(tensor.scalar_type()) && !at::isfinite(tensor).all().item<bool>())
        throw Error("peftkit merge: '" + name +
                    "' is not finite after merging; nothing was written");
    write_model(output, m.weights);
    std::cout << (unmerge ? "unmerged " : "merged ") << adapters.size() << " adapter(s) into "
              << output.string() << " (" << m.weights.size() << " tensors)\n";
    return 0;
  };
  return command;
}

Command export_command() {
  Command command;
  command.name = "export";
  command.takes_adapters = true;
  command.usage =
      "peftkit export --base FILE --adapter PATH --format NAME --output PATH [--method NAME]";
  command.summary =
      "write a saved adapter in another format (HF PEFT folder, Ai00 state, plain LoRA, ...)";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("base", po::value<std::string>()->required(),
                          "the base model the adapter was trained on")(
        "format", po::value<std::string>()->required(),
        "the output format (an unknown one lists those available)")(
        "output", po::value<std::string>()->required(), "file or folder to write")(
        "method", po::value<std::string>(),
        "which method's adapter, when several were trained together");
    add_adapter_options(options);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    at::NoGradGuard no_grad;
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const std::vector<host::SavedAdapter> adapters = adapters_from(vm, registry);
    if (adapters.size() != 1)
      throw Error("peftkit export: name exactly one --adapter, --lora or --state");
    Mounted m = mount_on_base(vm["base"].as<std::string>(), adapters, registry, true);
    const std::string format = vm["format"].as<std::string>();
    const std::string wanted = vm.count("method") ? vm["method"].as<std::string>() : "";
    std::string available;
    std::vector<std::pair<std::string, std::shared_ptr<PeftMethod>>> candidates;
    for (size_t i = 0; i < m.methods.size(); ++i) {
      const std::string& name = adapters[0].methods[i].plugin;
      if (!wanted.empty() && name != wanted) continue;
      for (const auto& f : m.methods[i]->export_formats()) {
        available += "\n  " + name + ": " + f.name + " - " + f.description;
        if (f.name == format) candidates.push_back({name, m.methods[i]});
      }
    }
    if (available.empty()) throw Error("--method: the adapter has no method '" + wanted + "'");
    if (candidates.empty())
      throw Error("--format: no format '" + format + "'; available:" + available);
    if (candidates.size() > 1)
      throw Error("--format " + format +
                  " exists for several methods of this adapter; pick one with --method");
    // What the chosen method does not write is never dropped silently: trained base weights
    // (train_parts) are refused; another method's tensors are named (export them with --method).
    std::set<std::string> exported;
    for (const auto& [name, tensor] : candidates[0].second->state_dict()) exported.insert(name);
    std::vector<std::string> base_weights, other_methods;
    for (const auto& [name, tensor] : adapters[0].tensors)
      if (!exported.count(name))
        (m.weights.count(name) ? base_weights : other_methods).push_back(name);
    if (!base_weights.empty()) {
      std::string names;
      for (size_t i = 0; i < base_weights.size() && i < 8; ++i)
        names += (i ? ", " : "") + base_weights[i];
      throw Error("--format " + format + ": the adapter also trained " +
                  std::to_string(base_weights.size()) + " base weight(s) (train_parts: " + names +
                  (base_weights.size() > 8 ? ", ..." : "") +
                  "), which this format cannot carry and the export would lose; merge the adapter "
                  "into a model "
                  "instead (peftkit merge), or mount the rwkv-N.pth itself");
    }
    if (!other_methods.empty())
      log::warn(std::to_string(other_methods.size()) +
                " tensor(s) of the adapter's other method(s) are not part of "
                "this export (e.g. " +
                other_methods.front() + "); export them with their own --method");
    candidates[0].second->export_to(format, vm["output"].as<std::string>());
    std::cout << "exported " << candidates[0].first << " as " << format << " to "
              << vm["output"].as<std::string>() << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

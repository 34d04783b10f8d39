#include "host/adapters.hpp"

#include <ATen/ATen.h>

#include <regex>

#include <nlohmann/json.hpp>

#include "io/mapped_file.hpp"
#include "io/strict_json.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::host {
namespace fs = std::filesystem;
namespace {

// Limits on adapter_config.json (README, "Limits").
constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr int kMaxConfigNesting = 16;

bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A plugin table with every key at its default, then `values` set as if a recipe said so; each
// value is checked against the plugin's schema, naming `where`.
PluginTable plugin_table(const PluginRegistry& plugins, const std::string& name,
                         const std::vector<std::pair<std::string, OptionValue>>& values, const std::string& where) {
  auto plugin = plugins.get<PeftPlugin>(name);
  const OptionSchema schema = plugin->options();
  PluginTable table{name, default_options(schema, "peft." + name)};
  for (const auto& [key, value] : values) {
    const OptionSpec* spec = schema.find(key);
    if (!spec) throw Error(where + ": the " + name + " plugin has no setting '" + key + "'");
    if (const std::string expected = check_option_value(*spec, value); !expected.empty())
      throw Error(where + ": " + key + " = " + format_option_value(value) + " is not " + expected);
    table.options.set(key, value, OptionSource::kRecipe, where);
  }
  plugin->validate(table.options);
  return table;
}

template <class T>
T json_value(const nlohmann::json& config, const char* key, T fallback, const fs::path& file) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  try {
    return config[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(file.string() + ": '" + key + "' has the wrong type (found " + config[key].dump() + ")");
  }
}

// HF PEFT names: base_model.model.<site>.lora_A.weight -> <site>.lora_A; .miss_block stays.
SavedAdapter read_hf_folder(const fs::path& folder, const PluginRegistry& plugins) {
  const fs::path config_file = folder / "adapter_config.json";
  const fs::path weights_file = folder / "adapter_model.safetensors";
  const std::string config_text = io::read_small_file(config_file, kMaxConfigBytes, "adapter config");
  const nlohmann::json config = io::parse_strict_json(config_text, kMaxConfigNesting, config_file.string());
  if (!config.is_object()) throw Error(config_file.string() + ": not a JSON object");
  if (!fs::exists(weights_file))
    throw Error(folder.string() + ": no adapter_model.safetensors (the legacy adapter_model.bin is not read)");
  const std::string type = json_value<std::string>(config, "peft_type", "", config_file);
  const std::string where = config_file.string();
  std::vector<std::pair<std::string, OptionValue>> values;
  std::string plugin;
  // Settings HF PEFT honours that change what the tensors mean: refused unless empty, never ignored.
  for (const char* key : {"alpha_pattern", "rank_pattern", "modules_to_save", "layers_to_transform",
                          "layers_pattern"})
    if (config.contains(key) && !config[key].is_null() && !config[key].empty())
      throw Error(where + ": '" + key + "' = " + config[key].dump().substr(0, 200) +
                  " is not supported (peftkit applies one r and alpha to every site and trains no whole modules "
                  "beside an HF adapter); it would change what the tensors mean, so the folder is refused");
  // r and alpha decide the scale: a missing one is never guessed.
  for (const char* key : {"r", type == "LORA" ? "lora_alpha" : "r"})
    if (!config.contains(key) || config[key].is_null())
      throw Error(where + ": has no '" + key + "'; it decides how the adapter is scaled, so it is never guessed");
  if (type == "LORA") {
    plugin = "lora";
    if (json_value<bool>(config, "use_dora", false, config_file))
      throw Error(where + ": use_dora = true: DoRA adapters need a DoRA plugin (see examples/dora-plugin)");
    values = {{"r", json_value<int64_t>(config, "r", 8, config_file)},
              {"alpha", json_value<double>(config, "lora_alpha", 8.0, config_file)},
              {"use_rslora", json_value<bool>(config, "use_rslora", false, config_file)}};
  } else if (type == "MISS") {
    plugin = "miss";
    std::string mode = "balance";
    if (config.contains("init_weights") && config["init_weights"].is_string())
      mode = config["init_weights"].get<std::string>();
    values = {{"r", json_value<int64_t>(config, "r", 64, config_file)},
              {"mode", mode},
              {"mini_r", json_value<int64_t>(config, "mini_r", 1, config_file)}};
  } else {
    throw Error(where + ": peft_type \"" + type + "\" is not supported (expected \"LORA\" or \"MISS\")");
  }
  if (config.contains("target_modules") && config["target_modules"].is_array())
    values.push_back({"targets", config["target_modules"].get<std::vector<std::string>>()});
  else if (config.contains("target_modules") && config["target_modules"].is_string())
    throw Error(where + ": target_modules is a regular expression; only a list of module names is supported");

  SavedAdapter adapter;
  adapter.description = folder.string() + " (HF PEFT " + type + ")";
  adapter.methods.push_back(plugin_table(plugins, plugin, values, where));
  const std::string prefix = "base_model.model.";
  for (auto& [name, tensor] : read_safetensors(weights_file).tensors) {
    std::string key = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
    if (ends_with(key, ".lora_A.weight") || ends_with(key, ".lora_B.weight")) key.resize(key.size() - 7);
    // Each tensor kind belongs to one peft_type; anything else would be dropped by the plugin.
    const bool known = type == "LORA" ? ends_with(key, ".lora_A") || ends_with(key, ".lora_B")
                                      : ends_with(key, ".miss_block");
    if (!known)
      throw Error(weights_file.string() + ": tensor '" + name + "' is not a " + type +
                  " tensor peftkit reads (expected " +
                  (type == "LORA" ? "<site>.lora_A.weight / .lora_B.weight" : "<site>.miss_block") + ")");
    adapter.tensors[key] = tensor;
  }
  return adapter;
}

bool is_state_key(const std::string& name) {
  static const std::regex kState(R"(blocks\.\d{1,9}\.(att\.time_state|att\.time_shift|ffn\.time_shift))");
  return std::regex_match(name, kState);
}

}  // namespace

SavedAdapter read_adapter_unchecked(const fs::path& path, const std::optional<fs::path>& recipe,
                                    const std::vector<Override>& overrides, const PluginRegistry& plugins,
                                    StateLayout layout);

StateLayout parse_state_layout(const std::string& text) {
  if (text == "auto") return StateLayout::kAuto;
  if (text == "rwkv-peft") return StateLayout::kRwkvPeft;
  if (text == "ai00") return StateLayout::kAi00;
  throw Error("--state-layout: expected auto, rwkv-peft or ai00, found '" + text + "'");
}

StateLayout recorded_state_layout(const TensorFile& file, const fs::path& path) {
  auto recorded = file.metadata.find(kStateLayoutKey);
  if (recorded == file.metadata.end())
    return file.metadata.empty() && path.extension() != ".safetensors" ? StateLayout::kRwkvPeft : StateLayout::kAuto;
  if (recorded->second == "ai00") return StateLayout::kAi00;
  if (recorded->second == "rwkv-peft") return StateLayout::kRwkvPeft;
  throw Error(path.string() + ": records the state layout '" + recorded->second + "', which peftkit does not "
              "know; pass --state-layout rwkv-peft or ai00");
}

SavedAdapter read_state_adapter(const fs::path& path, const PluginRegistry& plugins, StateLayout layout) {
  SavedAdapter adapter;
  TensorFile file = read_tensor_file(path, Checksums::kVerify);
  adapter.tensors = std::move(file.tensors);
  require_finite(adapter.tensors, path.string());
  if (layout == StateLayout::kAuto) layout = recorded_state_layout(file, path);
  if (layout == StateLayout::kAuto)
    throw Error(path.string() + ": a safetensors state file may hold RWKV-PEFT's value-major states or Ai00/"
                "web-rwkv's transposed ones, and this one does not record which; pass --state-layout ai00 or "
                "--state-layout rwkv-peft");
  if (layout == StateLayout::kAi00)
    for (auto& [name, tensor] : adapter.tensors)
      if (name.find("time_state") != std::string::npos) tensor = tensor.transpose(-1, -2).contiguous();
  bool shift = false;
  for (const auto& [name, tensor] : adapter.tensors) {
    if (!is_state_key(name))
      throw Error(path.string() + ": '" + name + "' is not a state tensor (expected only blocks.{i}.att.time_state" +
                  " and token-shift states)");
    shift = shift || name.find("time_shift") != std::string::npos;
  }
  if (adapter.tensors.empty()) throw Error(path.string() + ": the file holds no tensors");
  adapter.description = path.string() + " (state)";
  adapter.methods.push_back(plugin_table(plugins, "state", {{"tune_shift", shift}}, path.string()));
  return adapter;
}

SavedAdapter read_adapter(const fs::path& path, const std::optional<fs::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins, StateLayout layout) {
  SavedAdapter adapter = read_adapter_unchecked(path, recipe, overrides, plugins, layout);
  require_finite(adapter.tensors, adapter.description);
  return adapter;
}

SavedAdapter read_adapter_unchecked(const fs::path& path, const std::optional<fs::path>& recipe,
                                    const std::vector<Override>& overrides, const PluginRegistry& plugins,
                                    StateLayout layout) {
  if (fs::is_directory(path)) {
    if (!fs::exists(path / "adapter_config.json"))
      throw Error(path.string() + ": a folder without adapter_config.json is not an HF PEFT adapter");
    if (recipe) throw Error("--recipe: an HF PEFT folder describes itself; drop --recipe");
    return read_hf_folder(path, plugins);
  }
  if (!fs::exists(path)) throw Error(path.string() + ": no such file or folder");
  fs::path recipe_file;
  if (recipe)
    recipe_file = *recipe;
  else if (fs::exists(path.parent_path() / "recipe.toml"))
    recipe_file = path.parent_path() / "recipe.toml";

  if (!recipe_file.empty()) {
    const Recipe loaded = load_recipe(recipe_file, overrides, plugins);
    SavedAdapter adapter;
    adapter.tensors = read_tensor_file(path, Checksums::kVerify).tensors;
    adapter.methods = loaded.peft_methods;
    adapter.recipe = std::make_shared<const Recipe>(loaded);
    std::string names;
    for (const auto& m : adapter.methods) names += (names.empty() ? "" : ", ") + m.plugin;
    adapter.description = path.string() + " (" + (names.empty() ? "trained weights" : names) + ", settings from " +
                          recipe_file.string() + ")";
    return adapter;
  }
  if (!overrides.empty()) throw Error("--set needs a recipe: none is beside " + path.string() + "; pass --recipe");

  // No recipe: only files that describe themselves.
  TensorMap tensors = read_tensor_file(path, Checksums::kVerify).tensors;
  bool all_states = !tensors.empty();
  for (const auto& [name, tensor] : tensors) all_states = all_states && is_state_key(name);
  if (all_states) return read_state_adapter(path, plugins, layout);
  if (tensors.count("lora.r") && tensors.count("lora.alpha")) {
    std::vector<std::string> sites;
    for (const auto& [name, tensor] : tensors)
      if (ends_with(name, ".lora_A")) sites.push_back(name.substr(0, name.size() - 7));
    SavedAdapter adapter;
    adapter.description = path.string() + " (LoRA)";
    adapter.methods.push_back(plugin_table(
        plugins, "lora",
        {{"r", tensors.at("lora.r").item<int64_t>()}, {"alpha", tensors.at("lora.alpha").item<double>()},
         {"use_rslora", tensors.count("lora.rslora") && tensors.at("lora.rslora").item<int64_t>() != 0},
         {"targets", sites}},
        path.string()));
    adapter.tensors = std::move(tensors);
    return adapter;
  }
  throw Error(path.string() + ": cannot tell which method saved it: no recipe.toml beside it and it is neither a "
              "state file nor a LoRA file with lora.r and lora.alpha; pass --recipe with the recipe it was trained with");
}

int overlay_trained_weights(const SavedAdapter& adapter, TensorMap& base) {
  int replaced = 0;
  for (const auto& [name, tensor] : adapter.tensors) {
    auto it = base.find(name);
    if (it == base.end()) continue;
    if (it->second.sizes() != tensor.sizes())
      throw Error(adapter.description + ": '" + name + "' has shape " + c10::str(tensor.sizes()) +
                  " but the base model's is " + c10::str(it->second.sizes()) + "; it was trained on another base");
    it->second = tensor.to(it->second.scalar_type());
    ++replaced;
  }
  return replaced;
}

std::set<std::string> tensor_names(const TensorMap& tensors) {
  std::set<std::string> names;
  for (const auto& [name, tensor] : tensors) names.insert(name);
  return names;
}

std::vector<std::shared_ptr<PeftMethod>> mount(const SavedAdapter& adapter, ModelView& model,
                                               const PluginRegistry& plugins,
                                               const std::set<std::string>& base_weights) {
  std::vector<std::shared_ptr<PeftMethod>> methods;
  for (const auto& table : adapter.methods) {
    auto plugin = plugins.get<PeftPlugin>(table.plugin);
    auto method = keep_loaded(plugin->create(table.options), plugin);
    method->attach(model);
    try {
      method->load_state_dict(adapter.tensors, {});
    } catch (const Error& e) {
      throw Error(adapter.description + ": " + e.what());
    }
    methods.push_back(method);
  }
  std::set<std::string> used = base_weights;
  for (const auto& method : methods)
    for (const auto& [name, tensor] : method->state_dict()) used.insert(name);
  std::vector<std::string> unused;
  for (const auto& [name, tensor] : adapter.tensors)
    if (!used.count(name)) unused.push_back(name);
  if (!unused.empty()) {
    std::string names;
    for (size_t i = 0; i < unused.size() && i < 8; ++i) names += (i ? ", " : "") + unused[i];
    throw Error(adapter.description + ": " + std::to_string(unused.size()) + " tensor(s) match no tensor of the "
                "mounted method(s) and no weight of the base model, and would be dropped: " + names +
                (unused.size() > 8 ? ", ..." : "") + " (trained on another model, a site the settings do not target, "
                "or a kind of tensor no installed plugin reads)");
  }
  log::info("mounted " + adapter.description);
  return methods;
}

}  // namespace peftkit::host

#include "host/adapters.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/mapped_file.hpp"
#include "io/strict_json.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::host {
namespace fs = std::filesystem;
namespace {

// Limits on adapter_config.json and on records (README, "Limits").
constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr int kMaxConfigNesting = 16;
constexpr const char* kHfPrefix = "base_model.model.";

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

// HF PEFT settings that change what every tensor means, whatever the method: refused unless empty,
// never ignored.
void refuse_unsupported_hf_settings(const SavedFile& file) {
  for (const char* key : {"alpha_pattern", "rank_pattern", "modules_to_save", "layers_to_transform",
                          "layers_pattern"})
    if (file.config_is_set(key))
      throw Error(
          file.where() + ": '" + key + "' = " + file.metadata.at(key).substr(0, 200) +
          " is not supported (peftkit applies one setting to every site and trains no whole "
          "modules "
          "beside an HF adapter); it would change what the tensors mean, so the folder is refused");
}

// A zip archive (.pth) or a safetensors header start; damaged ones are then refused by the reader.
bool is_tensor_file(const fs::path& path) {
  io::require_regular_file(path, "adapter");
  std::ifstream in(path, std::ios::binary);
  char head[9] = {};
  in.read(head, sizeof head);
  const auto got = in.gcount();
  return (got >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) || (got >= 9 && head[8] == '{') ||
         path.extension() == ".pth" || path.extension() == ".safetensors";
}

SavedFile read_hf_folder(const fs::path& folder) {
  SavedFile file;
  file.path = folder;
  file.kind = SavedFile::Kind::kHfPeftFolder;
  const fs::path config_file = folder / "adapter_config.json";
  const fs::path weights_file = folder / "adapter_model.safetensors";
  const std::string text = io::read_small_file(config_file, kMaxConfigBytes, "adapter config");
  const nlohmann::json config =
      io::parse_strict_json(text, kMaxConfigNesting, config_file.string());
  if (!config.is_object()) throw Error(config_file.string() + ": not a JSON object");
  for (const auto& [key, value] : config.items()) file.metadata[key] = value.dump();
  if (!fs::exists(weights_file))
    throw Error(folder.string() +
                ": no adapter_model.safetensors (the legacy adapter_model.bin is not read)");
  for (auto& [name, tensor] : read_safetensors(weights_file).tensors)
    file.tensors[name.rfind(kHfPrefix, 0) == 0 ? name.substr(std::string(kHfPrefix).size())
                                               : name] = tensor;
  refuse_unsupported_hf_settings(file);
  return file;
}

nlohmann::json option_json(const OptionValue& value) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, value);
}

// A recorded option value as the schema's type.
OptionValue option_from_json(const OptionSpec& spec, const nlohmann::json& value,
                             const std::string& where) {
  auto wrong = [&]() {
    return Error(where + ": option '" + spec.name + "' is recorded as " +
                 value.dump().substr(0, 100) + ", not " + std::string(option_type_name(spec.type)));
  };
  switch (spec.type) {
    case OptionType::kBool:
      if (!value.is_boolean()) throw wrong();
      return value.get<bool>();
    case OptionType::kInt:
      if (!value.is_number_integer()) throw wrong();
      return value.get<int64_t>();
    case OptionType::kFloat:
      if (!value.is_number()) throw wrong();
      return value.get<double>();
    case OptionType::kString:
      if (!value.is_string()) throw wrong();
      return value.get<std::string>();
    case OptionType::kStringList: {
      if (!value.is_array()) throw wrong();
      std::vector<std::string> items;
      for (const auto& item : value) {
        if (!item.is_string()) throw wrong();
        items.push_back(item.get<std::string>());
      }
      return items;
    }
  }
  throw wrong();
}

// A plugin table with every key at its default, then `values` set as a recipe would set them; each
// value is checked against the plugin's schema, naming `where`.
PluginTable plugin_table(const PluginRegistry& plugins, const std::string& name,
                         const std::vector<std::pair<std::string, OptionValue>>& values,
                         const std::string& where) {
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

bool overlaps(const Recognition& a, const Recognition& b) {
  std::set<std::string> names(a.tensors.begin(), a.tensors.end());
  for (const auto& name : b.tensors)
    if (names.count(name)) return true;
  return false;
}

// The methods a recognised file mounts, and its tensors in their layouts.
SavedAdapter adapter_from_parts(const SavedFile& file, const std::vector<RecognisedPart>& parts,
                                const PluginRegistry& plugins) {
  SavedAdapter adapter;
  adapter.tensors = file.tensors;
  std::vector<std::string> names;
  for (const auto& part : parts) {
    const Recognition& r = part.recognition;
    if (!r.cannot_mount.empty()) throw Error(file.where() + ": " + r.kind + ": " + r.cannot_mount);
    if (!r.converted.empty()) {
      for (const auto& name : r.tensors) adapter.tensors.erase(name);
      for (const auto& [name, tensor] : r.converted) adapter.tensors[name] = tensor;
    }
    adapter.methods.push_back(plugin_table(plugins, part.plugin, r.settings, file.where()));
    adapter.method_metadata.emplace_back();
    names.push_back(part.plugin);
  }
  adapter.description = file.path.string() + " (" + join(names) + ", recognised by the plugin" +
                        (names.size() > 1 ? "s" : "") + ")";
  return adapter;
}

std::string installed_imports(const PluginRegistry& plugins) {
  std::vector<std::string> all;
  for (const auto& [name, plugin] : plugins.all<PeftPlugin>(kImportApiMinor)) {
    std::vector<std::string> formats;
    for (const auto& format : plugin->import_formats()) formats.push_back(format.name);
    all.push_back(name + (formats.empty() ? "" : " (" + join(formats) + ")"));
  }
  return all.empty() ? "none" : join(all, "; ");
}

}  // namespace

SavedFile read_saved_file(const fs::path& path, const std::map<std::string, std::string>& hints) {
  SavedFile file;
  if (fs::is_directory(path)) {
    if (!fs::exists(path / "adapter_config.json"))
      throw Error(path.string() +
                  ": a folder without adapter_config.json is not an HF PEFT adapter");
    file = read_hf_folder(path);
  } else {
    if (!fs::exists(path)) throw Error(path.string() + ": no such file or folder");
    file.path = path;
    if (is_tensor_file(path)) {
      TensorFile contents = read_tensor_file(path, Checksums::kVerify);
      file.tensors = std::move(contents.tensors);
      file.metadata = std::move(contents.metadata);
    } else {
      file.kind = SavedFile::Kind::kOtherFile;  // a plugin's own format: the plugin reads it
    }
  }
  file.hints = hints;
  return file;
}

std::vector<RecognisedPart> recognise(const SavedFile& file, const PluginRegistry& plugins) {
  std::vector<RecognisedPart> claims;
  for (const auto& [name, plugin] : plugins.all<PeftPlugin>(kImportApiMinor))
    if (std::optional<Recognition> r = plugin->recognise(file))
      claims.push_back({name, std::move(*r)});
  // Overlapping claims: the surer one wins; equal ones are for the user to settle.
  std::vector<bool> dropped(claims.size(), false);
  for (size_t i = 0; i < claims.size(); ++i)
    for (size_t j = i + 1; j < claims.size(); ++j) {
      if (dropped[i] || dropped[j] || !overlaps(claims[i].recognition, claims[j].recognition))
        continue;
      const Certainty a = claims[i].recognition.certainty, b = claims[j].recognition.certainty;
      if (a == b)
        throw Error(file.where() + ": recognised by several plugins: " + claims[i].plugin + " (" +
                    claims[i].recognition.kind + ") and " + claims[j].plugin + " (" +
                    claims[j].recognition.kind +
                    "); pass --recipe with the recipe it was trained with to say which");
      dropped[a < b ? i : j] = true;
    }
  std::vector<RecognisedPart> parts;
  for (size_t i = 0; i < claims.size(); ++i)
    if (!dropped[i]) parts.push_back(std::move(claims[i]));
  // In the order the file's record attached them, if it has one.
  std::vector<std::string> order;
  if (auto it = file.metadata.find(kAdapterRecordKey); it != file.metadata.end()) {
    try {
      const nlohmann::json record = nlohmann::json::parse(it->second);  // outlives the loop
      for (const auto& m : record.at("methods")) order.push_back(m.at("plugin").get<std::string>());
    } catch (const nlohmann::json::exception&) {
    }
  }
  auto rank = [&](const std::string& plugin) {
    return std::find(order.begin(), order.end(), plugin) - order.begin();
  };
  std::stable_sort(parts.begin(), parts.end(),
                   [&](const RecognisedPart& a, const RecognisedPart& b) {
                     return rank(a.plugin) < rank(b.plugin);
                   });
  return parts;
}

std::map<std::string, std::string> adapter_record(
    const std::vector<PluginTable>& tables,
    const std::vector<std::shared_ptr<PeftMethod>>& methods) {
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < tables.size(); ++i) {
    nlohmann::json options = nlohmann::json::object();
    // Every option of the plugin's (paths among them, the run's inputs, are skipped when the record
    // is read); the host's training keys (lr_scale) do not change what the tensors mean.
    for (const auto& key : tables[i].options.names())
      if (key != kMethodLrScaleKey) options[key] = option_json(tables[i].options.get(key));
    nlohmann::json metadata = nlohmann::json::object();
    if (i < methods.size())
      for (const auto& [key, value] : methods[i]->metadata()) metadata[key] = value;
    list.push_back({{"plugin", tables[i].plugin}, {"options", options}, {"metadata", metadata}});
  }
  return {{kAdapterRecordKey, nlohmann::json{{"format", 1}, {"methods", list}}.dump()}};
}

RecordedMethods parse_adapter_record(const std::string& text, const std::string& where,
                                     const PluginRegistry& plugins) {
  const std::string place = where + ": " + kAdapterRecordKey;
  const nlohmann::json record = io::parse_strict_json(text, kMaxConfigNesting, place);
  if (!record.is_object() || !record.contains("methods") || !record["methods"].is_array() ||
      record.value("format", 0) != 1)
    throw Error(place + ": expected {\"format\": 1, \"methods\": [...]}, found " +
                text.substr(0, 200));
  RecordedMethods out;
  for (const auto& m : record["methods"]) {
    if (!m.is_object() || !m.contains("plugin") || !m["plugin"].is_string() ||
        !m.contains("options") || !m["options"].is_object())
      throw Error(place +
                  ": a method without a plugin name and options: " + m.dump().substr(0, 200));
    const std::string name = m["plugin"].get<std::string>();
    auto plugin = plugins.get<PeftPlugin>(name);
    const OptionSchema schema = plugin->options();
    std::vector<std::pair<std::string, OptionValue>> values;
    for (const auto& [key, value] : m["options"].items()) {
      const OptionSpec* spec = schema.find(key);
      if (!spec)
        throw Error(place + ": records the " + name + " option '" + key +
                    "', which the installed " + name +
                    " plugin does not have (a newer plugin saved it); install that version or pass "
                    "--recipe");
      if (spec->is_path) continue;
      values.emplace_back(key, option_from_json(*spec, value, place));
    }
    out.methods.push_back(plugin_table(plugins, name, values, place));
    std::map<std::string, std::string> metadata;
    if (m.contains("metadata") && m["metadata"].is_object())
      for (const auto& [key, value] : m["metadata"].items())
        if (value.is_string()) metadata[key] = value.get<std::string>();
    out.metadata.push_back(std::move(metadata));
  }
  return out;
}

SavedAdapter read_adapter(const fs::path& path, const std::optional<fs::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins) {
  return read_adapter(AdapterRequest{path, {}}, recipe, overrides, plugins);
}

SavedAdapter read_adapter(const AdapterRequest& request, const std::optional<fs::path>& recipe,
                          const std::vector<Override>& overrides, const PluginRegistry& plugins,
                          const std::map<std::string, std::string>& hints) {
  const fs::path& path = request.path;
  if (fs::is_directory(path) && recipe)
    throw Error("--recipe: an HF PEFT folder describes itself; drop --recipe");
  const SavedFile file = read_saved_file(path, hints);
  fs::path recipe_file;
  if (recipe)
    recipe_file = *recipe;
  else if (file.kind == SavedFile::Kind::kTensorFile &&
           fs::exists(path.parent_path() / "recipe.toml"))
    recipe_file = path.parent_path() / "recipe.toml";

  SavedAdapter adapter;
  auto record = file.metadata.find(kAdapterRecordKey);
  if (!recipe_file.empty()) {
    const Recipe loaded = load_recipe(recipe_file, overrides, plugins);
    adapter.tensors = file.tensors;
    adapter.methods = loaded.peft_methods;
    adapter.method_metadata.resize(adapter.methods.size());
    if (record != file.metadata.end()) {
      // The settings come from the recipe; the metadata the methods recorded still belongs to them.
      RecordedMethods recorded = parse_adapter_record(record->second, path.string(), plugins);
      for (size_t i = 0; i < adapter.methods.size() && i < recorded.methods.size(); ++i)
        if (recorded.methods[i].plugin == adapter.methods[i].plugin)
          adapter.method_metadata[i] = std::move(recorded.metadata[i]);
    }
    adapter.recipe = std::make_shared<const Recipe>(loaded);
    std::vector<std::string> names;
    for (const auto& m : adapter.methods) names.push_back(m.plugin);
    adapter.description = path.string() + " (" + (names.empty() ? "trained weights" : join(names)) +
                          ", settings from " + recipe_file.string() + ")";
  } else {
    if (!overrides.empty())
      throw Error("--set needs a recipe: none is beside " + path.string() + "; pass --recipe");
    if (record != file.metadata.end()) {
      RecordedMethods recorded = parse_adapter_record(record->second, path.string(), plugins);
      adapter.tensors = file.tensors;
      adapter.methods = std::move(recorded.methods);
      adapter.method_metadata = std::move(recorded.metadata);
      std::vector<std::string> names;
      for (const auto& m : adapter.methods) names.push_back(m.plugin);
      adapter.description = path.string() + " (" +
                            (names.empty() ? "trained weights" : join(names)) +
                            ", recorded in the file)";
    } else {
      const std::vector<RecognisedPart> parts = recognise(file, plugins);
      if (parts.empty()) {
        std::string what =
            file.kind == SavedFile::Kind::kHfPeftFolder
                ? "peft_type " +
                      (file.metadata.count("peft_type") ? file.metadata.at("peft_type")
                                                        : std::string("(none)")) +
                      " is not imported by any installed plugin"
            : file.kind == SavedFile::Kind::kOtherFile
                ? "neither a tensor file (.pth, .safetensors) nor a format an installed plugin "
                  "reads"
                : "no installed PEFT plugin recognises it and it records no methods";
        throw Error(file.where() + ": " + what + " (installed: " + installed_imports(plugins) +
                    "); pass --recipe with the recipe it was trained with");
      }
      adapter = adapter_from_parts(file, parts, plugins);
    }
  }
  if (!request.expected_method.empty()) {
    bool found = false;
    for (const auto& m : adapter.methods) found = found || m.plugin == request.expected_method;
    if (!found)
      throw Error("--" + request.expected_method + " " + path.string() + ": " +
                  adapter.description + " holds no " + request.expected_method +
                  " adapter; pass it with --adapter");
  }
  require_finite(adapter.tensors, adapter.description);
  return adapter;
}

int overlay_trained_weights(const SavedAdapter& adapter, TensorMap& base) {
  int replaced = 0;
  for (const auto& [name, tensor] : adapter.tensors) {
    auto it = base.find(name);
    if (it == base.end()) continue;
    if (it->second.sizes() != tensor.sizes())
      throw Error(adapter.description + ": '" + name + "' has shape " + c10::str(tensor.sizes()) +
                  " but the base model's is " + c10::str(it->second.sizes()) +
                  "; it was trained on another base");
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
  for (size_t i = 0; i < adapter.methods.size(); ++i) {
    const auto& table = adapter.methods[i];
    auto plugin = plugins.get<PeftPlugin>(table.plugin);
    auto method = keep_loaded(plugin->create(table.options), plugin);
    method->attach(model);
    try {
      method->load_state_dict(adapter.tensors, i < adapter.method_metadata.size()
                                                   ? adapter.method_metadata[i]
                                                   : std::map<std::string, std::string>{});
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
    throw Error(adapter.description + ": " + std::to_string(unused.size()) +
                " tensor(s) match no tensor of the "
                "mounted method(s) and no weight of the base model, and would be dropped: " +
                names + (unused.size() > 8 ? ", ..." : "") +
                " (trained on another model, a site the settings do not target, "
                "or a kind of tensor no installed plugin reads)");
  }
  log::info("mounted " + adapter.description);
  return methods;
}

}  // namespace peftkit::host

// Recipe parsing and validation. toml++ is used only in this file: plugins and the rest of the host
// see resolved peftkit::Options.
#include "host/recipe.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <regex>
#include <set>
#include <sstream>

#include "host/device.hpp"
#include "host/recipe_toml.hpp"
#include "io/mapped_file.hpp"

namespace peftkit::host {
namespace fs = std::filesystem;

std::string location_of(const fs::path& file, const toml::source_region& source) {
  std::string where = file.string();
  if (source.begin.line > 0)
    where += ":" + std::to_string(source.begin.line) + ":" + std::to_string(source.begin.column);
  return where;
}

namespace {

// Limits checked before the TOML parser sees a text (README, "Limits"): its recursion follows the
// nesting of dotted keys, arrays and inline tables, so a hostile recipe could exhaust the stack.
constexpr size_t kMaxRecipeBytes = 1 << 20;
constexpr int kMaxTomlNesting = 32;
constexpr int kMaxTomlKeyParts = 32;

// Throws naming `where` when arrays/inline tables nest deeper than kMaxTomlNesting or a dotted key
// (or table name) has more than kMaxTomlKeyParts parts. A linear scan that skips strings and
// comments and counts dots only where a key stands (not in values such as 1.5); anything
// malformed is left to the parser.
void check_toml_limits(std::string_view text, const std::string& where) {
  std::vector<char> open;  // the brackets around the current position: '[' arrays and headers, '{'
  bool in_key = true;      // at a key (line start, after '{' or a ',' inside '{') or in a header
  bool line_start = true;
  int dots = 0;
  int64_t line = 1;
  auto fail = [&](const std::string& what) {
    throw Error(where + ":" + std::to_string(line) + ": " + what +
                "; peftkit refuses such recipes before parsing");
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool was_line_start = line_start;
    if (c != ' ' && c != '\t') line_start = false;
    if (c == '"' || c == '\'') {
      const bool multi = text.substr(i, 3) == std::string(3, c);
      const std::string_view close =
          multi ? std::string_view(c == '"' ? "\"\"\"" : "'''") : text.substr(i, 1);
      size_t j = i + (multi ? 3 : 1);
      while (j < text.size() && text.substr(j, close.size()) != close) {
        if (c == '"' && text[j] == '\\') ++j;  // an escaped character never closes a basic string
        if (j < text.size() && text[j] == '\n') ++line;
        ++j;
      }
      i = std::min(text.size(), j + close.size()) - 1;
    } else if (c == '#') {
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
    } else if (c == '\n') {
      ++line;
      line_start = true;
      dots = 0;
      in_key = open.empty() || open.back() == '{';
    } else if (c == '[' || c == '{') {
      if (open.size() >= static_cast<size_t>(kMaxTomlNesting))
        fail("arrays or tables nest deeper than " + std::to_string(kMaxTomlNesting) + " levels");
      in_key = c == '{' || (was_line_start && open.empty()) ||
               (!open.empty() && open.back() == '[' && in_key);
      open.push_back(c);
      dots = 0;
    } else if (c == ']' || c == '}') {
      if (!open.empty()) open.pop_back();
      in_key = false;
      dots = 0;
    } else if (c == '=') {
      in_key = false;
      dots = 0;
    } else if (c == ',') {
      in_key = !open.empty() && open.back() == '{';
      dots = 0;
    } else if (c == '.' && in_key && ++dots >= kMaxTomlKeyParts) {
      fail("a key or table name has more than " + std::to_string(kMaxTomlKeyParts) +
           " dotted parts");
    }
  }
}

std::string describe_found(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "string " + format_option_value(std::string(*node.value<std::string_view>()));
    case toml::node_type::integer:
      return "integer " + std::to_string(*node.value<int64_t>());
    case toml::node_type::floating_point:
      return "number " + format_option_value(*node.value<double>());
    case toml::node_type::boolean:
      return std::string("boolean ") + (*node.value<bool>() ? "true" : "false");
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    default:
      return "a date/time";
  }
}

// Converts a TOML value to the spec's type; std::nullopt when the TOML type does not fit.
std::optional<OptionValue> convert(const OptionSpec& spec, const toml::node& node) {
  switch (spec.type) {
    case OptionType::kBool:
      if (auto v = node.value_exact<bool>()) return OptionValue(*v);
      // RWKV-PEFT passes switches as 0/1 (--grad_cp 1): accept exactly those two integers.
      if (auto v = node.value_exact<int64_t>(); v && (*v == 0 || *v == 1))
        return OptionValue(*v == 1);
      return std::nullopt;
    case OptionType::kInt:
      if (auto v = node.value_exact<int64_t>()) return OptionValue(*v);
      return std::nullopt;
    case OptionType::kFloat:
      if (auto v = node.value_exact<double>()) return OptionValue(*v);
      if (auto v = node.value_exact<int64_t>()) return OptionValue(static_cast<double>(*v));
      return std::nullopt;
    case OptionType::kString:
      if (auto v = node.value_exact<std::string>()) return OptionValue(*v);
      return std::nullopt;
    case OptionType::kStringList: {
      if (auto v = node.value_exact<std::string>())
        return OptionValue(std::vector<std::string>{*v});
      const toml::array* array = node.as_array();
      if (!array) return std::nullopt;
      std::vector<std::string> list;
      for (const auto& element : *array) {
        auto v = element.value_exact<std::string>();
        if (!v) return std::nullopt;
        list.push_back(*v);
      }
      return OptionValue(std::move(list));
    }
  }
  return std::nullopt;
}

// Key paths set by --set, to report their origin.
using OverrideSet =
    std::map<std::string, std::string>;  // "train.lr_init" -> "--set train.lr_init=..."

std::string join_path(std::string_view table, std::string_view key) {
  return std::string(table) + "." + std::string(key);
}

// Every problem of a recipe, so that one run reports them all, in file order (a recipe made from
// a pasted RWKV-PEFT script would otherwise take a run per problem).
class Problems {
 public:
  explicit Problems(const fs::path& file) : file_(file.string()) {}
  void add(std::string message) { messages_.push_back(std::move(message)); }
  // Runs a check, recording its error instead of stopping; returns whether it passed.
  template <typename Check>
  bool check(Check&& run) {
    try {
      run();
      return true;
    } catch (const Error& e) {
      add(e.what());
      return false;
    }
  }
  bool empty() const { return messages_.empty(); }
  // Throws them all, one per line, ordered by the file position each names ("file:line:column";
  // problems of --set arguments and whole-file ones first).
  void raise() const {
    if (messages_.empty()) return;
    std::vector<std::pair<std::pair<int64_t, int64_t>, std::string>> ordered;
    for (const auto& m : messages_) ordered.push_back({position(m), m});
    std::stable_sort(ordered.begin(), ordered.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string text;
    for (const auto& [where, m] : ordered) text += (text.empty() ? "" : "\n") + m;
    if (ordered.size() > 1) text += "\n(" + std::to_string(ordered.size()) + " problems)";
    throw Error(text);
  }

 private:
  std::pair<int64_t, int64_t> position(const std::string& message) const {
    if (message.compare(0, file_.size() + 1, file_ + ":") != 0) return {0, 0};
    int64_t line = 0, column = 0;
    size_t i = file_.size() + 1;
    for (; i < message.size() && std::isdigit(static_cast<unsigned char>(message[i])); ++i)
      line = line * 10 + (message[i] - '0');
    if (i < message.size() && message[i] == ':')
      for (++i; i < message.size() && std::isdigit(static_cast<unsigned char>(message[i])); ++i)
        column = column * 10 + (message[i] - '0');
    return {line, column};
  }
  std::string file_;
  std::vector<std::string> messages_;
};

// RWKV-PEFT flags that people paste and that peftkit does not take, and where each one went.
const std::map<std::string, std::string, std::less<>>& rwkv_peft_flags() {
  static const std::map<std::string, std::string, std::less<>> flags = {
      {"n_layer", "the model's shape is read from the model file"},
      {"n_embd", "the model's shape is read from the model file"},
      {"vocab_size", "the vocabulary size is read from the model file"},
      {"dim_att", "the model's shape is read from the model file"},
      {"dim_ffn", "the model's shape is read from the model file"},
      {"head_size_a", "the head size is read from the model file"},
      {"head_size", "the head size is read from the model file"},
      {"my_testing", "the architecture (x060 or x070) is read from the model file"},
      {"strategy", "data parallelism needs no strategy: [run] devices = N, or peftkit launch"},
      {"accelerator", "the device is [run] device (\"auto\": the GPU when there is one)"},
      {"devices", "processes, one per GPU, are [run] devices"},
      {"num_nodes", "several machines: peftkit launch --nnodes M --node-rank K on each"},
      {"precision_mode", "[train] precision"},
      {"op", "the WKV kernels are chosen automatically ([train] kernel)"},
      {"fla", "the WKV kernels are chosen automatically ([train] kernel)"},
      {"wandb", "metrics go to <[output] dir>/metrics.jsonl"},
      {"data_type",
       "the data format is [data] format (a dataset plugin: jsonl, binidx, numpy, ...)"},
      {"data_file", "the training data is [data] path"},
      {"load_model", "the base model is [model] path"},
      {"proj_dir", "the output folder is [output] dir"},
      {"train_type", "long samples train in state-carrying segments with [train] chunk_ctx"},
      {"dataload",
       "the sample order is [data.<format>] order (\"random\", \"magic_prime\", \"sequential\")"},
      {"magic_prime", "[data.numpy] order = \"magic_prime\" computes it from the data"},
      {"my_exit_tokens", "the length of a run is [train] epoch_steps x epoch_count"},
      {"random_seed", "the seed is [train] seed"},
      {"peft", "PEFT methods are [peft] method = \"lora\" (or [\"state\", \"lora\"])"},
      {"lora_config", "LoRA's settings go in [peft.lora] (r, alpha, dropout)"},
      {"pissa_config", "PiSSA's settings go in [peft.pissa]"},
      {"miss_config", "MiSS's settings go in [peft.miss]"},
      {"quant", "quantization is [quant] method = \"nf4\" or \"int8\""},
      {"loss_mask", "the jsonl plugin masks prompts itself (prompt/response and chat lines)"},
      {"ctx_len_max", "samples are cut at [train] ctx_len"},
      {"pre_ffn", "not part of RWKV-6 or RWKV-7"},
      {"head_qk", "not part of RWKV-6 or RWKV-7"},
      {"tiny_att_dim", "not part of RWKV-6 or RWKV-7"},
      {"tiny_att_layer", "not part of RWKV-6 or RWKV-7"},
  };
  return flags;
}

// The core section other than `section` that has a key `key`, or "".
std::string section_holding(std::string_view key, std::string_view section) {
  for (const auto& other : recipe_sections())
    if (other.name != section && other.schema->find(key)) return std::string(other.name);
  return "";
}

struct Validator {
  const fs::path& file;
  const OverrideSet& overrides;
  Problems& problems;
  // "section.key" of the keys with a problem: checks that depend on them are skipped.
  std::set<std::string> bad_keys;

  // Where a key came from: its --set argument, else the given source (the value's for a bad value,
  // the key's for an unknown key).
  std::string where(std::string_view table, std::string_view key,
                    const toml::source_region& source) const {
    auto it = overrides.find(join_path(table, key));
    if (it != overrides.end()) return it->second;
    return location_of(file, source);
  }

  // Validates `table` against `schema`; nested tables are allowed only where `subtable_ok` says.
  Options validate(
      const toml::table* table, std::string_view table_name, const OptionSchema& schema,
      const std::function<void(const toml::key&, const toml::table&)>& on_subtable = {}) {
    Options options{std::string(table_name)};
    if (table) {
      for (auto&& [key, node] : *table) {
        const std::string name(key.str());
        if (node.is_table() && on_subtable) {
          on_subtable(key, *node.as_table());
          continue;
        }
        const OptionSpec* spec = schema.find(name);
        if (!spec) {
          std::string message = where(table_name, name, key.source()) + ": unknown key '" + name +
                                "' in [" + std::string(table_name) + "]";
          const std::string suggestion = closest_match(name, schema.names());
          std::string elsewhere = table_name.find('.') == std::string_view::npos
                                      ? section_holding(name, table_name)
                                      : "";
          auto flag = rwkv_peft_flags().find(name);
          if (!suggestion.empty()) {
            message += "; did you mean '" + suggestion + "'?";
            elsewhere.clear();
            flag = rwkv_peft_flags().end();
          } else if (!elsewhere.empty()) {
            message += "; it belongs in [" + elsewhere + "]";
          } else if (flag != rwkv_peft_flags().end()) {
            message += ": RWKV-PEFT's --" + name + " is not needed here; " + flag->second;
          }
          std::string valid;
          for (const auto& n : schema.names()) valid += (valid.empty() ? "" : ", ") + n;
          if (elsewhere.empty() && flag == rwkv_peft_flags().end())
            message += " (valid keys: " + (valid.empty() ? std::string("none") : valid) + ")";
          problems.add(message);
          continue;
        }
        std::string location = where(table_name, name, node.source());
        auto value = convert(*spec, node);
        std::string problem = value ? check_option_value(*spec, *value) : describe_expected(*spec);
        if (!problem.empty()) {
          problems.add(location + ": [" + std::string(table_name) + "] " + name + ": expected " +
                       problem + ", found " + describe_found(node));
          bad_keys.insert(join_path(table_name, name));
          continue;  // the default stands in, so that the checks after this one still run
        }
        // Paths in plugin tables are resolved here: the plugin does not know the recipe's folder.
        // They become absolute, so the resolved recipe a run writes elsewhere still names them.
        if (spec->is_path && !std::get<std::string>(*value).empty() &&
            fs::path(std::get<std::string>(*value)).is_relative())
          *value = fs::absolute(file.parent_path() / std::get<std::string>(*value))
                       .lexically_normal()
                       .string();
        const bool overridden = overrides.count(join_path(table_name, name)) != 0;
        options.set(name, std::move(*value),
                    overridden ? OptionSource::kOverride : OptionSource::kRecipe, location);
      }
    }
    // Defaults for the rest, in schema order; a missing required key is an error.
    Options resolved{std::string(table_name)};
    for (const auto& spec : schema.specs()) {
      if (options.contains(spec.name)) {
        resolved.set(spec.name, options.get(spec.name), options.source(spec.name),
                     options.location(spec.name));
      } else if (spec.default_value) {
        resolved.set(spec.name, *spec.default_value, OptionSource::kDefault);
      } else {
        std::string where_table = table ? location_of(file, table->source()) : file.string();
        problems.add(where_table + ": [" + std::string(table_name) +
                     "] is missing the required key '" + spec.name + "': " + spec.help);
        bad_keys.insert(join_path(table_name, spec.name));
        resolved.set(spec.name, std::string(),
                     OptionSource::kDefault);  // a stand-in; the recipe is refused
      }
    }
    return resolved;
  }
};

// Only the form is checked here: whether CUDA exists is the run's business, not the recipe's.
void check_device(const Options& run) {
  try {
    check_device_name(run.get_string("device"));
  } catch (const Error& e) {
    throw run.error("device", e.what());
  }
}

// Validates [<section>.<plugin>] with the plugin's own schema, then its cross-key checks.
PluginTable plugin_table(Validator& validator, PluginKind kind, std::string_view section,
                         const std::string& plugin_name, const toml::table* table,
                         const PluginRegistry& plugins, const Options& owner,
                         const char* owner_key) {
  std::shared_ptr<const Plugin> plugin;
  try {
    plugin = plugins.find(kind, plugin_name);
  } catch (const Error& e) {
    throw owner.error(owner_key, e.what());
  }
  const std::string table_name = std::string(section) + "." + plugin_name;
  OptionSchema schema = plugin->options();
  if (kind == PluginKind::kPeft && !schema.find(kMethodLrScaleKey))
    schema.add_float(
        kMethodLrScaleKey, 1.0,
        "multiplies the learning rate of this method's tensors (the schedule's lr_init/lr_final); "
        "e.g. 100 for state tuning beside LoRA in one run",
        Bound{0, true});
  const size_t problems_before = validator.bad_keys.size();
  Options options = validator.validate(table, table_name, schema);
  // Cross-key checks only on values that passed their own.
  if (validator.bad_keys.size() == problems_before)
    validator.problems.check([&] { plugin->validate(options); });
  return {plugin_name, std::move(options)};
}

}  // namespace

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  auto distance = [](std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t up = row[j];
        row[j] =
            std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1u : 0u)});
        diagonal = up;
      }
    }
    return row[b.size()];
  };
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& candidate : candidates) {
    size_t d = distance(word, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

Override parse_override(std::string_view text) {
  const std::string whole(text);
  size_t eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0)
    throw Error("--set " + whole + ": expected SECTION.KEY=VALUE, e.g. train.lr_init=1e-3");
  Override result;
  result.text = "--set " + whole;
  result.value_text = std::string(text.substr(eq + 1));
  std::string_view path = text.substr(0, eq);
  while (true) {
    size_t dot = path.find('.');
    std::string_view part = path.substr(0, dot);
    if (part.empty())
      throw Error("--set " + whole + ": empty key component in '" +
                  std::string(text.substr(0, eq)) + "'");
    result.key_path.emplace_back(part);
    if (dot == std::string_view::npos) break;
    path.remove_prefix(dot + 1);
  }
  if (result.key_path.size() > static_cast<size_t>(kMaxTomlKeyParts))
    throw Error("--set " + whole.substr(0, 200) + "...: the key has more than " +
                std::to_string(kMaxTomlKeyParts) + " dotted parts");
  if (result.key_path.size() < 2)
    throw Error("--set " + whole +
                ": expected SECTION.KEY=VALUE (a key inside a section such as "
                "[train]), found no section");
  return result;
}

const Options& Recipe::section(std::string_view name) const {
  for (const auto& s : recipe_sections())
    if (s.name == name) return this->*s.options;
  throw Error("no recipe section [" + std::string(name) + "]");
}

fs::path Recipe::resolve_path(const std::string& path) const {
  fs::path p(path);
  if (p.is_absolute() || file.empty()) return p;
  return file.parent_path() / p;
}

Recipe load_recipe(const fs::path& file, const std::vector<Override>& overrides,
                   const PluginRegistry& plugins) {
  return parse_recipe(io::read_small_file(file, kMaxRecipeBytes, "recipe file"), file, overrides,
                      plugins);
}

toml::table parse_toml_file(std::string_view toml_text, const fs::path& file) {
  if (toml_text.size() > kMaxRecipeBytes)
    throw Error(file.string() + ": the file is " + std::to_string(toml_text.size()) +
                " bytes long; at most " + std::to_string(kMaxRecipeBytes) + " are read");
  check_toml_limits(toml_text, file.string());
  try {
    return toml::parse(toml_text, file.string());
  } catch (const toml::parse_error& e) {
    throw Error(location_of(file, e.source()) +
                ": TOML syntax error: " + std::string(e.description()));
  }
}

Options validate_table(const toml::table* table, std::string_view table_name,
                       const OptionSchema& schema, const fs::path& file) {
  const OverrideSet none;
  Problems problems(file);
  Validator validator{file, none, problems, {}};
  Options options =
      validator.validate(table, table_name, schema, [&](const toml::key& key, const toml::table&) {
        problems.add(location_of(file, key.source()) + ": [" + std::string(table_name) + "." +
                     std::string(key.str()) + "]: [" + std::string(table_name) +
                     "] has no sub-tables");
      });
  problems.raise();
  return options;
}

void apply_override(toml::table& root, const Override& override_arg) {
  toml::table* table = &root;
  for (size_t i = 0; i + 1 < override_arg.key_path.size(); ++i) {
    const std::string& part = override_arg.key_path[i];
    toml::node* node = table->get(part);
    if (!node) {
      table->insert(part, toml::table{});
      node = table->get(part);
    }
    if (!node->is_table())
      throw Error(override_arg.text + ": '" + part + "' is not a table in the recipe");
    table = node->as_table();
  }
  const std::string& leaf = override_arg.key_path.back();
  check_toml_limits("value = " + override_arg.value_text, override_arg.text);
  toml::parse_result parsed = [&]() -> toml::parse_result {
    try {
      return toml::parse("value = " + override_arg.value_text);
    } catch (const toml::parse_error&) {
      toml::table fallback;
      fallback.insert("value", override_arg.value_text);
      return fallback;
    }
  }();
  toml::node* value = parsed.get("value");
  if (!value) throw Error(override_arg.text + ": empty value");
  table->insert_or_assign(leaf, std::move(*value));
}

Recipe parse_recipe(std::string_view toml_text, const fs::path& file,
                    const std::vector<Override>& overrides, const PluginRegistry& plugins) {
  return recipe_from_tree(parse_toml_file(toml_text, file), file, overrides, plugins);
}

Recipe recipe_from_tree(toml::table root, const fs::path& file,
                        const std::vector<Override>& overrides, const PluginRegistry& plugins) {
  OverrideSet override_origins;
  for (const auto& o : overrides) {
    apply_override(root, o);
    std::string path;
    for (const auto& part : o.key_path) path += (path.empty() ? "" : ".") + part;
    override_origins[path] = o.text;
  }

  Problems problems(file);
  std::vector<std::string> section_names;
  std::string listed;
  for (const auto& section : recipe_sections()) {
    section_names.emplace_back(section.name);
    listed += (listed.empty() ? "" : ", ") + std::string(section.name);
  }
  for (auto&& [key, node] : root) {
    const std::string name(key.str());
    if (std::find(section_names.begin(), section_names.end(), name) == section_names.end()) {
      std::string message =
          location_of(file, key.source()) + ": unknown recipe section [" + name + "]";
      std::string suggestion = closest_match(name, section_names);
      if (!suggestion.empty()) message += "; did you mean [" + suggestion + "]?";
      problems.add(message + " (sections: " + listed + ")");
    } else if (!node.is_table()) {
      problems.add(location_of(file, key.source()) + ": '" + name + "' must be a table [" + name +
                   "], found " + describe_found(node));
    }
  }

  Validator validator{file, override_origins, problems, {}};
  Recipe recipe;
  recipe.file = file;
  // Sub-tables of a section belong to the plugin its selector names; others are errors.
  std::map<std::string, std::map<std::string, const toml::table*>> subtables;
  auto collect = [&](std::string section) {
    return [&, section](const toml::key& key, const toml::table& table) {
      subtables[section][std::string(key.str())] = &table;
    };
  };
  auto section_table = [&](std::string_view name) { return root.get_as<toml::table>(name); };
  auto reject_subtables =
      [&](std::string_view section) -> std::function<void(const toml::key&, const toml::table&)> {
    return [&, section = std::string(section)](const toml::key& key, const toml::table&) {
      problems.add(location_of(file, key.source()) + ": [" + section + "." +
                   std::string(key.str()) + "]: [" + section + "] has no sub-tables");
    };
  };

  for (const auto& section : recipe_sections())
    recipe.*section.options =
        validator.validate(section_table(section.name), section.name, *section.schema,
                           section.plugin_selector.empty() ? reject_subtables(section.name)
                                                           : collect(std::string(section.name)));
  if (!validator.bad_keys.count("run.device")) problems.check([&] { check_device(recipe.run); });

  auto take_subtable = [&](const std::string& section,
                           const std::string& name) -> const toml::table* {
    auto& tables = subtables[section];
    auto it = tables.find(name);
    if (it == tables.end()) return nullptr;
    const toml::table* table = it->second;
    tables.erase(it);
    return table;
  };
  // Sections whose plugin tables cannot be matched to their plugins (a bad selector): a table
  // there may belong to the misspelt plugin, so it is not reported as unselected.
  std::set<std::string> unmatched;
  auto add_plugin = [&](PluginKind kind, const std::string& section, const std::string& name,
                        const Options& owner, const char* owner_key) -> std::optional<PluginTable> {
    std::optional<PluginTable> table;
    if (!problems.check([&] {
          table = plugin_table(validator, kind, section, name, take_subtable(section, name),
                               plugins, owner, owner_key);
        }))
      unmatched.insert(section);
    return table;
  };

  // [data]: the format's plugin and its table.
  if (validator.bad_keys.count("data.format")) {
    unmatched.insert("data");
  } else {
    recipe.dataset = add_plugin(PluginKind::kDataset, "data", recipe.data.get_string("format"),
                                recipe.data, "format");
  }

  // [peft]: "none", or distinct plugin names.
  const auto& methods = recipe.peft.get_string_list("method");
  if (validator.bad_keys.count("peft.method")) {
    unmatched.insert("peft");
  } else if (methods.empty()) {
    problems.add(
        recipe.peft.error("method", "expected \"none\" or at least one method, found []").what());
    unmatched.insert("peft");
  }
  std::set<std::string> seen;
  for (const auto& method :
       validator.bad_keys.count("peft.method") ? std::vector<std::string>{} : methods) {
    if (!seen.insert(method).second) {
      problems.add(recipe.peft.error("method", "'" + method + "' is listed twice").what());
      continue;
    }
    if (method == "none") {
      if (methods.size() > 1)
        problems.add(
            recipe.peft.error("method", "\"none\" cannot be combined with other methods").what());
      continue;
    }
    if (auto table = add_plugin(PluginKind::kPeft, "peft", method, recipe.peft, "method"))
      recipe.peft_methods.push_back(*table);
  }

  // [quant]
  const std::string& quant_method = recipe.quant.get_string("method");
  if (validator.bad_keys.count("quant.method"))
    unmatched.insert("quant");
  else if (quant_method != "none")
    recipe.quantizer =
        add_plugin(PluginKind::kQuantizer, "quant", quant_method, recipe.quant, "method");

  // A plugin table whose plugin is not selected would be silently ignored: refuse it.
  for (const RecipeSection& owner : recipe_sections()) {
    const std::string section(owner.name), selector(owner.plugin_selector);
    if (unmatched.count(section) || !subtables.count(section)) continue;
    for (const auto& [name, table] : subtables.at(section)) {
      problems.add(location_of(file, table->source()) + ": table [" + section + "." + name +
                   "] is given but [" + section + "] " + selector + " = " +
                   format_option_value(recipe.section(section).get(selector)) +
                   " does not select '" + name + "'");
    }
  }
  problems.raise();
  return recipe;
}

Options default_options(const OptionSchema& schema, const std::string& table) {
  Options options(table);
  for (const auto& spec : schema.specs()) {
    if (!spec.default_value) throw Error("[" + table + "] has a required key '" + spec.name + "'");
    options.set(spec.name, *spec.default_value, OptionSource::kDefault);
  }
  return options;
}

std::string format_recipe(const Recipe& recipe) {
  std::ostringstream out;
  out << "# Resolved recipe";
  if (!recipe.file.empty()) out << " from " << recipe.file.string();
  out << "\n# Every key is shown; the comment says where its value came from.\n";
  auto write_table = [&out](const Options& options) {
    out << "\n[" << options.table() << "]\n";
    size_t width = 0;
    for (const auto& name : options.names())
      width = std::max(width, name.size() + 3 + format_option_value(options.get(name)).size());
    for (const auto& name : options.names()) {
      std::string line = name + " = " + format_option_value(options.get(name));
      std::string origin;
      switch (options.source(name)) {
        case OptionSource::kDefault:
          origin = "default";
          break;
        case OptionSource::kRecipe:
          origin = "recipe";
          break;
        case OptionSource::kOverride:
          origin = options.location(name);
          break;
      }
      out << line << std::string(width - line.size() + 2, ' ') << "# " << origin << "\n";
    }
  };
  for (const auto& section : recipe_sections()) {
    write_table(recipe.*section.options);
    // The section's plugin tables follow it.
    if (section.name == "data" && recipe.dataset) write_table(recipe.dataset->options);
    if (section.name == "peft")
      for (const auto& method : recipe.peft_methods) write_table(method.options);
    if (section.name == "quant" && recipe.quantizer) write_table(recipe.quantizer->options);
  }
  return out.str();
}

}  // namespace peftkit::host

#include "compare/compare_file.hpp"

#include <cmath>
#include <limits>
#include <set>

#include "host/recipe_toml.hpp"
#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"

namespace peftkit::compare {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxCompareFileBytes = 1 << 20;
constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
const std::vector<std::string> kSections = {"compare", "budget", "generation", "model",
                                            "data",    "train",  "run"};
const std::vector<std::string> kRunKeys = {"name", "peft", "quant", "train"};

OptionSchema compare_schema() {
  return OptionSchema()
      .add_path("output", "compare-out",
                "folder of the runs and the report (relative to this file)")
      .add_string("device", "auto",
                  "\"auto\" (CUDA when present), \"cpu\", \"cuda\" or \"cuda:N\", for every run")
      .add_int("threads", 0, "CPU threads for tensor math (0: all cores)", 0, 1024);
}

OptionSchema budget_schema() {
  return OptionSchema()
      .add_int("steps", 0, "optimizer steps of every run", 0, kMaxInt)
      .add_int(
          "tokens", 0,
          "or: positions every run is fed (micro_bsz x accumulate_grad_batches x ctx_len per step)",
          0, std::numeric_limits<int64_t>::max())
      .add_int("evaluations", 4,
               "evaluations of each run during training, besides the one before it", 1, 1000);
}

OptionSchema generation_schema() {
  return OptionSchema()
      .add_string_list("prompts", {},
                       "texts every variant continues with greedy decoding, for the report")
      .add_int("max_tokens", 64, "tokens per sample generation at most", 1, 4096);
}

// Keys the budget sets in every run's recipe.
const std::vector<std::pair<std::string, std::string>> kBudgetKeys = {
    {"train", "epoch_steps"}, {"train", "epoch_count"}, {"train", "epoch_begin"},
    {"train", "epoch_save"},  {"train", "resume"},      {"data", "eval_every"},
    {"data", "eval_at_start"}};

const toml::table* table_at(const toml::table& root, std::string_view key, const fs::path& file) {
  const toml::node* node = root.get(key);
  if (!node) return nullptr;
  if (!node->is_table())
    throw Error(host::location_of(file, node->source()) + ": '" + std::string(key) +
                "' must be a table [" + std::string(key) + "]");
  return node->as_table();
}

void check_sections(const toml::table& root, const fs::path& file) {
  for (auto&& [key, node] : root) {
    const std::string name(key.str());
    if (std::find(kSections.begin(), kSections.end(), name) == kSections.end()) {
      std::string message = host::location_of(file, key.source()) + ": unknown section [" + name +
                            "] in a compare file";
      if (const std::string s = host::closest_match(name, kSections); !s.empty())
        message += "; did you mean [" + s + "]?";
      throw Error(message +
                  " (sections: compare, budget, generation, model, data, train, [[run]])");
    }
  }
  for (const auto& [section, key] : kBudgetKeys)
    if (const toml::table* table = table_at(root, section, file); table && table->get(key))
      throw Error(host::location_of(file, table->get(key)->source()) + ": [" + section + "] " +
                  key + " is set by [budget] in a compare file; remove it");
  const toml::node* runs = root.get("run");
  if (runs && runs->is_table())
    throw Error(host::location_of(file, runs->source()) +
                ": in a compare file [[run]] lists the runs; device and threads "
                "go in [compare]");
  if (!runs || !runs->is_array_of_tables() || runs->as_array()->empty())
    throw Error(
        file.string() +
        ": a compare file needs at least one [[run]] table (name = \"...\" and [run.peft])");
}

// The [[run]] tables, their keys checked.
std::vector<const toml::table*> run_tables(const toml::table& root, const fs::path& file) {
  std::vector<const toml::table*> out;
  std::set<std::string> names;
  for (const toml::node& node : *root.get("run")->as_array()) {
    const toml::table& run = *node.as_table();
    for (auto&& [key, value] : run) {
      const std::string name(key.str());
      if (std::find(kRunKeys.begin(), kRunKeys.end(), name) == kRunKeys.end()) {
        std::string message =
            host::location_of(file, key.source()) + ": unknown key '" + name + "' in [[run]]";
        if (const std::string s = host::closest_match(name, kRunKeys); !s.empty())
          message += "; did you mean '" + s + "'?";
        throw Error(message + " (valid keys: name, peft, quant, train)");
      }
      if (name != "name" && !value.is_table())
        throw Error(host::location_of(file, value.source()) + ": [run." + name +
                    "] must be a table");
    }
    const toml::node* name_node = run.get("name");
    const auto name = name_node ? name_node->value_exact<std::string>() : std::nullopt;
    if (!name)
      throw Error(host::location_of(file, (name_node ? name_node : &run)->source()) +
                  ": every [[run]] needs name = \"...\" (a string)");
    if (name->empty() || name->size() > 64 ||
        name->find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
            std::string::npos ||
        (*name)[0] == '.')
      throw Error(host::location_of(file, name_node->source()) + ": run name '" + *name +
                  "' must be 1-64 letters, digits, '_', '-' or '.' (it names a folder), not "
                  "starting with '.'");
    if (*name == "base")
      throw Error(host::location_of(file, name_node->source()) +
                  ": 'base' names the base model in the report; choose another run name");
    if (!names.insert(*name).second)
      throw Error(host::location_of(file, name_node->source()) + ": a second run named '" + *name +
                  "'");
    if (!run.get("peft"))
      throw Error(host::location_of(file, run.source()) + ": run '" + *name +
                  "' needs a [run.peft] table (method = ...)");
    out.push_back(&run);
  }
  return out;
}

// Moves `key` of `from` into `to` (toml++ keeps a node's source position only when it is moved).
void move_into(toml::table& to, toml::table& from, std::string_view key) {
  auto it = from.find(key);
  if (it == from.end()) return;
  if (auto* table = it->second.as_table())
    to.insert_or_assign(it->first, std::move(*table));
  else
    to.insert_or_assign(it->first, std::move(it->second));
}

// A path value made absolute against the compare file's folder, so that the run's own recipe.toml
// names the same file wherever it is read from.
void absolutize(toml::table* table, std::string_view key, const fs::path& folder) {
  if (!table) return;
  if (auto value = table->get(key) ? table->get(key)->value_exact<std::string>() : std::nullopt;
      value && !value->empty() && fs::path(*value).is_relative())
    table->insert_or_assign(key, fs::absolute(folder / *value).lexically_normal().string());
}

// The recipe tree of run `index` (-1: the base) from a fresh parse of the file.
toml::table recipe_tree(toml::table doc, int index, const Options& compare, const fs::path& output,
                        const fs::path& file) {
  toml::table tree;
  for (const char* section : {"model", "data", "train"}) move_into(tree, doc, section);
  if (!tree.get("train")) tree.insert("train", toml::table{});
  if (!tree.get("model")) tree.insert("model", toml::table{});
  if (!tree.get("data")) tree.insert("data", toml::table{});
  const fs::path folder = fs::absolute(file).parent_path();
  absolutize(tree.get_as<toml::table>("model"), "path", folder);
  absolutize(tree.get_as<toml::table>("data"), "path", folder);
  absolutize(tree.get_as<toml::table>("data"), "eval_file", folder);
  if (index >= 0) {
    toml::table& run = *(*doc.get_as<toml::array>("run"))[static_cast<size_t>(index)].as_table();
    move_into(tree, run, "peft");
    move_into(tree, run, "quant");
    if (toml::table* overrides = run.get_as<toml::table>("train")) {
      toml::table& train = *tree.get_as<toml::table>("train");
      for (auto&& [key, value] : *overrides) {
        if (value.is_table())
          throw Error(host::location_of(file, value.source()) + ": [run.train." +
                      std::string(key.str()) + "]: [train] has no sub-tables");
        for (const auto& [section, budget_key] : kBudgetKeys)
          if (section == "train" && key.str() == budget_key)
            throw Error(host::location_of(file, value.source()) + ": [run.train] " + budget_key +
                        " is set by [budget] in a compare file; remove it");
      }
      for (auto it = overrides->begin(); it != overrides->end(); ++it)
        train.insert_or_assign(it->first, std::move(it->second));
    }
  } else {
    tree.insert("peft", toml::table{{"method", "none"}});
  }
  toml::table& train = *tree.get_as<toml::table>("train");
  train.insert_or_assign("epoch_count", 1);
  train.insert_or_assign("epoch_begin", 0);
  train.insert_or_assign("epoch_save", 0);
  train.insert_or_assign("resume", "auto");
  toml::table& data = *tree.get_as<toml::table>("data");
  data.insert_or_assign("eval_at_start", true);
  tree.insert("output", toml::table{{"dir", output.string()}});
  tree.insert("run", toml::table{{"device", compare.get_string("device")},
                                 {"threads", compare.get_int("threads")}});
  return tree;
}

}  // namespace

fs::path run_folder(const CompareFile& compare, const std::string& run_name) {
  return compare.output_dir / "runs" / run_name;
}

CompareFile load_compare_file(const fs::path& file, const host::PluginRegistry& plugins) {
  io::require_regular_file(file, "compare file");
  const std::string text = io::read_small_file(file, kMaxCompareFileBytes, "compare file");
  auto parse = [&] { return host::parse_toml_file(text, file); };
  const toml::table root = parse();
  check_sections(root, file);
  CompareFile out;
  out.file = file;
  const Options compare =
      host::validate_table(table_at(root, "compare", file), "compare", compare_schema(), file);
  const Options budget =
      host::validate_table(table_at(root, "budget", file), "budget", budget_schema(), file);
  const Options generation = host::validate_table(table_at(root, "generation", file), "generation",
                                                  generation_schema(), file);
  out.output_dir =
      fs::absolute(file.parent_path() / compare.get_string("output")).lexically_normal();
  out.budget_steps = budget.get_int("steps");
  out.budget_tokens = budget.get_int("tokens");
  if ((out.budget_steps > 0) == (out.budget_tokens > 0))
    throw Error(host::location_of(file, table_at(root, "budget", file)
                                            ? table_at(root, "budget", file)->source()
                                            : root.source()) +
                ": [budget] needs exactly one of steps = N or tokens = N");
  out.prompts = generation.get_string_list("prompts");
  out.max_tokens = generation.get_int("max_tokens");
  const std::vector<const toml::table*> runs = run_tables(root, file);
  const int64_t evaluations = budget.get_int("evaluations");

  out.base = host::recipe_from_tree(
      recipe_tree(parse(), -1, compare, out.output_dir / "base", file), file, {}, plugins);
  if (out.base.data.get_string("eval_file").empty() &&
      out.base.data.get_float("eval_fraction") <= 0)
    throw out.base.data.error(
        "eval_file",
        "a compare evaluates every run on held-out data: set [data] eval_file "
        "or eval_fraction");
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string name = *runs[i]->get("name")->value_exact<std::string>();
    CompareRun run{name, host::recipe_from_tree(recipe_tree(parse(), static_cast<int>(i), compare,
                                                            run_folder(out, name), file),
                                                file, {}, plugins)};
    if (run.recipe.peft_methods.empty() && run.recipe.peft.get_string_list("train_parts").empty())
      throw run.recipe.peft.error("method", "run '" + name +
                                                "' trains no PEFT method (a full fine-tune is not "
                                                "a parameter-efficient variant to compare)");
    const Options& train = run.recipe.train;
    const int64_t per_step = train.get_int("micro_bsz") * train.get_int("accumulate_grad_batches") *
                             train.get_int("ctx_len");
    run.steps =
        out.budget_steps > 0 ? out.budget_steps : (out.budget_tokens + per_step - 1) / per_step;
    run.recipe.train.set("epoch_steps", run.steps, OptionSource::kRecipe, "[budget]");
    run.recipe.data.set("eval_every", std::max<int64_t>(1, run.steps / evaluations),
                        OptionSource::kRecipe, "[budget]");
    out.runs.push_back(std::move(run));
  }
  return out;
}

}  // namespace peftkit::compare

// recipe.hpp (host-internal): a TOML recipe, validated against the core sections' schemas and
// the selected plugins' schemas.
//
//   [model]  path = "rwkv-0.1b.pth"
//   [data]   format = "numpy"  path = "tokens.npy"
//   [peft]   method = "lora"          # or ["state", "lora"]; [peft.lora] holds LoRA's own keys
//   [train]  ctx_len = 512  lr_init = 1e-4 ...   (RWKV-PEFT's flag names)
//
//   Recipe recipe = load_recipe("lora.toml", {parse_override("train.lr_init=1e-3")}, registry);
//   std::cout << format_recipe(recipe);
//
// Relative paths inside a recipe are relative to the recipe file's folder.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "host/plugin_registry.hpp"
#include "peftkit/options.hpp"

namespace peftkit::host {

struct Recipe;

// One entry per core section, in the order recipes and `recipe show` use: the one table that says
// which sections a recipe has, their keys, where each goes in a Recipe, and which own plugin
// tables.
struct RecipeSection {
  std::string_view name;  // "data"
  const OptionSchema* schema;
  Options Recipe::*options;          // the resolved section in a Recipe
  std::string_view plugin_selector;  // "format"/"method": [name.<plugin>] tables belong to the
                                     // plugin the key selects; "": the section has no sub-tables
};
const std::vector<RecipeSection>& recipe_sections();

// The schema of a core section ("train", ...); throws for an unknown section.
const OptionSchema& section_schema(std::string_view section);

// A --set override: "train.lr_init=1e-3". The value is read as a TOML value, or as a plain string
// when it does not parse as one (so data.path=/tmp/x.npy works without quotes).
struct Override {
  std::vector<std::string> key_path;  // {"train", "lr_init"}
  std::string value_text;             // "1e-3"
  std::string text;                   // the whole argument, for messages
};
Override parse_override(std::string_view text);

// A key the host adds to every [peft.<method>] table: the factor on the scheduled learning rate for
// that method's tensors (e.g. [peft.state] lr_scale = 100 beside LoRA in one run).
inline constexpr const char* kMethodLrScaleKey = "lr_scale";

struct PluginTable {
  std::string plugin;  // "lora"
  Options options;     // [peft.lora] resolved
};

struct Recipe {
  std::filesystem::path file;  // where it came from; relative paths are resolved against its folder
  Options model, data, peft, quant, train, output, run;
  std::vector<PluginTable> peft_methods;  // one per [peft] method, in order; empty for "none"
  std::optional<PluginTable> dataset;     // the [data] format's table
  std::optional<PluginTable> quantizer;   // absent for [quant] method = "none"

  const Options& section(std::string_view name) const;
  // A path option resolved against the recipe's folder.
  std::filesystem::path resolve_path(const std::string& path) const;
};

// Parses and validates; every problem is a peftkit::Error naming file:line:column and the key.
Recipe load_recipe(const std::filesystem::path& file, const std::vector<Override>& overrides,
                   const PluginRegistry& plugins);
Recipe parse_recipe(std::string_view toml_text, const std::filesystem::path& file,
                    const std::vector<Override>& overrides, const PluginRegistry& plugins);

// A plugin table with every key at its default (for commands that take no recipe); throws when
// the schema has a required key.
Options default_options(const OptionSchema& schema, const std::string& table);

// The resolved recipe as TOML, every default filled in, each value annotated with its origin.
std::string format_recipe(const Recipe& recipe);

// The closest candidate by edit distance, or "" when none is close enough to be a likely typo.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace peftkit::host

// recipe_toml.hpp (host-internal): the TOML side of recipes, for files that hold recipes inside
// them (`peftkit compare`). A recipe built from a parsed tree keeps its nodes' source positions,
// so every error names the line of the file that holds them.
#pragma once

#include <toml++/toml.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "host/recipe.hpp"

namespace peftkit::host {

// "file:line:column" of a node.
std::string location_of(const std::filesystem::path& file, const toml::source_region& source);

// A TOML file's text parsed, after the limits recipes have (size, nesting, dotted parts); errors
// name the file and line.
toml::table parse_toml_file(std::string_view text, const std::filesystem::path& file);

// Sets a --set override inside a TOML document, creating tables on the way.
void apply_override(toml::table& root, const Override& override_arg);

// A table validated against a schema as a recipe section is (unknown keys with the closest valid
// name, wrong types, defaults filled in); it has no sub-tables. Null: every key at its default.
Options validate_table(const toml::table* table, std::string_view table_name,
                       const OptionSchema& schema, const std::filesystem::path& file);

// A recipe from a tree; relative paths are resolved against `file`'s folder. Move the tree in:
// toml++ copies nodes without their source positions.
Recipe recipe_from_tree(toml::table root, const std::filesystem::path& file,
                        const std::vector<Override>& overrides, const PluginRegistry& plugins);

}  // namespace peftkit::host

// peftkit recipe show|check FILE [--set SECTION.KEY=VALUE]...
#include <iostream>

#include "cli/command.hpp"
#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"

namespace peftkit::cli {

void add_set_option(po::options_description& options) {
  options.add_options()("set", po::value<std::vector<std::string>>()->composing(),
                        "override one key, e.g. --set train.lr_init=1e-3 (repeatable)");
}

std::vector<host::Override> set_overrides(const po::variables_map& vm) {
  std::vector<host::Override> overrides;
  if (vm.count("set"))
    for (const auto& text : vm["set"].as<std::vector<std::string>>())
      overrides.push_back(host::parse_override(text));
  return overrides;
}

Command recipe_command() {
  Command command;
  command.name = "recipe";
  command.usage = "peftkit recipe show|check FILE [--set SECTION.KEY=VALUE]...";
  command.summary = "validate a TOML recipe; `show` prints it resolved, with every default";
  command.describe = [](po::options_description& options,
                        po::positional_options_description& positionals) {
    options.add_options()("action", po::value<std::string>()->required(), "show or check")(
        "file", po::value<std::string>()->required(), "the recipe");
    add_set_option(options);
    positionals.add("action", 1).add("file", 1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const std::string action = vm["action"].as<std::string>();
    if (action != "show" && action != "check")
      throw Error("peftkit recipe: expected the action 'show' or 'check', found '" + action + "'");
    const std::vector<host::Override> overrides = set_overrides(vm);
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const std::string file = vm["file"].as<std::string>();
    const host::Recipe recipe = host::load_recipe(file, overrides, registry);
    if (action == "show")
      std::cout << host::format_recipe(recipe);
    else
      std::cout << file << ": ok\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

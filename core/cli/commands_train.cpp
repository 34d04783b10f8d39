// peftkit train RECIPE [--set K=V]... [--resume]
#include <cstdlib>

#include "cli/command.hpp"
#include "dist/group.hpp"
#include "dist/launcher.hpp"
#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/error.hpp"
#include "train/trainer.hpp"

namespace peftkit::cli {
namespace {

// Single-quoted for a POSIX shell unless the text needs no quoting.
std::string shell_quote(const std::string& text) {
  if (!text.empty() &&
      text.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                             "_-./=:,+@%") == std::string::npos)
    return text;
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

}  // namespace

Command train_command() {
  Command command;
  command.name = "train";
  command.usage = "peftkit train RECIPE [--set SECTION.KEY=VALUE]... [--resume]";
  command.summary = "train as the recipe says; Ctrl-C checkpoints, --resume continues";
  command.describe = [](po::options_description& options,
                        po::positional_options_description& positionals) {
    options.add_options()("recipe", po::value<std::string>()->required(), "the TOML recipe")(
        "resume", "continue from the latest checkpoint in the output dir (it must exist)");
    add_set_option(options);
    positionals.add("recipe", 1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const std::vector<host::Override> overrides = set_overrides(vm);
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const host::Recipe recipe =
        host::load_recipe(vm["recipe"].as<std::string>(), overrides, registry);
    // [run] devices = N outside a launcher: this very command, as N processes.
    const int64_t devices = recipe.run.get_int("devices");
    if (devices > 1 && !dist::place_from_environment().distributed()) {
      dist::LaunchPlan plan;
      plan.nproc = static_cast<int>(devices);
      if (const char* port = std::getenv("MASTER_PORT"); port != nullptr) {
        plan.master_port = std::atoi(port);
        if (std::to_string(plan.master_port) != port || plan.master_port < 1 ||
            plan.master_port > 65535)
          throw Error(std::string("environment variable MASTER_PORT=\"") + port +
                      "\": expected a port from 1 to 65535");
      }
      return dist::launch(plan, dist::own_program(), dist::own_arguments());
    }
    // The command that continues the run: the same recipe and overrides, plus --resume.
    std::string resume_command = "peftkit train " + shell_quote(vm["recipe"].as<std::string>());
    if (vm.count("set"))
      for (const auto& text : vm["set"].as<std::vector<std::string>>())
        resume_command += " --set " + shell_quote(text);
    for (const auto& dir : common.plugin_dirs)
      resume_command += " --plugin-dir " + shell_quote(dir);
    resume_command += " --resume";
    train::Trainer trainer(recipe, registry,
                           train::TrainFlags{vm.count("resume") > 0, resume_command});
    return trainer.run();
  };
  return command;
}

}  // namespace peftkit::cli

// command.hpp (host-internal): one `peftkit <command>`; each lives in its own commands_*.cpp and
// is listed in main.cpp.
#pragma once

#include <boost/program_options.hpp>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "generate/generation.hpp"
#include "host/adapters.hpp"
#include "host/loaded_model.hpp"
#include "host/recipe.hpp"

namespace peftkit::cli {

namespace po = boost::program_options;

// Options every command accepts.
struct CommonOptions {
  std::string log_level = "info";
  std::vector<std::filesystem::path> plugin_dirs;
};

struct Command {
  std::string name;     // "plugins"
  std::string usage;    // "peftkit plugins [options]"
  std::string summary;  // one line for `peftkit --help`
  // Adds the command's own options and positionals.
  std::function<void(po::options_description&, po::positional_options_description&)> describe;
  // Runs it; returns the exit code. Errors are thrown as peftkit::Error.
  std::function<int(const po::variables_map&, const CommonOptions&)> run;
  // Whether it reads saved adapters: main then finds the installed PEFT plugins before the options
  // are described, so that every method name works as an alias of --adapter (--state, --lora).
  bool takes_adapters = false;
};

// The PEFT plugins' names, which add_adapter_options offers as --NAME aliases of --adapter (set by
// main for commands that take adapters).
void set_method_aliases(std::vector<std::string> names);

// The repeatable `--set SECTION.KEY=VALUE` option of commands that read a recipe, and its values.
void add_set_option(po::options_description& options);
std::vector<host::Override> set_overrides(const po::variables_map& vm);

// The adapter options of generate, merge, export, eval and chat (--adapter, a --METHOD alias per
// installed PEFT plugin, --recipe, --state-layout, --set), and the adapters they name (defined in
// commands_adapter.cpp).
void add_adapter_options(po::options_description& options);
std::vector<host::SavedAdapter> adapters_from(const po::variables_map& vm,
                                              const host::PluginRegistry& plugins);
// The same with the --set overrides for the adapters' recipes given (commands whose --set also
// sets other things).
std::vector<host::SavedAdapter> adapters_from(const po::variables_map& vm,
                                              const host::PluginRegistry& plugins,
                                              const std::vector<host::Override>& overrides);

// The model options of generate, chat and eval (--model, --dtype, --device and the adapter
// options), and the ModelOptions they give (defined in commands_generate.cpp).
void add_model_options(po::options_description& options, const char* default_dtype);
model::ModelOptions model_options_from(const po::variables_map& vm);
// The --model with the adapter options' adapters mounted, as those options say.
host::LoadedModel load_model_from(const po::variables_map& vm, const host::PluginRegistry& plugins);
// RWKV's sampling options of generate and chat, and their settings.
void add_sampling_options(po::options_description& options, int64_t max_tokens,
                          bool stop_at_blank_line);
generate::GenerationSettings generation_settings_from(const po::variables_map& vm);

Command plugins_command();
Command recipe_command();
Command init_model_command();
Command inspect_command();
Command generate_command();
Command train_command();
Command convert_command();
Command merge_command();
Command export_command();
Command eval_command();
Command chat_command();
Command launch_command();
Command compare_command();

}  // namespace peftkit::cli

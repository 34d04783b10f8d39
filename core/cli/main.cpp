// peftkit: the command-line host.
//   peftkit <command> [options]      peftkit --help | --version
#include <torch/version.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "host/plugin_registry.hpp"
#include "peftkit/build_config.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"

namespace peftkit::cli {
namespace {

constexpr int kUsageError = 2;

std::vector<Command> all_commands() {
  return {plugins_command(),  recipe_command(),  init_model_command(), inspect_command(),
          generate_command(), chat_command(),    eval_command(),       train_command(),
          compare_command(),  convert_command(), merge_command(),      export_command(),
          launch_command()};
}

void print_help(const std::vector<Command>& commands) {
  std::cout << "peftkit " << PEFTKIT_VERSION
            << ": parameter-efficient fine-tuning for RWKV language models\n\n"
               "Usage: peftkit <command> [options]\n"
               "       peftkit <command> --help\n"
               "       peftkit --version\n\nCommands:\n";
  for (const auto& command : commands)
    std::cout << "  " << command.name
              << std::string(12 - std::min<size_t>(11, command.name.size()), ' ') << command.summary
              << "\n";
  std::cout
      << "\nCommon options: --log-level LEVEL, --plugin-dir DIR (see `peftkit <command> --help`)\n";
}

void add_common_options(po::options_description& options, CommonOptions& common) {
  options.add_options()("help,h", "show this help")(
      "log-level", po::value(&common.log_level)->default_value("info"),
      "trace, debug, info, warn, error or off")(
      "plugin-dir", po::value(&common.plugin_dirs)->composing(),
      "also load plugins from this folder (repeatable; PEFTKIT_PLUGIN_PATH adds more)");
}

// The --plugin-dir values of a command line, read before its options are described.
std::vector<std::filesystem::path> plugin_dirs_of(int argc, char** argv) {
  std::vector<std::filesystem::path> dirs;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--plugin-dir" && i + 1 < argc)
      dirs.emplace_back(argv[++i]);
    else if (arg.rfind("--plugin-dir=", 0) == 0)
      dirs.emplace_back(arg.substr(13));
  }
  return dirs;
}

int run_command(const Command& command, int argc, char** argv) {
  if (command.takes_adapters) {
    log::set_level(log::Level::kError);  // the command discovers the plugins again and reports them
    set_method_aliases(
        host::PluginRegistry::discover(host::plugin_search_path(plugin_dirs_of(argc, argv)))
            .available(PluginKind::kPeft));
    log::set_level(log::Level::kInfo);
  }
  CommonOptions common;
  po::options_description options("Options");
  po::positional_options_description positionals;
  add_common_options(options, common);
  command.describe(options, positionals);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(options).positional(positionals).run(),
              vm);
    if (vm.count("help")) {
      std::cout << "Usage: " << command.usage << "\n" << command.summary << "\n\n" << options;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "peftkit " << command.name << ": " << e.what() << "\nUsage: " << command.usage
              << "  (peftkit " << command.name << " --help)\n";
    return kUsageError;
  }
  log::set_level(log::parse_level(common.log_level));
  return command.run(vm, common);
}

int main_impl(int argc, char** argv) {
  const auto commands = all_commands();
  if (argc < 2) {
    print_help(commands);
    return kUsageError;
  }
  const std::string first = argv[1];
  if (first == "--help" || first == "-h" || first == "help") {
    print_help(commands);
    return 0;
  }
  if (first == "--version") {
    std::cout << "peftkit " << PEFTKIT_VERSION << " (LibTorch " << TORCH_VERSION << ", CUDA "
              << PEFTKIT_CUDA_TAG << ", plugin SDK API " << PEFTKIT_API_MAJOR << "."
              << PEFTKIT_API_MINOR << ")\n";
    return 0;
  }
  for (const auto& command : commands)
    if (command.name == first) return run_command(command, argc - 1, argv + 1);
  std::cerr << "peftkit: unknown command '" << first << "'; commands:";
  for (const auto& command : commands) std::cerr << " " << command.name;
  std::cerr << " (peftkit --help)\n";
  return kUsageError;
}

}  // namespace
}  // namespace peftkit::cli

int main(int argc, char** argv) {
  try {
    return peftkit::cli::main_impl(argc, argv);
  } catch (const peftkit::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // A folder or file the system refused (permissions, a file where a folder should be, a full
    // disk): the user's to fix, named with the system's reason.
    std::cerr << "error: " << e.path1().string()
              << (e.path2().empty() ? "" : " -> " + e.path2().string()) << ": "
              << e.code().message() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << e.what() << "\n";
    return 3;
  }
}

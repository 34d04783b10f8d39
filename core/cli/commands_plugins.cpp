// peftkit plugins: every plugin found, with kind, version and whether its ABI fits this host.
#include <algorithm>
#include <iostream>

#include "cli/command.hpp"
#include "host/plugin_registry.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/peft_method.hpp"

namespace peftkit::cli {

Command plugins_command() {
  Command command;
  command.name = "plugins";
  command.usage = "peftkit plugins [--plugin-dir DIR]...";
  command.summary =
      "list the plugins found, with kind, version, ABI status, and the formats they import and "
      "write";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("paths", "also print the folders searched");
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const auto dirs = host::plugin_search_path(common.plugin_dirs);
    const auto registry = host::PluginRegistry::discover(dirs);
    auto records = registry.records();
    std::stable_sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
      return std::pair(a.kind, a.name) < std::pair(b.kind, b.name);
    });
    std::printf("%-10s %-16s %-9s %-8s %s\n", "KIND", "NAME", "VERSION", "ABI", "DESCRIPTION");
    for (const auto& r : records) {
      const std::string kind = r.handshake_read ? std::string(plugin_kind_name(r.kind)) : "?";
      const std::string name = r.handshake_read ? r.name : r.file.filename().string();
      std::printf("%-10s %-16s %-9s %-8s %s\n", kind.c_str(), name.c_str(),
                  r.version.empty() ? "-" : r.version.c_str(), r.usable() ? "ok" : "refused",
                  r.description.c_str());
      if (!r.usable()) {
        std::printf("           %s: %s\n", r.file.c_str(), r.refusal.c_str());
        continue;
      }
      // What each plugin reads and writes besides its recipe table (SDK 2.2 plugins only).
      if (r.api_minor < 2) continue;
      if (r.kind == PluginKind::kPeft) {
        const auto plugin = registry.get<PeftPlugin>(r.name);
        for (const auto& format : plugin->import_formats())
          std::printf("           imports %s: %s\n", format.name.c_str(),
                      format.description.c_str());
      } else if (r.kind == PluginKind::kDataset) {
        const std::string writes = registry.get<DatasetPlugin>(r.name)->writer_description();
        if (!writes.empty()) std::printf("           writes: %s\n", writes.c_str());
      }
    }
    if (records.empty()) std::printf("(no plugins found)\n");
    std::printf("host ABI: %s\n", std::string(host::host_abi_tag()).c_str());
    if (vm.count("paths"))
      for (const auto& dir : dirs) std::printf("searched: %s\n", dir.c_str());
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

// plugin_registry.hpp (host-internal): finds, checks and loads plugins.
//
// Every file named peftkit-*.so in the plugin folders is opened with Boost.DLL; its C handshake is
// checked (magic, size, SDK API version, kind, ABI tag) before any C++ code of the plugin runs. A
// refused plugin stays listed with the reason, so `peftkit plugins` can show it.
//
//   auto registry = PluginRegistry::discover(plugin_search_path(cli_dirs));
//   auto numpy = registry.get<DatasetPlugin>("numpy");          // throws, listing what exists
//   auto dataset = keep_loaded(numpy->open(source, options), numpy);
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "peftkit/plugin.hpp"

namespace peftkit::host {

struct PluginRecord {
  std::filesystem::path file;
  PluginKind kind = PluginKind::kPeft;
  std::string name;
  std::string version;
  std::string description;
  std::string abi_tag;
  int api_major = 0;
  int api_minor = 0;
  bool handshake_read = false;  // false: kind/name/... are unknown
  std::string refusal;          // why the host refused it; empty when usable
  bool usable() const { return refusal.empty(); }
};

// The folders searched, in order: <binary>/../lib/peftkit/plugins (build tree and installed
// layout), then each --plugin-dir, then each entry of PEFTKIT_PLUGIN_PATH (colon-separated).
std::vector<std::filesystem::path> plugin_search_path(
    const std::vector<std::filesystem::path>& cli_dirs);

// This host's ABI tag (PEFTKIT_ABI_TAG as compiled into libpeftkit-core.so).
std::string_view host_abi_tag();

// Empty when the tags agree, else e.g. "ABI tag field 'torch' is '2.10.0' in the plugin but
// '2.11.0' in this host".
std::string compare_abi_tags(std::string_view plugin_tag, std::string_view host_tag);

class PluginRegistry {
 public:
  // Loads every plugin in the folders (missing folders are skipped). Throws peftkit::Error when two
  // files declare the same (kind, name).
  static PluginRegistry discover(const std::vector<std::filesystem::path>& dirs);

  const std::vector<PluginRecord>& records() const { return records_; }
  // Names of usable plugins of a kind, sorted.
  std::vector<std::string> available(PluginKind kind) const;
  // The plugin; throws peftkit::Error listing the available ones, or saying why it was refused.
  std::shared_ptr<const Plugin> find(PluginKind kind, std::string_view name) const;
  template <class T>
  std::shared_ptr<const T> get(std::string_view name) const {
    return std::static_pointer_cast<const T>(find(T::kKind, name));
  }
  // The SDK minor version a usable plugin was built against: functions added to an interface in a
  // later minor version must not be called on it (its vtable ends before them).
  int api_minor(PluginKind kind, std::string_view name) const;

  // Every usable plugin of T's kind built against SDK minor `min_api_minor` or later, by name.
  template <class T>
  std::vector<std::pair<std::string, std::shared_ptr<const T>>> all(int min_api_minor) const {
    std::vector<std::pair<std::string, std::shared_ptr<const T>>> out;
    for (const auto& name : available(T::kKind))
      if (api_minor(T::kKind, name) >= min_api_minor) out.emplace_back(name, get<T>(name));
    return out;
  }

 private:
  std::vector<PluginRecord> records_;
  std::vector<std::shared_ptr<const Plugin>> plugins_;  // parallel to records_; null when refused
};

// Ties an object made by a plugin to the plugin, so the plugin's library stays loaded until the
// object is gone.
template <class T>
std::shared_ptr<T> keep_loaded(std::unique_ptr<T> object, std::shared_ptr<const Plugin> plugin) {
  return std::shared_ptr<T>(object.release(), [plugin = std::move(plugin)](T* p) { delete p; });
}

}  // namespace peftkit::host

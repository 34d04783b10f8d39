#include "host/plugin_registry.hpp"

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <set>

#include "peftkit/log.hpp"

namespace peftkit::host {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kPluginPrefix = "peftkit-";
constexpr std::string_view kPluginSuffix = ".so";

std::map<std::string, std::string> parse_abi_tag(std::string_view tag) {
  std::map<std::string, std::string> fields;
  size_t start = 0;
  while (start <= tag.size()) {
    size_t end = tag.find(';', start);
    if (end == std::string_view::npos) end = tag.size();
    std::string_view field = tag.substr(start, end - start);
    size_t eq = field.find('=');
    if (!field.empty()) {
      if (eq == std::string_view::npos)
        fields[std::string(field)] = "";
      else
        fields[std::string(field.substr(0, eq))] = std::string(field.substr(eq + 1));
    }
    start = end + 1;
  }
  return fields;
}

bool valid_plugin_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

bool valid_kind(uint32_t kind) {
  return kind == PEFTKIT_KIND_PEFT || kind == PEFTKIT_KIND_DATASET ||
         kind == PEFTKIT_KIND_QUANTIZER;
}

std::string text_or_empty(const char* text) { return text ? std::string(text) : std::string(); }

// Reads and checks the handshake; on success returns the plugin object, else fills the refusal.
std::shared_ptr<const Plugin> load_plugin(PluginRecord& record) {
  auto library = std::make_shared<boost::dll::shared_library>();
  try {
    library->load(record.file,
                  boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    record.refusal = std::string("cannot be loaded: ") + e.what();
    return nullptr;
  }
  if (!library->has(PEFTKIT_HANDSHAKE_SYMBOL)) {
    record.refusal = std::string("exports no peftkit handshake (") + PEFTKIT_HANDSHAKE_SYMBOL +
                     "); is it a peftkit plugin?";
    return nullptr;
  }
  auto handshake_fn = library->get<const peftkit_plugin_handshake*()>(PEFTKIT_HANDSHAKE_SYMBOL);
  const peftkit_plugin_handshake* h = handshake_fn();
  if (h == nullptr || h->magic != PEFTKIT_PLUGIN_MAGIC) {
    record.refusal = "handshake has the wrong magic number (not a peftkit plugin handshake)";
    return nullptr;
  }
  // Fields up to `destroy` exist since API 1.0; a shorter struct is corrupt.
  constexpr size_t kMinimumSize = offsetof(peftkit_plugin_handshake, destroy) + sizeof(h->destroy);
  if (h->struct_size < kMinimumSize) {
    record.refusal = "handshake struct is " + std::to_string(h->struct_size) +
                     " bytes, expected at least " + std::to_string(kMinimumSize);
    return nullptr;
  }
  record.api_major = h->api_major;
  record.api_minor = h->api_minor;
  record.name = text_or_empty(h->name);
  record.version = text_or_empty(h->version);
  record.description = text_or_empty(h->description);
  record.abi_tag = text_or_empty(h->abi_tag);
  if (!valid_kind(h->kind)) {
    record.refusal = "handshake declares unknown plugin kind " + std::to_string(h->kind) +
                     " (expected 1 = peft, 2 = dataset, 3 = quantizer)";
    return nullptr;
  }
  record.kind = static_cast<PluginKind>(h->kind);
  record.handshake_read = true;
  if (!valid_plugin_name(record.name)) {
    record.refusal = "plugin name '" + record.name +
                     "' is not valid (expected 1-64 characters of a-z, 0-9, '-' or '_')";
    return nullptr;
  }
  if (h->api_major != PEFTKIT_API_MAJOR) {
    record.refusal = "SDK API major version is " + std::to_string(h->api_major) +
                     " in the plugin but " + std::to_string(PEFTKIT_API_MAJOR) +
                     " in this host; rebuild the plugin against peftkit SDK " +
                     std::to_string(PEFTKIT_API_MAJOR) + ".x";
    return nullptr;
  }
  if (h->api_minor > PEFTKIT_API_MINOR) {
    record.refusal = "plugin needs SDK API " + std::to_string(h->api_major) + "." +
                     std::to_string(h->api_minor) + " but this host provides " +
                     std::to_string(PEFTKIT_API_MAJOR) + "." + std::to_string(PEFTKIT_API_MINOR) +
                     "; upgrade peftkit";
    return nullptr;
  }
  if (std::string why = compare_abi_tags(record.abi_tag, host_abi_tag()); !why.empty()) {
    record.refusal = why + "; rebuild the plugin with the same LibTorch, compiler and peftkit";
    return nullptr;
  }
  if (h->create == nullptr || h->destroy == nullptr) {
    record.refusal = "handshake has no create/destroy functions";
    return nullptr;
  }
  char err[1024] = {0};
  void* object = h->create(err, sizeof err);
  if (object == nullptr) {
    record.refusal = std::string("failed to initialise: ") + (err[0] ? err : "no reason given");
    return nullptr;
  }
  // The deleter owns the library: it is unloaded only after the plugin object is destroyed, and
  // objects the plugin creates hold the plugin (keep_loaded).
  auto destroy = h->destroy;
  return std::shared_ptr<const Plugin>(
      static_cast<Plugin*>(object),
      [library, destroy](const Plugin* p) { destroy(const_cast<Plugin*>(p)); });
}

}  // namespace

std::string_view host_abi_tag() { return PEFTKIT_ABI_TAG; }

std::string compare_abi_tags(std::string_view plugin_tag, std::string_view host_tag) {
  auto plugin = parse_abi_tag(plugin_tag);
  for (const auto& [field, host_value] : parse_abi_tag(host_tag)) {
    auto it = plugin.find(field);
    if (it == plugin.end())
      return "ABI tag field '" + field + "' is missing in the plugin (its tag is '" +
             std::string(plugin_tag) + "'); this host has '" + host_value + "'";
    if (it->second != host_value)
      return "ABI tag field '" + field + "' is '" + it->second + "' in the plugin but '" +
             host_value + "' in this host";
  }
  return "";
}

std::vector<fs::path> plugin_search_path(const std::vector<fs::path>& cli_dirs) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  fs::path exe = boost::dll::program_location(ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path() / "lib" / "peftkit" / "plugins");
  dirs.insert(dirs.end(), cli_dirs.begin(), cli_dirs.end());
  if (const char* env = std::getenv("PEFTKIT_PLUGIN_PATH")) {
    std::string_view rest = env;
    while (!rest.empty()) {
      size_t colon = rest.find(':');
      std::string_view entry = rest.substr(0, colon);
      if (!entry.empty()) dirs.emplace_back(std::string(entry));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  return dirs;
}

PluginRegistry PluginRegistry::discover(const std::vector<fs::path>& dirs) {
  PluginRegistry registry;
  std::set<fs::path> seen;
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      log::debug("plugin folder " + dir.string() + " does not exist; skipped");
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const std::string file_name = entry.path().filename().string();
      if (file_name.starts_with(kPluginPrefix) && file_name.ends_with(kPluginSuffix))
        files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      fs::path canonical = fs::weakly_canonical(file, ec);
      if (!seen.insert(ec ? file : canonical).second) continue;
      PluginRecord record;
      record.file = file;
      auto plugin = load_plugin(record);
      if (!record.usable()) log::warn("plugin " + file.string() + " refused: " + record.refusal);
      registry.records_.push_back(std::move(record));
      registry.plugins_.push_back(std::move(plugin));
    }
  }
  for (size_t i = 0; i < registry.records_.size(); ++i) {
    const auto& a = registry.records_[i];
    if (!a.handshake_read) continue;
    for (size_t j = 0; j < i; ++j) {
      const auto& b = registry.records_[j];
      if (b.handshake_read && a.kind == b.kind && a.name == b.name)
        throw Error("two " + std::string(plugin_kind_name(a.kind)) + " plugins are named '" +
                    a.name + "': " + b.file.string() + " and " + a.file.string() +
                    "; remove one of them from the plugin path");
    }
  }
  return registry;
}

std::vector<std::string> PluginRegistry::available(PluginKind kind) const {
  std::vector<std::string> names;
  for (size_t i = 0; i < records_.size(); ++i)
    if (plugins_[i] && records_[i].kind == kind) names.push_back(records_[i].name);
  std::sort(names.begin(), names.end());
  return names;
}

int PluginRegistry::api_minor(PluginKind kind, std::string_view name) const {
  for (size_t i = 0; i < records_.size(); ++i)
    if (plugins_[i] && records_[i].kind == kind && records_[i].name == name)
      return records_[i].api_minor;
  return -1;
}

std::shared_ptr<const Plugin> PluginRegistry::find(PluginKind kind, std::string_view name) const {
  for (size_t i = 0; i < records_.size(); ++i) {
    const auto& record = records_[i];
    if (!record.handshake_read || record.kind != kind || record.name != name) continue;
    if (plugins_[i]) return plugins_[i];
    throw Error(std::string(plugin_kind_name(kind)) + " plugin '" + std::string(name) + "' (" +
                record.file.string() + ") was refused: " + record.refusal);
  }
  std::string list;
  for (const auto& available_name : available(kind))
    list += (list.empty() ? "" : ", ") + available_name;
  throw Error("no " + std::string(plugin_kind_name(kind)) + " plugin named '" + std::string(name) +
              "'; available: " + (list.empty() ? "none" : list));
}

}  // namespace peftkit::host

// Helpers for the libFuzzer targets: the parsers under test read files, so each input is written
// to a per-process file first (in /dev/shm when there is one). An input a parser refuses must be
// refused with peftkit::Error; any other exception, a crash, a sanitizer report, a leak, a hang or
// a memory blow-up is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/plugin_abi.h"

// Defined by the plugin source a dataset or quantizer target links (PEFTKIT_PLUGIN).
extern "C" const peftkit_plugin_handshake* peftkit_plugin_handshake_v1(void);

namespace peftkit::fuzz {

// A folder of this process's own, removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    auto path = base / ("peftkit-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return path;
  }();
  return dir;
}

// Writes `size` bytes to scratch_dir()/name and returns the path.
inline std::filesystem::path write_input(const std::string& name, const uint8_t* data,
                                         size_t size) {
  const auto path = scratch_dir() / name;
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (size) std::fwrite(data, 1, size, out);
  std::fclose(out);
  return path;
}

// Runs `parse`; peftkit::Error is the expected way to refuse an input.
template <class F>
int expect_ok_or_error(F&& parse) {
  try {
    parse();
  } catch (const Error&) {
  }
  return 0;
}

// The plugin object of a plugin whose source is linked into this fuzz target (its handshake).
template <class PluginType>
const PluginType& linked_plugin() {
  static const PluginType* plugin = [] {
    char error[256] = {0};
    auto* raw = static_cast<Plugin*>(peftkit_plugin_handshake_v1()->create(error, sizeof error));
    return dynamic_cast<const PluginType*>(raw);
  }();
  return *plugin;
}

}  // namespace peftkit::fuzz

// plugin.hpp: how a shared library becomes a peftkit plugin.
//
// A plugin is one class deriving from the kind's interface (PeftPlugin, DatasetPlugin or
// QuantizerPlugin), registered with one macro in one .cpp file:
//
//   #include <peftkit/dataset.hpp>
//   #include <peftkit/plugin.hpp>
//
//   class TokenLinesPlugin final : public peftkit::DatasetPlugin {
//     peftkit::OptionSchema options() const override { ... }
//     std::unique_ptr<peftkit::Dataset> open(...) const override { ... }
//   };
//   PEFTKIT_PLUGIN(TokenLinesPlugin, "token-lines", "1.0.0", "one sample of token ids per line")
//
// and built with peftkit_plugin(NAME token-lines KIND dataset SRCS ...) from the CMake package.
// The macro exports the C handshake of <peftkit/plugin_abi.h>, stamped with this build's ABI tag.
#pragma once

#include <torch/version.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "peftkit/build_config.hpp"
#include "peftkit/options.hpp"
#include "peftkit/plugin_abi.h"

namespace peftkit {

enum class PluginKind : uint32_t {
  kPeft = PEFTKIT_KIND_PEFT,
  kDataset = PEFTKIT_KIND_DATASET,
  kQuantizer = PEFTKIT_KIND_QUANTIZER,
};
// "peft", "dataset", "quantizer"; recipes name them [peft], [data], [quant].
std::string_view plugin_kind_name(PluginKind kind);

// The part every plugin kind shares: the recipe table it accepts. Its table is [peft.<name>] for a
// PEFT method, [data.<name>] for a dataset format and [quant.<name>] for a quantizer.
class Plugin {
 public:
  virtual ~Plugin();
  // Every key the plugin's table accepts, with defaults, bounds and help text.
  virtual OptionSchema options() const = 0;
  // Checks that involve several keys, after the schema check. Throw options.error(key, why).
  virtual void validate(const Options& options) const;
};

}  // namespace peftkit

#define PEFTKIT_STRINGIFY_IMPL_(x) #x
#define PEFTKIT_STRINGIFY_(x) PEFTKIT_STRINGIFY_IMPL_(x)
#if defined(__clang__)
#define PEFTKIT_COMPILER_TAG "clang" PEFTKIT_STRINGIFY_(__clang_major__)
#elif defined(__GNUC__)
#define PEFTKIT_COMPILER_TAG "gcc" PEFTKIT_STRINGIFY_(__GNUC__)
#else
#define PEFTKIT_COMPILER_TAG "unknown"
#endif

// Everything that must agree between the host and a plugin for C++ objects to cross between them.
#define PEFTKIT_ABI_TAG                                                             \
  "torch=" TORCH_VERSION                                                            \
  ";cxx11abi=" PEFTKIT_STRINGIFY_(_GLIBCXX_USE_CXX11_ABI) ";cuda=" PEFTKIT_CUDA_TAG \
                                                          ";compiler=" PEFTKIT_COMPILER_TAG

// Exports the handshake for PluginClass; use this in exactly one .cpp file of a plugin.
#define PEFTKIT_PLUGIN(PluginClass, name_literal, version_literal, description_literal)      \
  PEFTKIT_PLUGIN_HANDSHAKE_(PluginClass, name_literal, version_literal, description_literal, \
                            PEFTKIT_API_MAJOR, PEFTKIT_API_MINOR, PEFTKIT_ABI_TAG)

// Internal: the handshake with explicit version fields. Only tests call it directly, to build
// plugins that the host must refuse.
#define PEFTKIT_PLUGIN_HANDSHAKE_(PluginClass, name_literal, version_literal, description_literal, \
                                  api_major, api_minor, abi_tag)                                   \
  extern "C" __attribute__((visibility("default"))) const peftkit_plugin_handshake*                \
  peftkit_plugin_handshake_v1(void) {                                                              \
    static const peftkit_plugin_handshake handshake = {                                            \
        PEFTKIT_PLUGIN_MAGIC,                                                                      \
        sizeof(peftkit_plugin_handshake),                                                          \
        api_major,                                                                                 \
        api_minor,                                                                                 \
        static_cast<uint32_t>(PluginClass::kKind),                                                 \
        name_literal,                                                                              \
        version_literal,                                                                           \
        description_literal,                                                                       \
        abi_tag,                                                                                   \
        [](char* err, uint32_t err_len) noexcept -> void* {                                        \
          try {                                                                                    \
            return static_cast<::peftkit::Plugin*>(new PluginClass());                             \
          } catch (const std::exception& e) {                                                      \
            std::snprintf(err, err_len, "%s", e.what());                                           \
          } catch (...) {                                                                          \
            std::snprintf(err, err_len, "unknown exception while creating the plugin");            \
          }                                                                                        \
          return nullptr;                                                                          \
        },                                                                                         \
        [](void* plugin) noexcept { delete static_cast<::peftkit::Plugin*>(plugin); },             \
    };                                                                                             \
    return &handshake;                                                                             \
  }

// log.hpp: logging for the host and for plugins.
//
// A deliberately narrow API: the implementation uses spdlog, which must never share a translation
// unit with LibTorch headers (LibTorch ships its own, newer fmt). Plugins log through these
// functions, so every message goes to the same console and run log file.
//
//   peftkit::log::info("lora: attached to " + std::to_string(n) + " linear sites");
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace peftkit::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Parses "trace|debug|info|warn|error|off"; throws peftkit::Error naming the accepted values.
Level parse_level(std::string_view text);
std::string_view level_name(Level level);

void set_level(Level level);
Level level();

// Also write every message to this file (appending), e.g. <output dir>/peftkit.log.
void add_file(const std::filesystem::path& path);

void write(Level level, std::string_view message);
inline void trace(std::string_view m) { write(Level::kTrace, m); }
inline void debug(std::string_view m) { write(Level::kDebug, m); }
inline void info(std::string_view m) { write(Level::kInfo, m); }
inline void warn(std::string_view m) { write(Level::kWarn, m); }
inline void error(std::string_view m) { write(Level::kError, m); }

}  // namespace peftkit::log

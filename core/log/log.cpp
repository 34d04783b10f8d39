// The only translation unit that sees spdlog. It must never include LibTorch headers: LibTorch's
// include folder carries a newer fmt than the one Debian's spdlog was built with.
#include "peftkit/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>

#include "peftkit/error.hpp"

namespace peftkit::log {
namespace {

constexpr std::string_view kLevelNames[] = {"trace", "debug", "info", "warn", "error", "off"};

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::kTrace:
      return spdlog::level::trace;
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarn:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
    case Level::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

struct State {
  std::mutex mutex;
  Level level = Level::kInfo;
  std::shared_ptr<spdlog::logger> logger;
};

State& state() {
  static State s;
  return s;
}

spdlog::logger& logger_locked(State& s) {
  if (!s.logger) {
    // Messages go to stderr so that command output on stdout (recipes, tables) stays clean.
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    console->set_pattern("[%H:%M:%S] %^%l%$ %v");
    s.logger = std::make_shared<spdlog::logger>("peftkit", console);
    s.logger->set_level(spdlog::level::trace);
    console->set_level(to_spdlog(s.level));
  }
  return *s.logger;
}

}  // namespace

Level parse_level(std::string_view text) {
  for (size_t i = 0; i < std::size(kLevelNames); ++i)
    if (text == kLevelNames[i]) return static_cast<Level>(i);
  throw Error("log level: expected one of trace, debug, info, warn, error, off; found '" +
              std::string(text) + "'");
}

std::string_view level_name(Level level) { return kLevelNames[static_cast<size_t>(level)]; }

void set_level(Level level) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  s.level = level;
  // The level filters the console; a run's log file always records info and above.
  logger_locked(s).sinks().front()->set_level(to_spdlog(level));
}

Level level() {
  State& s = state();
  std::lock_guard lock(s.mutex);
  return s.level;
}

void add_file(const std::filesystem::path& path) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> file;
  try {
    file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string(), /*truncate=*/false);
  } catch (const spdlog::spdlog_ex& e) {
    throw Error(path.string() + ": cannot open the log file for appending (" + e.what() + ")");
  }
  file->set_pattern("[%Y-%m-%d %H:%M:%S.%e] %l %v");
  file->set_level(std::min(to_spdlog(s.level), spdlog::level::info));
  logger_locked(s).sinks().push_back(file);
}

void write(Level level, std::string_view message) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  auto& logger = logger_locked(s);
  logger.log(to_spdlog(level), "{}", message);
  logger.flush();
}

}  // namespace peftkit::log

#include "peftkit/log.hpp"

#include <gtest/gtest.h>

#include "peftkit/error.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

TEST(Log, ParsesLevelsAndNamesTheAcceptedOnesOnError) {
  EXPECT_EQ(log::parse_level("debug"), log::Level::kDebug);
  EXPECT_EQ(log::level_name(log::Level::kWarn), "warn");
  try {
    log::parse_level("verbose");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(
        e.what(),
        "log level: expected one of trace, debug, info, warn, error, off; found 'verbose'");
  }
}

TEST(Log, WritesToTheRunLogFile) {
  testing::TempDir dir;
  log::set_level(log::Level::kWarn);
  log::add_file(dir / "peftkit.log");
  log::info("recorded in the file although the console shows only warnings");
  log::debug("not recorded");
  const std::string text = testing::read_file(dir / "peftkit.log");
  EXPECT_NE(text.find("info recorded in the file"), std::string::npos) << text;
  EXPECT_EQ(text.find("not recorded"), std::string::npos) << text;
}

TEST(Log, UnwritableFileIsAnErrorNamingIt) {
  testing::TempDir dir;
  testing::write_file(dir / "plain-file", "a file, so no folder can be made under it");
  const auto path = dir / "plain-file" / "peftkit.log";
  try {
    log::add_file(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find(path.string() + ": cannot open the log file for appending"),
        std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace peftkit

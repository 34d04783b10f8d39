// Runs the peftkit program as a user would.
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace peftkit {
namespace {

using testing::run_command;

using testing::peftkit_command;

TEST(Cli, VersionNamesLibTorchAndSdk) {
  auto result = run_command(peftkit_command("--version"));
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_NE(result.output.find("peftkit 0.1.0 (LibTorch 2.11.0"), std::string::npos)
      << result.output;
}

TEST(Cli, HelpListsCommandsAndEveryCommandHasHelp) {
  auto result = run_command(peftkit_command("--help"));
  EXPECT_EQ(result.exit_code, 0);
  // Every command: listed, and its --help gives its usage line and the common options.
  for (const char* command :
       {"train", "recipe", "init-model", "inspect", "generate", "chat", "eval", "compare", "merge",
        "export", "convert", "plugins", "launch"}) {
    EXPECT_NE(result.output.find(std::string("  ") + command + " "), std::string::npos)
        << command << " is not listed: " << result.output;
    auto help = run_command(peftkit_command(std::string(command) + " --help"));
    EXPECT_EQ(help.exit_code, 0) << help.output;
    EXPECT_NE(help.output.find(std::string("peftkit ") + command), std::string::npos)
        << help.output;
    EXPECT_NE(help.output.find("--log-level"), std::string::npos) << command << ": " << help.output;
  }
}

TEST(Cli, UnknownCommandAndBadOptionsAreUsageErrors) {
  auto result = run_command(peftkit_command("trian"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.output.find("unknown command 'trian'"), std::string::npos) << result.output;
  result = run_command(peftkit_command("plugins --frobnicate"));
  EXPECT_EQ(result.exit_code, 2);
  result = run_command(peftkit_command("plugins --log-level loud"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.output.find("found 'loud'"), std::string::npos) << result.output;
}

TEST(Cli, PluginsListsKindVersionAndAbiStatus) {
  auto result =
      run_command(peftkit_command("plugins --log-level error --plugin-dir " FIXTURE_VALID_DIR
                                  " --plugin-dir " FIXTURE_MISMATCHED_DIR));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("peft       fixture          0.0.1     ok"), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("peft       wrong-abi        1.0.0     refused"), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("ABI tag field 'torch' is '0.0.0-fixture'"), std::string::npos)
      << result.output;
}

TEST(Cli, PluginPathEnvironmentVariableIsSearched) {
  auto result =
      run_command("PEFTKIT_PLUGIN_PATH=" FIXTURE_EXAMPLE_DIR " " + peftkit_command("plugins"));
  EXPECT_NE(result.output.find("token-lines"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("searched: "), std::string::npos) << "only with --paths";
  // --paths names every folder searched, in order: the built-in one, --plugin-dir, the variable's.
  result = run_command("PEFTKIT_PLUGIN_PATH=" FIXTURE_EXAMPLE_DIR " " +
                       peftkit_command("plugins --paths --plugin-dir " FIXTURE_VALID_DIR));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  const size_t given = result.output.find("searched: " FIXTURE_VALID_DIR "\n"),
               from_variable = result.output.find("searched: " FIXTURE_EXAMPLE_DIR "\n");
  EXPECT_NE(given, std::string::npos) << result.output;
  EXPECT_NE(from_variable, std::string::npos) << result.output;
  EXPECT_LT(given, from_variable) << result.output;
}

TEST(Cli, RecipeShowAndCheck) {
  testing::TempDir dir;
  auto recipe = testing::write_file(dir / "r.toml",
                                    "[model]\npath = \"m.pth\"\n[data]\nformat = \"token-lines\"\n"
                                    "path = \"ids.txt\"\n");
  const std::string dirs = " --plugin-dir " FIXTURE_EXAMPLE_DIR;
  auto result =
      run_command(peftkit_command("recipe show " + recipe.string() + dirs + " --set train.seed=3"));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("seed = 3"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("# --set train.seed=3"), std::string::npos) << result.output;
  result = run_command(peftkit_command("recipe check " + recipe.string() + dirs));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  result = run_command(
      peftkit_command("recipe check " + recipe.string() + dirs + " --set train.ctx_len=0"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("error: --set train.ctx_len=0: [train] ctx_len"), std::string::npos)
      << result.output;
  result = run_command(peftkit_command("recipe check " + (dir / "missing.toml").string()));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.output.find("missing.toml: cannot open the recipe file"), std::string::npos);
  result = run_command(peftkit_command("recipe frobnicate " + recipe.string()));
  EXPECT_EQ(result.exit_code, 1);
}

}  // namespace
}  // namespace peftkit

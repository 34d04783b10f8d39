// Every shipped recipe validates and trains (two steps) on the CPU with the built-in small model
// of the quickstart (an RWKV-6 one of the same size for the x060-* recipes), its own settings
// untouched apart from the model, output folder and length.
#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

class ShippedRecipes : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir;
    auto made = testing::run_command(
        testing::peftkit_command("init-model --layers 2 --embd 128 --seed 0 --out " +
                                 (dir_->path() / "model.pth").string()));
    ASSERT_EQ(made.exit_code, 0) << made.output;
    made = testing::run_command(
        testing::peftkit_command("init-model --arch x060 --layers 2 --embd 128 --seed 0 --out " +
                                 (dir_->path() / "model-x060.pth").string()));
    ASSERT_EQ(made.exit_code, 0) << made.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static inline testing::TempDir* dir_ = nullptr;
};

TEST_P(ShippedRecipes, TrainsOnTheBuiltInSmallModel) {
  const std::filesystem::path recipe = std::filesystem::path(RECIPES_DIR) / (GetParam() + ".toml");
  const std::filesystem::path out = dir_->path() / GetParam();
  // The x060-* recipes tune an RWKV-6 model, the others the quickstart's RWKV-7 one.
  const std::string model = GetParam().starts_with("x060-") ? "model-x060.pth" : "model.pth";
  auto run = testing::run_command(testing::peftkit_command(
      "train " + recipe.string() + " --set model.path=" + (dir_->path() / model).string() +
      " --set output.dir=" + out.string() + " --set train.epoch_steps=2 --set train.epoch_count=1" +
      (GetParam() == "qlora-nf4"
           ? " --set quant.cache_file=" + (out / "base.nf4.safetensors").string()
           : "")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("trainable parameters: "), std::string::npos);
  EXPECT_EQ(testing::read_metrics(out / "metrics.jsonl").size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(out / "rwkv-0.pth"));
}

// recipes/compare.toml as shipped, on the built-in small model with a budget of two steps: every
// run trains, the report is written with every run in it.
TEST_F(ShippedRecipes, TheShippedCompareRunsOnTheBuiltInSmallModel) {
  std::string text = testing::read_file(std::filesystem::path(RECIPES_DIR) / "compare.toml");
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
  };
  replace("\"../out/quickstart/rwkv-2.pth\"", "\"" + (dir_->path() / "model.pth").string() + "\"");
  replace("\"../out/compare\"", "\"" + (dir_->path() / "compare").string() + "\"");
  replace("steps = 40", "steps = 2");
  replace("\"data/quickstart.jsonl\"", "\"" RECIPES_DIR "/data/quickstart.jsonl\"");
  replace("\"data/compare-eval.jsonl\"", "\"" RECIPES_DIR "/data/compare-eval.jsonl\"");
  replace("max_tokens = 40", "max_tokens = 4");
  testing::write_file(dir_->path() / "compare.toml", text);
  auto run = testing::run_command(
      testing::peftkit_command("compare " + (dir_->path() / "compare.toml").string()));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const std::string report = testing::read_file(dir_->path() / "compare" / "report.md");
  for (const char* name :
       {"| state | state |", "| lora | lora |", "| pissa | pissa |", "| miss | miss |"})
    EXPECT_NE(report.find(name), std::string::npos) << name << "\n" << report;
  EXPECT_TRUE(std::filesystem::exists(dir_->path() / "compare" / "report.html"));
}

INSTANTIATE_TEST_SUITE_P(Recipes, ShippedRecipes,
                         ::testing::Values("quickstart", "state", "lora", "pissa", "miss",
                                           "qlora-nf4", "state-int8", "x060-state", "x060-lora"));

}  // namespace
}  // namespace peftkit

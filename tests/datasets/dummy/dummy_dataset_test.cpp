// The dummy dataset plugin: random tokens of a given length and count, a pure function of
// (seed, index); and it serves training and eval through the program like any dataset plugin.
#include <gtest/gtest.h>

#include <set>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

class DummyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new host::PluginRegistry(host::PluginRegistry::discover({PLUGIN_DIR}));
  }
  static void TearDownTestSuite() { delete registry_; }
  std::shared_ptr<Dataset> open(int64_t ctx_len, int64_t vocab, uint64_t seed, int64_t count = 0,
                                int64_t length = 0, int64_t option_vocab = 0) {
    auto plugin = registry_->get<DatasetPlugin>("dummy");
    Options options = host::default_options(plugin->options(), "data.dummy");
    if (count) options.set("count", count, OptionSource::kRecipe);
    if (length) options.set("length", length, OptionSource::kRecipe);
    if (option_vocab) options.set("vocab", option_vocab, OptionSource::kRecipe);
    return host::keep_loaded(plugin->open({"-", ctx_len, vocab, seed, nullptr}, options), plugin);
  }
  static host::PluginRegistry* registry_;
};
host::PluginRegistry* DummyTest::registry_ = nullptr;

TEST_F(DummyTest, SamplesAreFullWindowsOfRandomIdsAndAPureFunctionOfSeedAndIndex) {
  auto data = open(16, 300, 7, 50);
  ASSERT_EQ(data->size(), 50);
  std::set<int32_t> seen;
  for (int64_t i = 0; i < data->size(); ++i) {
    const Sample s = data->sample(i);
    ASSERT_EQ(s.input_ids.size(), 16u);  // ctx_len + 1 tokens: 16 inputs, 16 targets
    ASSERT_EQ(s.targets.size(), 16u);
    for (size_t t = 0; t + 1 < s.input_ids.size(); ++t) EXPECT_EQ(s.targets[t], s.input_ids[t + 1]);
    for (int32_t id : s.input_ids) {
      EXPECT_GE(id, 1);
      EXPECT_LT(id, 300);
      seen.insert(id);
    }
    EXPECT_EQ(s.input_ids, data->sample(i).input_ids);  // pure
  }
  EXPECT_GT(seen.size(), 250u);  // 800 draws from 299 ids cover nearly all of them
  EXPECT_NE(data->sample(0).input_ids, data->sample(1).input_ids);
  EXPECT_NE(open(16, 300, 8, 50)->sample(0).input_ids,
            data->sample(0).input_ids);                                // the seed matters
  EXPECT_EQ(open(16, 300, 7, 50, 5)->sample(3).input_ids.size(), 4u);  // length = 5 tokens
  EXPECT_EQ(open(16, 300, 7, 50)->describe(), "dummy: 50 samples of 17 random tokens in [1, 300)");
}

TEST_F(DummyTest, SettingsOutsideTheModelAreRefused) {
  auto message = [&](auto&& open_it) {
    try {
      open_it();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(message([&] {
              open(16, 300, 0, 10, 0, 301);
            }).find("301 is more than the model's vocabulary of 300"),
            std::string::npos);
  EXPECT_NE(message([&] { open(16, 0, 0, 10); }).find("set vocab when the model's is unknown"),
            std::string::npos);
  EXPECT_NE(message([&] { open(16, 300, 0, 10, 1); }).find("at least 2 tokens"), std::string::npos);
}

// Through the program: a recipe trains on it, and eval reads it, with no file behind [data] path.
TEST_F(DummyTest, TrainsAndEvaluatesThroughTheProgram) {
  testing::TempDir dir;
  auto made = testing::run_command(
      testing::peftkit_command("init-model --layers 1 --embd 64 --head-size 16 --vocab 300 "
                               "--seed 1 --out " +
                               (dir / "model.pth").string()));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  testing::write_file(dir / "recipe.toml",
                      "[model]\npath = \"model.pth\"\n[data]\nformat = \"dummy\"\npath = \"-\"\n"
                      "[data.dummy]\ncount = 8\n[train]\nctx_len = 16\nmicro_bsz = 2\n"
                      "epoch_steps = 2\nepoch_count = 1\n[run]\ndevice = \"cpu\"\n");
  auto trained =
      testing::run_command(testing::peftkit_command("train " + (dir / "recipe.toml").string()));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  EXPECT_EQ(testing::read_metrics(dir / "out" / "metrics.jsonl").size(), 2u);
  auto evaluated = testing::run_command(
      testing::peftkit_command("eval --model " + (dir / "model.pth").string() +
                               " --data - --format dummy --set data.dummy.count=3 --ctx-len 10 "
                               "--device cpu --json " +
                               (dir / "eval.json").string()));
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
  EXPECT_NE(testing::read_file(dir / "eval.json").find("\"tokens\": 30"),
            std::string::npos);  // 3 samples x 10
}

}  // namespace
}  // namespace peftkit

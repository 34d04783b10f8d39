// Issue 18's "done when", through the program: an RWKV-6 (x060) model written by Python's
// torch.save with official key names (bf16, shuffled order) trains with every method and both
// quantizers, each trained adapter evaluates the same mounted and merged, a tuned state exported
// for Ai00 mounts to the same numbers, and `peftkit generate` runs with the state mounted.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

using testing::peftkit_command;
using testing::run_command;

class X060Program : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir;
    const auto& d = dir_->path();
    // The fp64 reference script perturbs peftkit's initialisation and saves it with torch.save.
    auto made = run_command(peftkit_command(
        "init-model --arch x060 --layers 2 --embd 64 --head-size 16 --vocab 300 --seed 2 "
        "--dtype fp32 --out " +
        (d / "init.pth").string()));
    ASSERT_EQ(made.exit_code, 0) << made.output;
    testing::write_file(d / "tokens", "1\n2\n3\n");
    made = run_command(std::string(PEFTKIT_PYTHON) + " " RWKV6_REFERENCE_SCRIPT " " + d.string());
    ASSERT_EQ(made.exit_code, 0) << made.output;
    made = testing::write_token_stream(PEFTKIT_PYTHON, d / "tokens.npy");
    ASSERT_EQ(made.exit_code, 0) << made.output;
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::filesystem::path path(const std::string& name) { return dir_->path() / name; }

  // Trains model.pth with `peft` (TOML) into out-NAME for 8 steps; returns the losses.
  static std::vector<double> train(const std::string& name, const std::string& peft) {
    const auto recipe = testing::write_file(
        path(name + ".toml"),
        "[model]\npath = \"model.pth\"\n[data]\nformat = \"numpy\"\npath = \"tokens.npy\"\n" +
            peft +
            "\n[train]\nctx_len = 16\nmicro_bsz = 2\nepoch_steps = 8\nepoch_count = 1\n"
            "lr_init = 1e-2\nlr_final = 1e-3\nprecision = \"fp32\"\n[output]\ndir = \"out-" +
            name + "\"\n");
    auto run = run_command(peftkit_command("train " + recipe.string()));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    std::vector<double> losses;
    for (const auto& line : testing::read_metrics(path("out-" + name) / "metrics.jsonl"))
      losses.push_back(line["loss"].get<double>());
    return losses;
  }

  // The loss of `model` (with `mounts`) on the token stream, from `peftkit eval --json`.
  static double eval_loss(const std::string& model, const std::string& mounts = "") {
    const auto json = path("eval.json");
    auto run = run_command(peftkit_command("eval --model " + path(model).string() + " " + mounts +
                                           " --data " + path("tokens.npy").string() +
                                           " --format numpy --ctx-len 16 --device cpu --json " +
                                           json.string()));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return nlohmann::json::parse(testing::read_file(json))["variants"].back()["loss"].get<double>();
  }

  static inline testing::TempDir* dir_ = nullptr;
};

TEST_F(X060Program, EveryMethodTrainsAndMergesToWhatItComputedMounted) {
  const double base = eval_loss("model.pth");
  const std::vector<std::pair<std::string, std::string>> methods = {
      {"lora", "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8"},
      {"pissa", "[peft]\nmethod = \"pissa\"\n[peft.pissa]\nr = 4\nalpha = 4"},
      {"miss", "[peft]\nmethod = \"miss\"\n[peft.miss]\nr = 8"},
      {"lora-nf4",
       "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n[quant]\nmethod = "
       "\"nf4\""},
      {"state-int8", "[peft]\nmethod = \"state\"\n[quant]\nmethod = \"int8\""},
  };
  for (const auto& [name, peft] : methods) {
    SCOPED_TRACE(name);
    const auto losses = train(name, peft);
    ASSERT_EQ(losses.size(), 8u);
    const auto adapter = path("out-" + name) / "rwkv-0.pth";
    const double mounted = eval_loss("model.pth", "--adapter " + adapter.string());
    EXPECT_LT(mounted, base) << "training did not lower the loss";
    if (name.find('-') != std::string::npos) continue;  // quantized bases merge approximately
    auto merged = run_command(peftkit_command("merge --base " + path("model.pth").string() +
                                              " --adapter " + adapter.string() + " --output " +
                                              path(name + "-merged.pth").string()));
    ASSERT_EQ(merged.exit_code, 0) << merged.output;
    // The merged file is bf16 like its base; the adapter ran on the bf16 base in fp32.
    EXPECT_NEAR(eval_loss(name + "-merged.pth"), mounted, 2e-3 * mounted);
  }
}

TEST_F(X060Program, ATunedStateGeneratesAndExportsForAi00) {
  const auto losses = train("state", "[peft]\nmethod = \"state\"");
  ASSERT_EQ(losses.size(), 8u);
  const auto state = path("out-state") / "rwkv-0.pth";
  const double tuned = eval_loss("model.pth", "--state " + state.string());
  EXPECT_LT(tuned, eval_loss("model.pth"));
  auto exported = run_command(peftkit_command(
      "export --base " + path("model.pth").string() + " --adapter " + state.string() +
      " --format ai00 --output " + path("state.ai00.safetensors").string()));
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  // Ai00's file is F16 and transposed: the same state up to fp16 rounding of the bf16 values.
  EXPECT_NEAR(eval_loss("model.pth", "--adapter " + path("state.ai00.safetensors").string()), tuned,
              1e-4 * tuned);
  auto generated = run_command(peftkit_command(
      "generate --model " + path("model.pth").string() + " --state " + state.string() +
      " --prompt a --max-tokens 8 --temperature 0 --log-level warn"));
  EXPECT_EQ(generated.exit_code, 0) << generated.output;
}

}  // namespace
}  // namespace peftkit

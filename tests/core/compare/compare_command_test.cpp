// `peftkit compare` on a tiny model: the report's numbers are the runs' own (metrics.jsonl,
// summary.json) and the evaluation's; an interrupted compare continues without redoing finished
// runs; a bad compare file is refused before anything trains; the HTML report renders in a browser.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "model/rwkv_model.hpp"
#include "model_fixtures.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::peftkit_command;
using testing::run_command;

json read_json(const fs::path& path) { return json::parse(testing::read_file(path)); }

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class CompareCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shared_ = new testing::TempDir();
    write_pth(shared_->path() / "model.pth",
              testing::perturbed_model(model::ModelConfig::for_size(2, 64, 65536, 32), 8));
    auto tokens = run_command(std::string(PEFTKIT_PYTHON) + " -c \"import numpy as np; np.save('" +
                              (shared_->path() / "tokens.npy").string() +
                              "', (np.arange(1200) * 7 % 50 + 300).astype('<u2'))\"");
    ASSERT_EQ(tokens.exit_code, 0) << tokens.output;
    // The three-run compare every test but the interrupted one reads.
    testing::write_file(shared_->path() / "compare.toml", compare_text(4));
    finished_ = new testing::CommandResult(
        run_command(peftkit_command("compare " + (shared_->path() / "compare.toml").string())));
  }
  static void TearDownTestSuite() {
    delete finished_;
    delete shared_;
  }

  static std::string compare_text(int steps, const std::string& output = "out") {
    return "[compare]\noutput = \"" + output +
           "\"\nthreads = 1\n"
           "[budget]\nsteps = " +
           std::to_string(steps) +
           "\nevaluations = 2\n"
           "[generation]\nprompts = [\"User: What is rain?\\n\\nAssistant:\", \"The sea "
           "is\"]\nmax_tokens = 6\n"
           "[model]\npath = \"model.pth\"\n"
           "[data]\nformat = \"numpy\"\npath = \"tokens.npy\"\neval_fraction = "
           "0.25\n[data.numpy]\norder = \"sequential\"\n"
           "[train]\nctx_len = 16\nmicro_bsz = 2\nlr_init = 1e-3\nlr_final = 1e-3\nprecision = "
           "\"fp32\"\n"
           "[[run]]\nname = \"state\"\n[run.peft]\nmethod = \"state\"\n[run.train]\nlr_init = "
           "1e-2\nlr_final = 1e-2\n"
           "[[run]]\nname = \"lora\"\n[run.peft]\nmethod = \"lora\"\n[run.peft.lora]\nr = 4\nalpha "
           "= 8\n"
           "[[run]]\nname = \"miss\"\n[run.peft]\nmethod = \"miss\"\n[run.peft.miss]\nr = 16\n";
  }
  static fs::path out() { return shared_->path() / "out"; }

  static testing::TempDir* shared_;
  static testing::CommandResult* finished_;
  testing::TempDir local_;
};
testing::TempDir* CompareCommand::shared_ = nullptr;
testing::CommandResult* CompareCommand::finished_ = nullptr;

TEST_F(CompareCommand, TheReportHoldsTheRunsOwnNumbers) {
  ASSERT_EQ(finished_->exit_code, 0) << finished_->output;
  const json report = read_json(out() / "report.json");
  const json& variants = report["variants"];
  ASSERT_EQ(variants.size(), 4u);
  EXPECT_EQ(variants[0]["name"], "base");
  const double base_loss = variants[0]["eval"]["loss"].get<double>();
  for (size_t i = 1; i < variants.size(); ++i) {
    const json& run = variants[i];
    const fs::path folder = out() / "runs" / run["name"].get<std::string>();
    SCOPED_TRACE(folder.string());
    const json summary = read_json(folder / "summary.json");
    const auto metrics = testing::read_metrics(folder / "metrics.jsonl");
    EXPECT_EQ(run["steps"], 4);
    for (const char* key : {"trainable_parameters", "adapter_bytes", "tokens_per_s", "wall_seconds",
                            "peak_rss_bytes", "tokens"})
      EXPECT_EQ(run[key], summary[key]) << key;
    EXPECT_GT(run["trainable_parameters"].get<int64_t>(), 0);
    EXPECT_EQ(run["adapter_bytes"].get<int64_t>(),
              static_cast<int64_t>(fs::file_size(folder / "rwkv-0.pth")));
    // Curves: every step's loss and every evaluation, against the tokens seen.
    std::vector<json> train, eval;
    for (const auto& m : metrics) {
      if (m.contains("loss")) train.push_back({m["tokens"], m["loss"]});
      if (m.contains("eval_loss")) eval.push_back({m["tokens"], m["eval_loss"]});
    }
    EXPECT_EQ(run["curves"]["train"], json(train));
    EXPECT_EQ(run["curves"]["eval"], json(eval));
    ASSERT_EQ(eval.size(), 3u);  // before the first step, after step 2, after step 4
    EXPECT_EQ(run["final_train_loss"].get<double>(),
              metrics.back()["loss"].get<double>());  // the last tenth: 1 step
    // Before training each method is the identity (zero state, zero B, zero D): the base's loss.
    EXPECT_NEAR(eval.front()[1].get<double>(), base_loss, 1e-6 * base_loss);
    // After training: what training's last evaluation reported (the state file is bf16).
    const double last = eval.back()[1].get<double>();
    EXPECT_NEAR(run["eval"]["loss"].get<double>(), last,
                (run["name"] == "state" ? 2e-2 : 1e-6) * last);
    EXPECT_NEAR(run["eval"]["perplexity"].get<double>(),
                std::exp(run["eval"]["loss"].get<double>()), 1e-6);
    EXPECT_EQ(run["eval"]["tokens"], variants[0]["eval"]["tokens"]);  // the same held-out samples
    EXPECT_EQ(run["generations"].size(), 2u);
  }
  EXPECT_EQ(variants[0]["generations"].size(), 2u);
  // The rendered reports say the same.
  const std::string markdown = testing::read_file(out() / "report.md");
  EXPECT_NE(markdown.find("| run | method(s) | trainable params |"), std::string::npos) << markdown;
  EXPECT_GE(count(markdown, "★"), 1 + 9)
      << markdown;  // the legend, and the best run(s) of each numeric column
  const std::string html = testing::read_file(out() / "report.html");
  EXPECT_EQ(count(html, "<g class=\"series\""), 6);  // one series per run in each of the two charts
  for (const char* name : {"state", "lora", "miss"})
    EXPECT_EQ(count(html, std::string("<g class=\"series\" data-run=\"") + name + "\""), 2) << name;
  EXPECT_EQ(html.find("http://www.w3.org/2000/svg\" role"),
            html.find("http://www.w3.org/2000/svg"));  // no other URL
  EXPECT_EQ(count(html, "src="), 0);
  EXPECT_EQ(count(html, "<script"), 0);
}

TEST_F(CompareCommand, ABadCompareFileIsRefusedBeforeTraining) {
  for (const char* file : {"model.pth", "tokens.npy"})
    fs::copy_file(shared_->path() / file, local_ / file);
  auto refuse = [&](const std::string& text, const std::string& message) {
    testing::write_file(local_ / "c.toml", text);
    auto result = run_command(peftkit_command("compare " + (local_ / "c.toml").string()));
    EXPECT_EQ(result.exit_code, 1) << result.output;
    EXPECT_NE(result.output.find(message), std::string::npos) << message << "\n" << result.output;
    EXPECT_FALSE(fs::exists(local_ / "out")) << "nothing is written before the file is valid";
  };
  const std::string good = compare_text(4);
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    text.replace(text.find(from), from.size(), to);
    return text;
  };
  // file:line of the bad key, with the closest valid name, inside a run's [run.train].
  const std::string typo = replaced("[run.train]\nlr_init = 1e-2", "[run.train]\nlr_innit = 1e-2");
  const int line =
      static_cast<int>(std::count(typo.begin(), typo.begin() + typo.find("lr_innit"), '\n')) + 1;
  refuse(typo, "c.toml:" + std::to_string(line) +
                   ":1: unknown key 'lr_innit' in [train]; did you mean 'lr_init'?");
  refuse(replaced("name = \"lora\"", "name = \"state\""), "a second run named 'state'");
  // A run name names a folder under the output folder: none may leave it.
  for (const char* escaping : {"../../outside", "/tmp/outside", "..", "a/../../b"})
    refuse(replaced("name = \"lora\"", std::string("name = \"") + escaping + "\""),
           "' must be 1-64 letters, digits, '_', '-' or '.' (it names a folder), not starting "
           "with '.'");
  refuse(replaced("eval_fraction = 0.25\n", ""), "set [data] eval_file or eval_fraction");
  refuse(replaced("[train]\n", "[train]\nepoch_steps = 3\n"), "epoch_steps is set by [budget]");
  refuse(replaced("method = \"miss\"", "method = \"mis\""), "mis");
  refuse(replaced("[budget]\nsteps = 4", "[budget]\nsteps = 4\ntokens = 100"),
         "exactly one of steps");
  refuse(replaced("[generation]", "[generatoin]"), "did you mean [generation]?");
  refuse(replaced("\"The sea is\"", "\"\""), "c.toml: [generation] prompts[1] is empty");
  refuse(
      replaced("[run.peft.miss]\nr = 16", "[run.peft.miss]\nr = 16\n[run.quant]\nmethod = \"nf5\""),
      "nf5");
}

// A budget in tokens becomes whole steps of each run's own batch: 100 positions at 2 x 16 per step
// are 4 steps (rounded up); a run that doubles its micro-batch gets 2.
TEST_F(CompareCommand, ATokenBudgetBecomesWholeStepsOfEachRunsBatch) {
  for (const char* file : {"model.pth", "tokens.npy"})
    fs::copy_file(shared_->path() / file, local_ / file);
  std::string text = compare_text(4);
  text.replace(text.find("steps = 4"), 9, "tokens = 100");
  text.replace(text.find("[run.train]\n"), 12, "[run.train]\nmicro_bsz = 4\n");
  const size_t prompts = text.find("prompts = [");
  text.replace(prompts, text.find("]\nmax_tokens") + 1 - prompts,
               "prompts = []");  // no generations
  testing::write_file(local_ / "c.toml", text);
  auto result = run_command(peftkit_command("compare " + (local_ / "c.toml").string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const json report = read_json(local_ / "out" / "report.json");
  EXPECT_EQ(report["budget"]["tokens"], 100);
  EXPECT_EQ(report["variants"][1]["steps"], 2);  // state: micro_bsz 4
  EXPECT_EQ(report["variants"][2]["steps"], 4);  // lora
  EXPECT_EQ(report["variants"][3]["steps"], 4);  // miss
  EXPECT_EQ(report["variants"][0]["generations"].size(), 0u);
}

// SIGINT while the second run trains: the compare stops (130) with a checkpoint; the next call
// skips the finished first run and resumes the second where it stopped.
TEST_F(CompareCommand, AnInterruptedCompareContinuesWithoutRedoingFinishedRuns) {
  for (const char* file : {"model.pth", "tokens.npy"})
    fs::copy_file(shared_->path() / file, local_ / file);
  testing::write_file(local_ / "c.toml", compare_text(60));
  const std::string log = (local_ / "first.log").string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    execl(PEFTKIT_BINARY, PEFTKIT_BINARY, "compare", (local_ / "c.toml").c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const fs::path second = local_ / "out" / "runs" / "lora" / "metrics.jsonl";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (std::chrono::steady_clock::now() < deadline &&
         (!fs::exists(second) || testing::read_metrics(second).size() < 3))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ::kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << testing::read_file(log);
  ASSERT_EQ(WEXITSTATUS(status), 130) << testing::read_file(log);
  EXPECT_NE(testing::read_file(log).find("Continue with: peftkit compare"), std::string::npos)
      << testing::read_file(log);
  const fs::path first_summary = local_ / "out" / "runs" / "state" / "summary.json";
  ASSERT_TRUE(fs::exists(first_summary));
  EXPECT_FALSE(fs::exists(local_ / "out" / "runs" / "lora" / "summary.json"));
  const auto first_written = fs::last_write_time(first_summary);
  const std::string first_metrics =
      testing::read_file(local_ / "out" / "runs" / "state" / "metrics.jsonl");

  auto again = run_command(peftkit_command("compare " + (local_ / "c.toml").string()));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("run 'state': finished earlier"), std::string::npos) << again.output;
  EXPECT_EQ(fs::last_write_time(first_summary), first_written);
  EXPECT_EQ(testing::read_file(local_ / "out" / "runs" / "state" / "metrics.jsonl"), first_metrics);
  EXPECT_NE(
      testing::read_file(local_ / "out" / "runs" / "lora" / "peftkit.log").find("resumed from"),
      std::string::npos);
  // The resumed run's metrics hold each step once, 0 to 60.
  const auto metrics = testing::read_metrics(second);
  ASSERT_EQ(metrics.size(), 61u);
  for (size_t i = 0; i < metrics.size(); ++i)
    EXPECT_EQ(metrics[i]["step"], static_cast<int64_t>(i));
  EXPECT_EQ(read_json(local_ / "out" / "report.json")["variants"].size(), 4u);
}

// The HTML report in a real browser: headless Chromium renders it to a PNG (the README's picture is
// made the same way); the page is not blank and shows every run's colour.
TEST_F(CompareCommand, TheHtmlReportRendersInABrowser) {
  ASSERT_EQ(finished_->exit_code, 0) << finished_->output;
  auto shot = run_command(std::string(SCREENSHOT_SCRIPT) + " " + (out() / "report.html").string() +
                          " " SCREENSHOT_OUTPUT);
  if (shot.exit_code == 77)
    GTEST_SKIP() << "Chromium is not installed (scripts/setup.sh installs it): " << shot.output;
  ASSERT_EQ(shot.exit_code, 0) << shot.output;
  // The runs' colours (report.cpp's palette, in run order).
  auto check = run_command(std::string(PEFTKIT_PYTHON) + " " PNG_CHECK_SCRIPT " " SCREENSHOT_OUTPUT
                                                         " '#0072B2' '#D55E00' '#009E73'");
  ASSERT_EQ(check.exit_code, 0) << check.output;
  const json pixels = json::parse(check.output);
  EXPECT_EQ(pixels["width"], 1000);
  EXPECT_GT(pixels["ink"].get<double>(), 0.02) << "a blank page";
  EXPECT_GT(pixels["colours"].get<int>(), 50);
  for (const char* colour : {"#0072B2", "#D55E00", "#009E73"})
    EXPECT_GT(pixels["near"][colour].get<int>(), 200)
        << colour << " (a run's series) is not on the page";
}

}  // namespace
}  // namespace peftkit

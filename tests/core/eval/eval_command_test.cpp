// `peftkit eval` as a user runs it, against independent oracles: a model whose logits are known in
// closed form (so the loss of any file follows from which targets count), the float64 reference
// forward of the model tests, and the evaluation `peftkit train` reports.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/rwkv_model.hpp"
#include "model_fixtures.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"
#include "tokenizer/world_tokenizer.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

using testing::peftkit_command;
using testing::run_command;

nlohmann::json read_json(const std::filesystem::path& path) {
  return nlohmann::json::parse(testing::read_file(path));
}

// A model whose logits are the same known vector at every position, whatever the input:
// ln_out's weight is 0 and its bias the first unit vector, and the head's first column is `logits`.
class ConstantLogits : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    tokenizer_ = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab()).release();
    the_ = single_token(" the");
    mat_ = single_token(" mat");
    logits_ = std::vector<double>(65536, 0.0);
    logits_[the_] = 4.0;
    logits_[mat_] = 2.0;
    logits_[0] = 1.0;
    double sum = 0;
    for (double l : logits_) sum += std::exp(l);
    log_sum_exp_ = std::log(sum);
    TensorMap weights = testing::perturbed_model(model::ModelConfig::for_size(1, 64, 65536, 32), 3);
    weights["ln_out.weight"] = at::zeros({64});
    weights["ln_out.bias"] = at::zeros({64});
    weights["ln_out.bias"][0] = 1.0;
    at::Tensor head = at::zeros({65536, 64});
    head.select(1, 0).copy_(at::tensor(logits_, at::kDouble).to(at::kFloat));
    weights["head.weight"] = head;
    write_pth(dir_->path() / "constant.pth", weights);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete tokenizer_;
  }
  static int32_t single_token(const std::string& text) {
    const auto ids = tokenizer_->encode(text);
    EXPECT_EQ(ids.size(), 1u) << "'" << text << "' is expected to be one token";
    return ids.at(0);
  }
  static std::vector<int32_t> encode(const std::string& text) { return tokenizer_->encode(text); }
  // The loss of a target: -log softmax(logits)[t].
  static double nll(int32_t target) { return log_sum_exp_ - logits_[target]; }
  static std::filesystem::path model() { return dir_->path() / "constant.pth"; }

  static testing::TempDir* dir_;
  static tokenizer::WorldTokenizer* tokenizer_;
  static int32_t the_, mat_;
  static std::vector<double> logits_;
  static double log_sum_exp_;
  testing::TempDir local_;
};
testing::TempDir* ConstantLogits::dir_ = nullptr;
tokenizer::WorldTokenizer* ConstantLogits::tokenizer_ = nullptr;
int32_t ConstantLogits::the_ = 0, ConstantLogits::mat_ = 0;
std::vector<double> ConstantLogits::logits_;
double ConstantLogits::log_sum_exp_ = 0;

// The loss, perplexity, accuracy and counts equal those of exactly the targets training counts:
// every token after the first of a text, the response of a prompt/response pair, the assistant's
// replies of a chat, and each document's end-of-text token.
TEST_F(ConstantLogits, CountsExactlyTheTargetsTrainingCounts) {
  testing::write_file(
      local_ / "data.jsonl",
      "{\"text\": \"the cat sat on the mat\"}\n"
      "{\"prompt\": \"User: where is the cat?\\n\\nAssistant:\", \"response\": \" on the mat\"}\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi the\"}, "
      "{\"role\": \"assistant\", \"content\": \"the mat\"}]}\n");
  std::vector<int32_t> counted;
  auto add = [&](const std::vector<int32_t>& ids) {
    counted.insert(counted.end(), ids.begin(), ids.end());
  };
  const auto text = encode("the cat sat on the mat");
  add(std::vector<int32_t>(text.begin() + 1, text.end()));
  add({0});
  add(encode(" on the mat"));
  add({0});
  add(encode(" the mat\n\n"));
  add({0});
  double loss = 0;
  int64_t correct = 0;
  for (int32_t t : counted) {
    loss += nll(t);
    correct += t == the_;
  }
  loss /= static_cast<double>(counted.size());

  auto result = run_command(peftkit_command(
      "eval --model " + model().string() + " --data " + (local_ / "data.jsonl").string() +
      " --device cpu --json " + (local_ / "eval.json").string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto report = read_json(local_ / "eval.json");
  ASSERT_EQ(report["variants"].size(), 1u);
  const auto& base = report["variants"][0];
  EXPECT_EQ(base["name"], "base");
  EXPECT_EQ(base["tokens"].get<int64_t>(), static_cast<int64_t>(counted.size()));
  EXPECT_EQ(base["documents"], 3);
  EXPECT_NEAR(base["loss"].get<double>(), loss, 1e-5 * loss);
  EXPECT_NEAR(base["perplexity"].get<double>(), std::exp(loss), 1e-4 * std::exp(loss));
  EXPECT_DOUBLE_EQ(base["accuracy"].get<double>(),
                   static_cast<double>(correct) / static_cast<double>(counted.size()));
  EXPECT_NE(result.output.find("perplexity"), std::string::npos) << result.output;  // the table

  // Long documents in short segments that carry the state: the same numbers.
  auto segmented = run_command(peftkit_command(
      "eval --model " + model().string() + " --data " + (local_ / "data.jsonl").string() +
      " --device cpu --chunk-ctx 3 --micro-bsz 1 --json " + (local_ / "segmented.json").string()));
  ASSERT_EQ(segmented.exit_code, 0) << segmented.output;
  EXPECT_NEAR(read_json(local_ / "segmented.json")["variants"][0]["loss"].get<double>(), loss,
              1e-5 * loss);
}

// LAMBADA: the target is the last word with its space, after [0] + the context; a document is
// correct when every target token is the argmax, and the perplexity is per document.
TEST_F(ConstantLogits, LambadaAccuracyAndPerplexity) {
  testing::write_file(
      local_ / "lambada.jsonl",
      "{\"text\": \"and then they all sat down by the\"}\n"  // target " the": the argmax
      "{\"text\": \"the cat sat on the mat\"}\n"             // target " mat": not
      "\n");
  const double log_probability = -nll(the_) - nll(mat_);
  auto result =
      run_command(peftkit_command("eval --model " + model().string() + " --task lambada --data " +
                                  (local_ / "lambada.jsonl").string() + " --device cpu --json " +
                                  (local_ / "lambada.json").string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto variant = read_json(local_ / "lambada.json")["variants"][0];
  EXPECT_EQ(variant["documents"], 2);
  EXPECT_EQ(variant["correct"], 1);
  EXPECT_DOUBLE_EQ(variant["accuracy"].get<double>(), 0.5);
  const double perplexity = std::exp(-log_probability / 2);
  EXPECT_NEAR(variant["perplexity"].get<double>(), perplexity, 1e-5 * perplexity);

  testing::write_file(local_ / "bad.jsonl", "{\"text\": \"a b\"}\n{\"text\": \"oneword\"}\n");
  auto bad =
      run_command(peftkit_command("eval --model " + model().string() + " --task lambada --data " +
                                  (local_ / "bad.jsonl").string() + " --device cpu"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("bad.jsonl:2: the text has no last word after a space"),
            std::string::npos)
      << bad.output;
}

TEST_F(ConstantLogits, BadInputGetsAClearError) {
  const std::string eval = "eval --model " + model().string() + " --device cpu ";
  auto missing =
      run_command(peftkit_command(eval + "--data " + (local_ / "missing.jsonl").string()));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("missing.jsonl"), std::string::npos) << missing.output;

  testing::write_file(local_ / "data.jsonl", "{\"text\": \"hello\"}\n");
  auto format = run_command(
      peftkit_command(eval + "--data " + (local_ / "data.jsonl").string() + " --format jsnol"));
  EXPECT_EQ(format.exit_code, 1);
  EXPECT_NE(format.output.find("--format: "), std::string::npos) << format.output;
  EXPECT_NE(format.output.find("jsnol"), std::string::npos) << format.output;

  testing::write_file(local_ / "empty.jsonl", "\n\n");
  auto empty = run_command(peftkit_command(eval + "--data " + (local_ / "empty.jsonl").string()));
  EXPECT_EQ(empty.exit_code, 1);
  EXPECT_NE(empty.output.find("empty.jsonl"), std::string::npos) << empty.output;

  auto option = run_command(peftkit_command(eval + "--data " + (local_ / "data.jsonl").string() +
                                            " --set data.jsonl.skip_bad_linez=true"));
  EXPECT_EQ(option.exit_code, 1);
  EXPECT_NE(option.output.find("skip_bad_linez"), std::string::npos) << option.output;
  EXPECT_NE(option.output.find("did you mean 'skip_bad_lines'"), std::string::npos)
      << option.output;

  auto task = run_command(
      peftkit_command(eval + "--data " + (local_ / "data.jsonl").string() + " --task lambda"));
  EXPECT_EQ(task.exit_code, 1);
  EXPECT_NE(task.output.find("--task: expected lm or lambada"), std::string::npos) << task.output;
}

// The mean loss and token accuracy equal those of an independent float64 forward (spec §1, in
// Python) of a perturbed model saved in bf16; the samples run in segments that carry the state.
TEST(EvalCommand, MatchesTheFloat64Reference) {
  testing::TempDir dir;
  const model::ModelConfig config = model::ModelConfig::for_size(2, 64, 500, 16);
  write_pth(dir / "init.pth", model::init_model(config, 11));
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(9);
  const at::Tensor tokens = at::randint(500, {41}, generator);
  std::string list;
  {
    std::ofstream out(dir / "tokens");
    for (int64_t i = 0; i < tokens.size(0); ++i) {
      out << tokens[i].item<int64_t>() << "\n";
      list += (i ? "," : "") + std::to_string(tokens[i].item<int64_t>());
    }
  }
  auto reference = run_command(std::string(PEFTKIT_PYTHON) + " " RWKV7_REFERENCE_SCRIPT " " +
                               dir.path().string());
  ASSERT_EQ(reference.exit_code, 0) << reference.output;
  auto npy =
      run_command(std::string(PEFTKIT_PYTHON) + " -c \"import numpy as np; np.save('" +
                  (dir / "tokens.npy").string() + "', np.array([" + list + "], dtype='<u2'))\"");
  ASSERT_EQ(npy.exit_code, 0) << npy.output;
  const at::Tensor logits = read_pth(dir / "logits.pth").at("logits").to(at::kDouble);  // [T, V]
  const int64_t positions = tokens.size(0) - 1;
  double loss = 0;
  int64_t correct = 0;
  for (int64_t t = 0; t < positions; ++t) {
    const int64_t next = tokens[t + 1].item<int64_t>();
    loss += (at::logsumexp(logits[t], 0) - logits[t][next]).item<double>();
    correct += logits[t].argmax().item<int64_t>() == next;
  }
  loss /= static_cast<double>(positions);

  auto result = run_command(peftkit_command(
      "eval --model " + (dir / "model.pth").string() + " --data " + (dir / "tokens.npy").string() +
      " --format numpy --set data.numpy.order=sequential" + " --ctx-len " +
      std::to_string(positions) + " --chunk-ctx 11 --device cpu --json " +
      (dir / "eval.json").string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto variant = read_json(dir / "eval.json")["variants"][0];
  EXPECT_EQ(variant["tokens"], positions);
  EXPECT_NEAR(variant["loss"].get<double>(), loss, 1e-4 * loss);
  EXPECT_DOUBLE_EQ(variant["accuracy"].get<double>(),
                   static_cast<double>(correct) / static_cast<double>(positions));
  if (!at::hasCUDA()) return;
  // On the GPU (fp32, TF32 off): the chunked CUDA kernels give the same numbers.
  auto gpu = run_command(peftkit_command(
      "eval --model " + (dir / "model.pth").string() + " --data " + (dir / "tokens.npy").string() +
      " --format numpy --set data.numpy.order=sequential" + " --ctx-len " +
      std::to_string(positions) + " --chunk-ctx 11 --device cuda --json " +
      (dir / "gpu.json").string()));
  ASSERT_EQ(gpu.exit_code, 0) << gpu.output;
  const auto on_gpu = read_json(dir / "gpu.json")["variants"][0];
  EXPECT_NEAR(on_gpu["loss"].get<double>(), loss, 1e-4 * loss);
  EXPECT_DOUBLE_EQ(on_gpu["accuracy"].get<double>(),
                   static_cast<double>(correct) / static_cast<double>(positions));
}

// What `peftkit train` reports as eval_loss is what `peftkit eval` reports for the same model and
// data: before the first step (the base), and after training (the saved adapter mounted).
// --compare-with base puts the base and each adapter side by side with the same numbers.
TEST(EvalCommand, EqualsTrainingsEvaluationAndComparesVariants) {
  testing::TempDir dir;
  write_pth(dir / "model.pth",
            testing::perturbed_model(model::ModelConfig::for_size(2, 64, 1000, 32), 4));
  ASSERT_EQ(testing::write_token_stream(PEFTKIT_PYTHON, dir / "tokens.npy").exit_code, 0);
  const std::string base = "[model]\npath = \"" + (dir / "model.pth").string() +
                           "\"\n[data]\nformat = \"numpy\"\npath = \"" +
                           (dir / "tokens.npy").string() + "\"\neval_file = \"" +
                           (dir / "tokens.npy").string() +
                           "\"\n[data.numpy]\norder = \"sequential\"\n[train]\nctx_len = "
                           "24\nmicro_bsz = 3\nepoch_steps = 6\n"
                           "epoch_count = 1\nlr_init = 1e-2\nlr_final = 1e-2\nprecision = "
                           "\"fp32\"\n[run]\nthreads = 1\ndevice = \"cpu\"\n";
  for (const std::string method : {"lora", "state"}) {
    testing::write_file(dir / (method + ".toml"), base + "[peft]\nmethod = \"" + method +
                                                      "\"\n[output]\ndir = \"" + method + "\"\n");
    auto trained = run_command(peftkit_command("train " + (dir / (method + ".toml")).string()));
    ASSERT_EQ(trained.exit_code, 0) << trained.output;
  }
  const auto metrics = testing::read_metrics(dir / "lora" / "metrics.jsonl");
  ASSERT_EQ(metrics.front()["step"], 0);
  const double at_start = metrics.front()["eval_loss"].get<double>(),
               at_end = metrics.back()["eval_loss"].get<double>();

  const std::string eval =
      "eval --model " + (dir / "model.pth").string() + " --data " + (dir / "tokens.npy").string() +
      " --format numpy --set data.numpy.order=sequential --ctx-len 24 --micro-bsz 3 --chunk-ctx 0"
      " --device cpu";
  auto plain = run_command(peftkit_command(eval + " --json " + (dir / "base.json").string()));
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const auto base_eval = read_json(dir / "base.json")["variants"][0];
  EXPECT_NEAR(base_eval["loss"].get<double>(), at_start, 1e-9 * at_start);
  EXPECT_NEAR(base_eval["accuracy"].get<double>(), metrics.front()["eval_accuracy"].get<double>(),
              1e-12);

  auto compared = run_command(
      peftkit_command(eval + " --adapter " + (dir / "lora" / "rwkv-0.pth").string() +
                      " --adapter " + (dir / "state" / "rwkv-0.pth").string() +
                      " --compare-with base --json " + (dir / "compare.json").string()));
  ASSERT_EQ(compared.exit_code, 0) << compared.output;
  const auto variants = read_json(dir / "compare.json")["variants"];
  ASSERT_EQ(variants.size(), 3u);
  EXPECT_EQ(variants[0]["name"], "base");
  EXPECT_EQ(variants[0]["loss"], base_eval["loss"]);
  // LoRA's adapter is saved in fp32, so it evaluates to what training's last evaluation reported.
  EXPECT_NEAR(variants[1]["loss"].get<double>(), at_end, 1e-6 * at_end);
  EXPECT_LT(variants[1]["loss"].get<double>(), at_start);
  const double state_end =
      testing::read_metrics(dir / "state" / "metrics.jsonl").back()["eval_loss"].get<double>();
  EXPECT_NEAR(variants[2]["loss"].get<double>(), state_end, 2e-2 * state_end);  // bf16 state file
  for (const char* column :
       {"variant", "loss", "perplexity", "accuracy", "tokens", "documents", "tokens/s"})
    EXPECT_NE(compared.output.find(column), std::string::npos) << column << "\n" << compared.output;
}

}  // namespace
}  // namespace peftkit

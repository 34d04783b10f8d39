// The nf4 and int8 quantizer plugins under the model: closeness to the bf16 forward, exactness
// against a dense model holding the dequantized weights (forward and gradients), QPiSSA, training
// of every PEFT method on a quantized base, the pre-quantized base file, and --requantize-aware.
#include <iostream>

#include "peft_fixtures.hpp"
#include "peftkit/quantizer.hpp"
#include "quant/quant.hpp"

namespace peftkit {
namespace {

using testing::relative_error;
using testing::small_model_weights;

std::shared_ptr<const Quantizer> quantizer(
    const std::string& name,
    const std::vector<std::pair<std::string, OptionValue>>& settings = {}) {
  auto plugin = testing::plugins().get<QuantizerPlugin>(name);
  Options options = host::default_options(plugin->options(), "quant." + name);
  for (const auto& [key, value] : settings) options.set(key, value, OptionSource::kRecipe);
  plugin->validate(options);
  return host::keep_loaded(plugin->create(options), plugin);
}

model::ModelOptions quantized(at::ScalarType dtype, std::shared_ptr<const Quantizer> q) {
  model::ModelOptions options(dtype, at::kCPU);
  options.quantizer = std::move(q);
  options.quantize_targets = {"att.receptance", "att.key", "att.value",
                              "att.output",     "ffn.key", "ffn.value"};
  return options;
}

// The weights a quantized model computes with, as a dense checkpoint.
TensorMap dequantized_weights(const model::RwkvModel& model) {
  TensorMap out = model.weights();
  for (const auto& site : model.linear_sites())
    out[site.name + ".weight"] = model.linear(site.name).dense_weight().to(at::kFloat);
  return out;
}

TEST(Quantizers, TheForwardStaysCloseToTheBf16Forward) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 24});
  model::RwkvModel dense(small_model_weights(), {at::kBFloat16, at::kCPU}, "test");
  const at::Tensor reference = dense.forward(tokens).to(at::kFloat);
  struct Case {
    std::string name, plugin;
    std::vector<std::pair<std::string, OptionValue>> settings;
    double bound;
  };
  const Case cases[] = {{"int8", "int8", {}, 0.03},
                        {"int8 outliers", "int8", {{"threshold", 0.25}}, 0.03},
                        {"nf4", "nf4", {}, 0.2},
                        {"nf4 double-quant", "nf4", {{"double_quant", true}}, 0.2},
                        {"fp4", "fp4", {}, 0.3}};
  for (const auto& c : cases) {
    auto settings = c.settings;
    if (c.name == "fp4") settings.push_back({"type", std::string("fp4")});
    model::RwkvModel model(
        small_model_weights(),
        quantized(at::kBFloat16, quantizer(c.plugin == "fp4" ? "nf4" : c.plugin, settings)),
        "test");
    const double error = relative_error(model.forward(tokens).to(at::kFloat), reference);
    std::cout << "relative logit error vs bf16, " << c.name << ": " << error << "\n";
    ::testing::Test::RecordProperty(c.name + " relative logit error", std::to_string(error));
    EXPECT_LE(error, c.bound) << c.name;
    EXPECT_GT(error, 0.0) << c.name;
    EXPECT_EQ(model.weights().count("blocks.0.att.key.weight"), 0u)
        << "no dense copy of a quantized weight";
  }
}

TEST(Quantizers, TheHeadIsQuantizedOnlyWhenAsked) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {1, 9});
  model::ModelOptions options = quantized(at::kFloat, quantizer("int8"));
  options.quantize_targets = {};
  options.quantize_head = true;
  model::RwkvModel model(small_model_weights(), options, "test");
  EXPECT_EQ(model.weights().count("head.weight"), 0u);
  EXPECT_EQ(model.weights().count("blocks.0.att.key.weight"), 1u);
  const at::Tensor head = small_model_weights().at("head.weight");
  EXPECT_LE(relative_error(model.head_weight(), head), 0.01);
  TensorMap dense = small_model_weights();
  dense["head.weight"] = model.head_weight();
  model::RwkvModel reference(dense, {at::kFloat, at::kCPU}, "test");
  EXPECT_LE(relative_error(model.forward(tokens), reference.forward(tokens)), 1e-5);
}

TEST(Quantizers, AQuantizedModelComputesExactlyWithItsDequantizedWeights) {
  const at::Tensor tokens = at::randint(300, {2, 13});
  for (const std::string plugin : {"nf4", "int8"}) {
    model::RwkvModel q(small_model_weights(), quantized(at::kFloat, quantizer(plugin)), "test");
    model::RwkvModel dense(dequantized_weights(q), {at::kFloat, at::kCPU}, "test");
    // At most 8 bits a weight plus scales and block padding (x060's F 224 pads), against 32.
    EXPECT_LT(q.linear_weight_bytes() * 2, dense.linear_weight_bytes()) << plugin;
    auto lora_q = testing::make_method("lora", {{"r", int64_t{4}}, {"alpha", 8.0}});
    auto lora_d = testing::make_method("lora", {{"r", int64_t{4}}, {"alpha", 8.0}});
    lora_q->attach(q);
    lora_d->attach(dense);
    testing::randomise(*lora_q, 3);
    lora_d->load_state_dict(lora_q->state_dict(), {});
    q.set_gradient_checkpointing(true);
    const at::Tensor yq = q.forward(tokens), yd = dense.forward(tokens);
    EXPECT_LE(relative_error(yq, yd), 1e-5) << plugin;
    yq.square().mean().backward();
    yd.square().mean().backward();
    const auto tq = lora_q->trainable_tensors(), td = lora_d->trainable_tensors();
    for (size_t i = 0; i < tq.size(); ++i)
      EXPECT_LE(relative_error(tq[i].tensor.grad(), td[i].tensor.grad()), 1e-4)
          << plugin << " " << tq[i].name;
  }
}

// int8 with a threshold: a column holding an element of magnitude >= threshold is kept exactly
// (as bf16), every other column is quantized.
TEST(Quantizers, Int8OutlierColumnsAreKeptExactly) {
  at::NoGradGuard no_grad;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  at::Tensor w = at::randn({32, 48}, g) * 0.02;
  w.index_put_({3, 7}, 0.5);               // column 7: an outlier
  w.index_put_({20, 30}, -0.3);            // column 30: another
  w.index_put_({9, 11}, 0.2);              // column 11: below the threshold
  w = w.to(at::kBFloat16).to(at::kFloat);  // values bf16 holds, as a checkpoint's are
  const auto packed = quantizer("int8", {{"threshold", 0.25}})->quantize(w);
  const at::Tensor dense = packed->dense_weight().to(at::kFloat);
  for (int64_t column = 0; column < w.size(1); ++column) {
    const bool outlier = column == 7 || column == 30;
    EXPECT_EQ(at::equal(dense.select(1, column), w.select(1, column)), outlier) << column;
  }
  EXPECT_LE(relative_error(dense, w), 0.02);
}

TEST(Quantizers, QPissaQuantizesTheResidualOfTheCheckpointWeight) {
  at::NoGradGuard no_grad;
  auto nf4 = quantizer("nf4");
  model::RwkvModel model(small_model_weights(), quantized(at::kFloat, nf4), "test");
  auto pissa = testing::make_method(
      "pissa", {{"r", int64_t{4}}, {"alpha", 4.0}, {"svd", std::string("exact")}});
  pissa->attach(model);
  const TensorMap state = pissa->state_dict();
  const std::string site = "blocks.1.ffn.key";
  const at::Tensor w = small_model_weights().at(site + ".weight");
  const at::Tensor residual =
      w - at::matmul(state.at(site + ".init_lora_B"), state.at(site + ".init_lora_A"));
  EXPECT_TRUE(at::equal(model.linear(site).dense_weight().to(at::kFloat),
                        nf4->quantize(residual)->dense_weight().to(at::kFloat)));
}

TEST(Quantizers, EveryMethodTrainsOnAQuantizedBase) {
  const std::pair<std::string, std::string> runs[] = {
      {"[peft]\nmethod = \"state\"\n", "[quant]\nmethod = \"int8\"\n"},
      {"[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n",
       "[quant]\nmethod = \"nf4\"\n[quant.nf4]\ndouble_quant = true\n"},
      {"[peft]\nmethod = \"pissa\"\n[peft.pissa]\nr = 4\nalpha = 4\n",
       "[quant]\nmethod = \"nf4\"\n"},
      {"[peft]\nmethod = \"miss\"\n[peft.miss]\nr = 16\n",
       "[quant]\nmethod = \"int8\"\n[quant.int8]\nthreshold = 0.25\n"},
      {"[peft]\nmethod = \"miss\"\n[peft.miss]\nr = 16\nmode = \"bat\"\n",
       "[quant]\nmethod = \"nf4\"\n"}};
  for (const auto& [peft, quant] : runs) {
    testing::TempDir dir;
    auto run = testing::train_small_model(dir.path(), peft + quant,
                                          peft.find("state") != std::string::npos ? 1e-1 : 1e-2);
    ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
    EXPECT_NE(run.command.output.find("quantized the frozen linear weights"), std::string::npos)
        << run.command.output;
    ASSERT_EQ(run.losses.size(), 10u);
    EXPECT_LT(run.losses.back(), run.losses.front()) << peft << quant;
  }
}

TEST(Quantizers, APreQuantizedBaseFileIsReusedOnlyWhenItMatches) {
  testing::TempDir dir;
  auto first = testing::train_small_model(dir.path(),
                                          "[peft]\nmethod = \"lora\"\n[quant]\nmethod = "
                                          "\"nf4\"\ncache_file = \"base.nf4.safetensors\"\n");
  ASSERT_EQ(first.command.exit_code, 0) << first.command.output;
  EXPECT_NE(first.command.output.find("wrote the pre-quantized base"), std::string::npos)
      << first.command.output;
  auto again = [&](const std::string& out, const std::string& extra) {
    auto result = testing::run_command(
        testing::peftkit_command("train " + (dir / "recipe.toml").string() +
                                 " --set output.dir=" + out + extra + " --plugin-dir " PLUGIN_DIR));
    std::vector<double> losses;
    for (const auto& line : testing::read_metrics(dir / out / "metrics.jsonl"))
      losses.push_back(line["loss"].get<double>());
    return std::pair{result, losses};
  };
  auto [second, second_losses] = again("out2", "");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("info pre-quantized base"), std::string::npos) << second.output;
  ASSERT_EQ(second_losses.size(), first.losses.size());
  for (size_t i = 0; i < first.losses.size(); ++i)  // equal on the CPU; GPU reductions may reorder
    EXPECT_NEAR(second_losses[i], first.losses[i], 1e-4 * first.losses[i]) << "step " << i + 1;
  auto [other, other_losses] = again("out3", " --set quant.nf4.blocksize=128");
  ASSERT_EQ(other.exit_code, 0) << other.output;
  EXPECT_NE(other.output.find("quantizing again"), std::string::npos) << other.output;
}

// Trains the small model with `tables` (an adapter on a quantized base) in `dir`, then merges it
// with --requantize-aware into dir/merged.pth; false (with the failure reported) when either fails.
bool train_and_merge_requantize_aware(const testing::TempDir& dir, const std::string& tables) {
  auto run = testing::train_small_model(dir.path(), tables, 5e-2);
  EXPECT_EQ(run.command.exit_code, 0) << run.command.output;
  if (run.command.exit_code != 0) return false;
  auto merge = testing::run_command(testing::peftkit_command(
      "merge --requantize-aware --base " + (dir / "model.pth").string() + " --adapter " +
      (dir / "out" / "rwkv-0.pth").string() + " --output " + (dir / "merged.pth").string() +
      " --plugin-dir " PLUGIN_DIR));
  EXPECT_EQ(merge.exit_code, 0) << merge.output;
  return merge.exit_code == 0;
}

TEST(Quantizers, RequantizeAwareMergeGivesTheWeightsTrainingUsed) {
  testing::TempDir dir;
  ASSERT_TRUE(train_and_merge_requantize_aware(
      dir,
      "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n[quant]\nmethod = \"nf4\"\n"));
  const std::string base = (dir / "model.pth").string(),
                    adapter = (dir / "out" / "rwkv-0.pth").string();
  const TensorMap merged = read_pth(dir / "merged.pth"), lora = read_pth(adapter),
                  original = read_pth(base);
  const std::string site = "blocks.0.att.value";
  const at::Tensor w = original.at(site + ".weight");
  const at::Tensor expected =
      kernels::dequantize_4bit(kernels::quantize_4bit(w, kernels::nf4_codebook(), 64), at::kFloat) +
      2.0 * at::matmul(lora.at(site + ".lora_B"), lora.at(site + ".lora_A"));
  EXPECT_LE(relative_error(merged.at(site + ".weight"), expected), 1e-6);
  EXPECT_TRUE(at::equal(merged.at("emb.weight"), original.at("emb.weight")));
  auto refused = testing::run_command(
      testing::peftkit_command("merge --requantize-aware --base " + base + " --lora " + adapter +
                               " --recipe /nonexistent.toml --output x.pth"));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("/nonexistent.toml"), std::string::npos) << refused.output;
}

// QPiSSA: the merge gives what training computed with, the quantized residual (checkpoint weight
// minus the saved init pair) plus the trained pair.
TEST(Quantizers, RequantizeAwareMergeOfQPissaUsesTheQuantizedResidual) {
  testing::TempDir dir;
  ASSERT_TRUE(train_and_merge_requantize_aware(
      dir,
      "[peft]\nmethod = \"pissa\"\n[peft.pissa]\nr = 4\nalpha = 4\nsvd = \"exact\"\n"
      "[quant]\nmethod = \"nf4\"\n"));
  const TensorMap merged = read_pth(dir / "merged.pth"),
                  saved = read_pth(dir / "out" / "rwkv-0.pth"),
                  original = read_pth(dir / "model.pth");
  auto nf4 = quantizer("nf4");
  for (const std::string site : {"blocks.0.att.value", "blocks.1.ffn.key"}) {
    const at::Tensor residual =
        original.at(site + ".weight") -
        at::matmul(saved.at(site + ".init_lora_B"), saved.at(site + ".init_lora_A"));
    const at::Tensor expected =
        nf4->quantize(residual)->dense_weight().to(at::kFloat) +
        at::matmul(saved.at(site + ".lora_B"), saved.at(site + ".lora_A"));  // s = 4 / 4
    EXPECT_LE(relative_error(merged.at(site + ".weight"), expected), 1e-6) << site;
    EXPECT_GT(relative_error(merged.at(site + ".weight"), original.at(site + ".weight")), 1e-3)
        << site << ": quantization and training both show";
  }
}

// Issue 14 item 20: a merge re-quantized and overwrote the training run's pre-quantized cache (a
// merge must not write into a training folder), and the cache's stored mtime read as a negative
// number.
TEST(Quantizers, ARequantizeAwareMergeNeverWritesTheTrainingCache) {
  testing::TempDir dir;
  auto run =
      testing::train_small_model(dir.path(),
                                 "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n"
                                 "[quant]\nmethod = \"nf4\"\ncache_file = \"cache.safetensors\"\n",
                                 5e-2);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  const auto cache = dir / "cache.safetensors";
  ASSERT_TRUE(std::filesystem::exists(cache));
  const std::string signature = read_safetensors(cache).metadata.at("peftkit.quantized_from");
  const size_t at = signature.find(";mtime_ns=");
  ASSERT_NE(at, std::string::npos) << signature;
  EXPECT_GT(std::stoll(signature.substr(at + 10)), 1'600'000'000'000'000'000LL)
      << signature;  // after 2020
  const std::string before = testing::read_file(cache);
  const auto written = std::filesystem::last_write_time(cache);
  // Another path to the same weights: the cache does not match it, so the merge quantizes anew.
  std::filesystem::copy_file(dir / "model.pth", dir / "copy.pth");
  auto merge = testing::run_command(testing::peftkit_command(
      "merge --requantize-aware --base " + (dir / "copy.pth").string() + " --adapter " +
      (dir / "out" / "rwkv-0.pth").string() + " --output " + (dir / "merged.pth").string() +
      " --plugin-dir " PLUGIN_DIR));
  ASSERT_EQ(merge.exit_code, 0) << merge.output;
  EXPECT_EQ(testing::read_file(cache), before);
  EXPECT_EQ(std::filesystem::last_write_time(cache), written);
}

}  // namespace
}  // namespace peftkit

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "model/rwkv7_model.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/tensor_io.hpp"
#include "model_fixtures.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

const Rwkv7Config& config() {
  static const Rwkv7Config c = Rwkv7Config::for_size(2, 64, 300, 16);
  return c;
}

TensorMap model_weights() { return testing::perturbed_model(config(), 3); }

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / want.norm().item<double>();
}

class LoraTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { registry_ = new host::PluginRegistry(host::PluginRegistry::discover({PLUGIN_DIR})); }
  static void TearDownTestSuite() { delete registry_; }
  static std::shared_ptr<PeftMethod> lora(int64_t r = 4, double alpha = 8, bool rslora = false, double dropout = 0) {
    auto plugin = registry_->get<PeftPlugin>("lora");
    Options o = host::default_options(plugin->options(), "peft.lora");
    o.set("r", r, OptionSource::kRecipe);
    o.set("alpha", alpha, OptionSource::kRecipe);
    o.set("use_rslora", rslora, OptionSource::kRecipe);
    o.set("dropout", dropout, OptionSource::kRecipe);
    return host::keep_loaded(plugin->create(o), plugin);
  }
  static void randomise(PeftMethod& method, uint64_t seed) {
    at::NoGradGuard no_grad;
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (auto& t : method.trainable_tensors()) t.tensor.normal_(0, 0.2, g);
  }
  static inline host::PluginRegistry* registry_ = nullptr;
};

TEST_F(LoraTest, StartsAsTheBaseWithTheClosedFormParameterCount) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  Rwkv7Model base(model_weights(), {at::kFloat, at::kCPU}, "test");
  Rwkv7Model adapted(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto method = lora(4);
  method->attach(adapted);
  int64_t count = 0;
  for (const auto& t : method->trainable_tensors()) count += t.tensor.numel();
  int64_t expected = 0;
  for (const auto& site : adapted.linear_sites()) expected += 4 * (site.in_features + site.out_features);  // r (in + out)
  EXPECT_EQ(count, expected);
  EXPECT_TRUE(at::equal(adapted.forward(tokens), base.forward(tokens)));
}

TEST_F(LoraTest, MergedWeightsGiveTheAdapterForwardAndSaveLoadIsExact) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  for (bool rslora : {false, true}) {
    Rwkv7Model adapted(model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = lora(4, 8, rslora);
    method->attach(adapted);
    randomise(*method, 7);
    const at::Tensor with_adapter = adapted.forward(tokens);
    TensorMap merged = model_weights();
    method->merge_into(merged);
    Rwkv7Model merged_model(merged, {at::kFloat, at::kCPU}, "test");
    EXPECT_LE(relative_error(merged_model.forward(tokens), with_adapter), 1e-5) << "rslora " << rslora;
    // The scale is alpha / r, or alpha / sqrt(r): check one site against W + s B A by hand.
    const TensorMap state = method->state_dict();
    const double s = rslora ? 8.0 / 2.0 : 8.0 / 4.0;
    const at::Tensor w = model_weights().at("blocks.1.att.key.weight");
    EXPECT_TRUE(at::allclose(merged.at("blocks.1.att.key.weight"),
                             w + s * at::matmul(state.at("blocks.1.att.key.lora_B"), state.at("blocks.1.att.key.lora_A")),
                             1e-6, 1e-6));
    // Save -> load into a fresh model -> identical forward.
    Rwkv7Model again(model_weights(), {at::kFloat, at::kCPU}, "test");
    auto loaded = lora(4, 8, rslora);
    loaded->attach(again);
    loaded->load_state_dict(state, {});
    EXPECT_TRUE(at::equal(again.forward(tokens), with_adapter));
  }
  Rwkv7Model other(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto wrong_alpha = lora(4, 16);
  wrong_alpha->attach(other);
  Rwkv7Model first(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto saved = lora(4, 8);
  saved->attach(first);
  EXPECT_THROW(wrong_alpha->load_state_dict(saved->state_dict(), {}), Error);  // never mis-scaled
}

TEST_F(LoraTest, ExportsHfPeftAndRwkvPeftFiles) {
  testing::TempDir dir;
  Rwkv7Model model(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto method = lora(4, 8);
  method->attach(model);
  randomise(*method, 9);
  method->export_to("hf-peft", dir / "adapter");
  method->export_to("rwkv-pth", dir / "lora.pth");
  auto check = testing::run_command(
      std::string(PEFTKIT_PYTHON) + " -c \"import json, torch; from safetensors.torch import load_file; "
      "t = load_file('" + (dir / "adapter" / "adapter_model.safetensors").string() + "'); "
      "c = json.load(open('" + (dir / "adapter" / "adapter_config.json").string() + "')); "
      "a = t['base_model.model.blocks.1.ffn.key.lora_A.weight']; b = t['base_model.model.blocks.1.ffn.key.lora_B.weight']; "
      "assert a.shape == (4, 64) and b.shape == (256, 4) and a.dtype == torch.float32, (a.shape, b.shape, a.dtype); "
      "assert len(t) == 24 and c['peft_type'] == 'LORA' and c['r'] == 4 and c['lora_alpha'] == 8, c; "
      "p = torch.load('" + (dir / "lora.pth").string() + "', weights_only=True); "
      "assert torch.equal(p['blocks.1.ffn.key.lora_A'], a) and int(p['lora.r']) == 4 and float(p['lora.alpha']) == 8.0; "
      "print('ok')\"");
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

TEST_F(LoraTest, DropoutGradientsSurviveGradientCheckpointing) {
  const at::Tensor tokens = at::randint(300, {2, 9});
  auto gradients = [&](bool checkpointing, double dropout = 0.3) {
    Rwkv7Model model(model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = lora(4, 8, false, dropout);
    method->attach(model);
    randomise(*method, 11);
    model.set_gradient_checkpointing(checkpointing);
    model.set_training(true);
    at::manual_seed(5);
    model.forward(tokens).square().mean().backward();
    std::vector<at::Tensor> grads;
    for (const auto& t : method->trainable_tensors()) grads.push_back(t.tensor.grad().clone());
    return grads;
  };
  auto plain = gradients(false), checkpointed = gradients(true);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::allclose(plain[i], checkpointed[i], 1e-5, 1e-7)) << i;
  EXPECT_FALSE(at::allclose(plain[1], gradients(false, 0.0)[1]));  // dropout was really applied
}

TEST_F(LoraTest, TrainingThroughARecipeLowersTheLoss) {
  testing::TempDir dir;
  write_pth(dir / "model.pth", model_weights());
  auto make = testing::write_token_stream(PEFTKIT_PYTHON, dir / "tokens.npy");
  ASSERT_EQ(make.exit_code, 0) << make.output;
  auto recipe = testing::write_file(dir / "lora.toml",
                                    "[model]\npath = \"model.pth\"\n[data]\nformat = \"numpy\"\npath = \"tokens.npy\"\n"
                                    "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n[train]\nctx_len = 16\n"
                                    "micro_bsz = 2\nepoch_steps = 10\nepoch_count = 1\nlr_init = 1e-2\nlr_final = 1e-3\n"
                                    "precision = \"fp32\"\ngrad_cp = true\n[output]\ndir = \"out\"\n");
  auto result = testing::run_command(testing::peftkit_command("train " + recipe.string() + " --plugin-dir " PLUGIN_DIR));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::vector<double> losses;
  for (const auto& line : testing::read_metrics(dir / "out" / "metrics.jsonl")) losses.push_back(line["loss"].get<double>());
  ASSERT_EQ(losses.size(), 10u);
  EXPECT_LT(losses.back(), losses.front());
  TensorMap saved = read_pth(dir / "out" / "rwkv-0.pth");
  EXPECT_EQ(saved.size(), 2u * 12u + 3u);  // A and B for 12 sites, with r, alpha, rslora
}

}  // namespace
}  // namespace peftkit

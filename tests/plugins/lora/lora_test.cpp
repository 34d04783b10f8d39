#include <nlohmann/json.hpp>
#include <set>

#include "peft_fixtures.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

using testing::relative_error;

TensorMap model_weights() { return testing::small_model_weights(); }

std::shared_ptr<PeftMethod> lora(int64_t r = 4, double alpha = 8, bool rslora = false,
                                 double dropout = 0) {
  return testing::make_method(
      "lora", {{"r", r}, {"alpha", alpha}, {"use_rslora", rslora}, {"dropout", dropout}});
}

void randomise(PeftMethod& method, uint64_t seed) { testing::randomise(method, seed); }

TEST(LoraTest, StartsAsTheBaseWithTheClosedFormParameterCount) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  model::RwkvModel base(model_weights(), {at::kFloat, at::kCPU}, "test");
  model::RwkvModel adapted(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto method = lora(4);
  method->attach(adapted);
  int64_t count = 0;
  for (const auto& t : method->trainable_tensors()) count += t.tensor.numel();
  int64_t expected = 0;
  for (const auto& site : adapted.linear_sites())
    expected += 4 * (site.in_features + site.out_features);  // r (in + out)
  EXPECT_EQ(count, expected);
  EXPECT_TRUE(at::equal(adapted.forward(tokens), base.forward(tokens)));
}

// init = "gaussian" draws A with standard deviation 1/r (HF PEFT's), "kaiming" uniformly within
// 1/sqrt(in); targets puts adapters on the named sites only.
TEST(LoraTest, GaussianInitAndTargetsDoWhatTheRecipeSays) {
  const int64_t r = 16;
  auto a_of = [&](const std::string& init, const std::vector<std::string>& targets) {
    model::RwkvModel adapted(model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = testing::make_method("lora", {{"r", r}, {"init", init}, {"targets", targets}});
    method->attach(adapted);
    std::vector<at::Tensor> as;
    std::set<std::string> sites;
    for (const auto& t : method->trainable_tensors()) {
      if (t.name.size() > 7 && t.name.substr(t.name.size() - 7) == ".lora_A") {
        as.push_back(t.tensor.detach().flatten());
        sites.insert(t.name.substr(0, t.name.size() - 7));
      }
    }
    return std::make_pair(at::cat(as), sites);
  };
  const auto [gaussian, all_sites] = a_of("gaussian", {"att.key", "att.value", "ffn.key"});
  EXPECT_EQ(all_sites.size(), 3u * 2u) << "three sites in each of the two blocks";
  for (const auto& site : all_sites)
    EXPECT_TRUE(site.find("att.key") != std::string::npos ||
                site.find("att.value") != std::string::npos ||
                site.find("ffn.key") != std::string::npos)
        << site;
  const double std = gaussian.std().item<double>(), mean = gaussian.mean().item<double>();
  EXPECT_NEAR(std, 1.0 / r, 0.05 / r) << gaussian.numel() << " draws";
  EXPECT_NEAR(mean, 0.0, 0.05 / r);
  // A normal sample has kurtosis 3, a uniform one 1.8.
  const double kurtosis = ((gaussian - mean) / std).pow(4).mean().item<double>();
  EXPECT_NEAR(kurtosis, 3.0, 0.3);
  const auto [kaiming, key_sites] = a_of("kaiming", {"att.key"});
  EXPECT_EQ(key_sites.size(), 2u);
  const double in = static_cast<double>(model_weights().at("blocks.0.att.key.weight").size(1));
  EXPECT_LE(kaiming.abs().max().item<double>(), 1.0 / std::sqrt(in));
  const double kaiming_kurtosis =
      ((kaiming - kaiming.mean()) / kaiming.std()).pow(4).mean().item<double>();
  EXPECT_NEAR(kaiming_kurtosis, 1.8, 0.3);
}

TEST(LoraTest, MergedWeightsGiveTheAdapterForwardAndSaveLoadIsExact) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  for (bool rslora : {false, true}) {
    model::RwkvModel adapted(model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = lora(4, 8, rslora);
    method->attach(adapted);
    randomise(*method, 7);
    const at::Tensor with_adapter = adapted.forward(tokens);
    TensorMap merged = model_weights();
    method->merge_into(merged);
    model::RwkvModel merged_model(merged, {at::kFloat, at::kCPU}, "test");
    EXPECT_LE(relative_error(merged_model.forward(tokens), with_adapter), 1e-5)
        << "rslora " << rslora;
    // The scale is alpha / r, or alpha / sqrt(r): check one site against W + s B A by hand.
    const TensorMap state = method->state_dict();
    const double s = rslora ? 8.0 / 2.0 : 8.0 / 4.0;
    const at::Tensor w = model_weights().at("blocks.1.att.key.weight");
    EXPECT_TRUE(at::allclose(merged.at("blocks.1.att.key.weight"),
                             w + s * at::matmul(state.at("blocks.1.att.key.lora_B"),
                                                state.at("blocks.1.att.key.lora_A")),
                             1e-6, 1e-6));
    // Save -> load into a fresh model -> identical forward.
    model::RwkvModel again(model_weights(), {at::kFloat, at::kCPU}, "test");
    auto loaded = lora(4, 8, rslora);
    loaded->attach(again);
    loaded->load_state_dict(state, {});
    EXPECT_TRUE(at::equal(again.forward(tokens), with_adapter));
  }
  model::RwkvModel other(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto wrong_alpha = lora(4, 16);
  wrong_alpha->attach(other);
  model::RwkvModel first(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto saved = lora(4, 8);
  saved->attach(first);
  EXPECT_TRUE(testing::throws_with(
      [&] { wrong_alpha->load_state_dict(saved->state_dict(), {}); },
      "trained with lora.alpha = 8 but [peft.lora] alpha = 16"));  // never mis-scaled
}

TEST(LoraTest, ExportsHfPeftAndRwkvPeftFiles) {
  testing::TempDir dir;
  model::RwkvModel model(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto method = lora(4, 8);
  method->attach(model);
  randomise(*method, 9);
  method->export_to("hf-peft", dir / "adapter");
  method->export_to("rwkv-pth", dir / "lora.pth");
  auto check =
      testing::run_command(std::string(PEFTKIT_PYTHON) +
                           " -c \"import json, torch; from safetensors.torch import load_file; "
                           "t = load_file('" +
                           (dir / "adapter" / "adapter_model.safetensors").string() +
                           "'); "
                           "c = json.load(open('" +
                           (dir / "adapter" / "adapter_config.json").string() +
                           "')); "
                           "a = t['base_model.model.blocks.1.ffn.key.lora_A.weight']; b = "
                           "t['base_model.model.blocks.1.ffn.key.lora_B.weight']; "
                           "assert a.shape == (4, 64) and b.shape == (" +
                           std::to_string(testing::small_config().ffn) +
                           ", 4) and a.dtype == "
                           "torch.float32, (a.shape, b.shape, a.dtype); "
                           "assert len(t) == " +
                           std::to_string(2 * testing::small_linear_sites()) +
                           " and c['peft_type'] == 'LORA' and c['r'] == 4 and "
                           "c['lora_alpha'] == 8, c; "
                           "p = torch.load('" +
                           (dir / "lora.pth").string() +
                           "', weights_only=True); "
                           "assert torch.equal(p['blocks.1.ffn.key.lora_A'], a) and "
                           "int(p['lora.r']) == 4 and float(p['lora.alpha']) == 8.0; "
                           "print('ok')\"");
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

TEST(LoraTest, DropoutGradientsSurviveGradientCheckpointing) {
  const at::Tensor tokens = at::randint(300, {2, 9});
  auto gradients = [&](bool checkpointing, double dropout = 0.3) {
    model::RwkvModel model(model_weights(), {at::kFloat, at::kCPU}, "test");
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
  for (size_t i = 0; i < plain.size(); ++i)
    EXPECT_TRUE(at::allclose(plain[i], checkpointed[i], 1e-5, 1e-7)) << i;
  EXPECT_FALSE(at::allclose(plain[1], gradients(false, 0.0)[1]));  // dropout was really applied
}

// The gradients by the chain rule through the merged weight W' = W + s B A (fp64 model): with
// dL/dW' from a model that trains W' itself, dL/dA = s B^T dL/dW' and dL/dB = s dL/dW' A^T, and
// what reaches the adapted sites' inputs (the LayerNorms' gradients) is the merged model's. One
// adapted site's base weight trains too (train_parts) and gets dL/dW'.
TEST(LoraTest, GradientsFollowTheChainRuleThroughTheMergedWeight) {
  const at::Tensor tokens = at::randint(300, {2, 9});
  TensorMap weights = model_weights();
  for (auto& [name, tensor] : weights) tensor = tensor.to(at::kDouble);
  const std::string trained_site = "blocks.1.att.key";
  auto layer_norm = [](const std::string& name) { return name.find("ln") != std::string::npos; };

  model::RwkvModel adapted(weights, {at::kDouble, at::kCPU}, "test");
  auto method = lora(4, 8);  // s = 2
  method->attach(adapted);
  randomise(*method, 3);
  std::map<std::string, at::Tensor> adapted_params;
  for (const auto& t : adapted.make_trainable([&](const std::string& name) {
         return layer_norm(name) || name == trained_site + ".weight";
       }))
    adapted_params[t.name] = t.tensor;
  adapted.forward(tokens).square().mean().backward();

  TensorMap merged_weights = weights;
  method->merge_into(merged_weights);
  model::RwkvModel merged(merged_weights, {at::kDouble, at::kCPU}, "test");
  std::map<std::string, at::Tensor> merged_params;
  for (const auto& t : merged.make_trainable(
           [&](const std::string& name) { return layer_norm(name) || name.ends_with(".weight"); }))
    merged_params[t.name] = t.tensor;
  merged.forward(tokens).square().mean().backward();

  std::map<std::string, at::Tensor> pair;
  for (const auto& t : method->trainable_tensors()) pair[t.name] = t.tensor;
  int sites = 0;
  for (const auto& site : adapted.linear_sites()) {
    const at::Tensor g = merged_params.at(site.name + ".weight").grad().to(at::kDouble);
    const at::Tensor a = pair.at(site.name + ".lora_A"), b = pair.at(site.name + ".lora_B");
    EXPECT_LT(relative_error(a.grad(), 2 * b.to(at::kDouble).t().mm(g)), 1e-4) << site.name;
    EXPECT_LT(relative_error(b.grad(), 2 * g.mm(a.to(at::kDouble).t())), 1e-4) << site.name;
    ++sites;
  }
  EXPECT_GE(sites, 6);
  for (const auto& [name, param] : adapted_params)
    EXPECT_LT(relative_error(param.grad(), merged_params.at(name).grad().to(at::kDouble)), 1e-4)
        << name;
  EXPECT_TRUE(adapted_params.count(trained_site + ".weight"));
}

TEST(LoraTest, TrainingThroughARecipeLowersTheLoss) {
  testing::TempDir dir;
  auto run = testing::train_small_model(
      dir.path(), "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n");
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  ASSERT_EQ(run.losses.size(), 10u);
  EXPECT_LT(run.losses.back(), run.losses.front());
  TensorMap saved = read_pth(dir / "out" / "rwkv-0.pth");
  // A and B for every site, with r, alpha, rslora.
  EXPECT_EQ(saved.size(), static_cast<size_t>(2 * testing::small_linear_sites() + 3));
}

}  // namespace
}  // namespace peftkit

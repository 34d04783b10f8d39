#include <fstream>
#include <nlohmann/json.hpp>

#include "peft_fixtures.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

using testing::make_method;
using testing::relative_error;
using testing::small_model_weights;

constexpr int64_t kRank = 4;
constexpr double kAlpha = 8;  // s = alpha / r = 2
constexpr double kScale = kAlpha / kRank;

std::shared_ptr<PeftMethod> pissa(const std::string& svd = "exact", int64_t seed = 0) {
  return make_method("pissa", {{"r", kRank}, {"alpha", kAlpha}, {"svd", svd}, {"svd_seed", seed}});
}

TEST(PissaTest, ResidualPlusScaledInitPairIsTheBaseAndTheOutputStartsUnchanged) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  model::RwkvModel base(small_model_weights(), {at::kFloat, at::kCPU}, "test");
  const TensorMap original = small_model_weights();
  for (const std::string svd : {"exact", "randomized"}) {
    model::RwkvModel adapted(small_model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = pissa(svd);
    method->attach(adapted);
    int64_t expected = 0;
    for (const auto& site : adapted.linear_sites())
      expected += kRank * (site.in_features + site.out_features);
    EXPECT_EQ(testing::trainable_count(*method), expected) << "r (in + out) per site";
    const TensorMap state = method->state_dict();
    for (const auto& site : adapted.linear_sites()) {
      const at::Tensor w = original.at(site.name + ".weight").to(at::kDouble);
      const at::Tensor init = at::matmul(state.at(site.name + ".init_lora_B").to(at::kDouble),
                                         state.at(site.name + ".init_lora_A").to(at::kDouble));
      const at::Tensor residual = adapted.linear(site.name).dense_weight().to(at::kDouble);
      EXPECT_LE(relative_error(residual + kScale * init, w), 1e-6) << svd << " " << site.name;
      if (svd == "exact") {
        // Eckart-Young: the residual of the best rank-r approximation has the energy of the
        // trailing singular values (fp64 SVD), whatever basis a near-degenerate spectrum picks.
        const at::Tensor s = at::linalg_svdvals(w);
        const double trailing = s.narrow(0, kRank, s.size(0) - kRank).square().sum().item<double>();
        EXPECT_NEAR(residual.square().sum().item<double>() / trailing, 1.0, 1e-5) << site.name;
      }
    }
    EXPECT_LE(relative_error(adapted.forward(tokens), base.forward(tokens)), 1e-5) << svd;
  }
}

TEST(PissaTest, RandomisedSvdFindsTheLeadingSubspaceOfALowRankMatrix) {
  // A weight of exact rank r: any correct range finder recovers it, so the residual vanishes.
  TensorMap weights = small_model_weights();
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(17);
  weights["blocks.0.att.key.weight"] =
      at::matmul(at::randn({64, kRank}, g), at::randn({kRank, 64}, g)) * 0.1;
  model::RwkvModel model(weights, {at::kFloat, at::kCPU}, "test");
  auto method = pissa("randomized");
  method->attach(model);
  EXPECT_LE(model.linear("blocks.0.att.key").dense_weight().norm().item<double>(),
            1e-4 * weights.at("blocks.0.att.key.weight").norm().item<double>());
}

// svd_niter: on a weight whose spectrum decays slowly, more power iterations leave a residual
// closer to the exact SVD's (the trailing singular values' energy); none leaves a worse one.
TEST(PissaTest, MorePowerIterationsBringTheRandomisedSvdToTheExactOne) {
  TensorMap weights = small_model_weights();
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(23);
  // Singular values 1, 0.9, 0.81, ...: no gap after the leading r.
  const at::Tensor u = std::get<0>(at::linalg_qr(at::randn({64, 64}, g)));
  const at::Tensor v = std::get<0>(at::linalg_qr(at::randn({64, 64}, g)));
  const at::Tensor values = at::pow(0.9, at::arange(64, at::kFloat));
  weights["blocks.0.att.key.weight"] = at::matmul(u * values, v.t());
  const double trailing = values.narrow(0, kRank, 64 - kRank).square().sum().item<double>();
  auto excess = [&](int64_t niter) {  // residual energy over the best possible
    model::RwkvModel model(weights, {at::kFloat, at::kCPU}, "test");
    auto method = make_method("pissa", {{"r", kRank},
                                        {"alpha", kAlpha},
                                        {"svd", std::string("randomized")},
                                        {"svd_niter", niter}});
    method->attach(model);
    const at::Tensor residual = model.linear("blocks.0.att.key").dense_weight().to(at::kDouble);
    return residual.square().sum().item<double>() / trailing - 1.0;
  };
  const double none = excess(0), some = excess(2), many = excess(8);
  EXPECT_GT(none, 1e-3) << "a single pass is visibly off on this spectrum";
  EXPECT_LT(some, none);
  EXPECT_LT(many, some);
  EXPECT_LT(many, 1e-3);
}

TEST(PissaTest, MergedWeightsAndThePlainLoraExportGiveTheAdapterForward) {
  at::NoGradGuard no_grad;
  testing::TempDir dir;
  const at::Tensor tokens = at::randint(300, {2, 13});
  model::RwkvModel adapted(small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto method = pissa("randomized");
  method->attach(adapted);
  testing::randomise(*method, 5, 0.1);
  const at::Tensor with_adapter = adapted.forward(tokens);

  TensorMap merged = small_model_weights();
  method->merge_into(merged);
  model::RwkvModel merged_model(merged, {at::kFloat, at::kCPU}, "test");
  EXPECT_LE(relative_error(merged_model.forward(tokens), with_adapter), 1e-5);

  // The rank-2r LoRA applied to the unmodified W by its own config's scale gives the same weights.
  method->export_to("hf-peft", dir / "hf");
  const nlohmann::json config =
      nlohmann::json::parse(std::ifstream(dir / "hf" / "adapter_config.json"));
  EXPECT_EQ(config["r"].get<int64_t>(), 2 * kRank);
  const double export_scale = config["lora_alpha"].get<double>() / config["r"].get<double>();
  const TensorMap lora = read_safetensors(dir / "hf" / "adapter_model.safetensors").tensors;
  const TensorMap original = small_model_weights();
  for (const auto& site : adapted.linear_sites()) {
    const at::Tensor a = lora.at("base_model.model." + site.name + ".lora_A.weight");
    const at::Tensor b = lora.at("base_model.model." + site.name + ".lora_B.weight");
    ASSERT_EQ(a.sizes(), at::IntArrayRef({2 * kRank, site.in_features}));
    ASSERT_EQ(b.sizes(), at::IntArrayRef({site.out_features, 2 * kRank}));
    const at::Tensor via_lora =
        original.at(site.name + ".weight") + export_scale * at::matmul(b, a);
    EXPECT_LE(relative_error(via_lora, merged.at(site.name + ".weight")), 1e-6) << site.name;
  }
  // Unmerge takes the update out again.
  method->unmerge_from(merged);
  EXPECT_LE(relative_error(merged.at("blocks.1.ffn.value.weight"),
                           original.at("blocks.1.ffn.value.weight")),
            1e-6);
}

TEST(PissaTest, SaveLoadRebuildsTheResidualFromTheSavedInitPair) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  model::RwkvModel first(small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto trained = pissa("randomized", 1);
  trained->attach(first);
  testing::randomise(*trained, 6, 0.1);
  const at::Tensor expected = first.forward(tokens);
  // Another seed: another init pair, so the residual must be rebuilt from the saved one.
  model::RwkvModel second(small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto loaded = pissa("randomized", 2);
  loaded->attach(second);
  EXPECT_GT(relative_error(second.forward(tokens), expected), 1e-4);
  loaded->load_state_dict(trained->state_dict(), {});
  EXPECT_LE(relative_error(second.forward(tokens), expected), 1e-6);
  // A saved adapter with another alpha is refused rather than mis-scaled.
  model::RwkvModel third(small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto other_alpha = make_method("pissa", {{"r", kRank}, {"alpha", 2 * kAlpha}});
  other_alpha->attach(third);
  EXPECT_TRUE(testing::throws_with([&] { other_alpha->load_state_dict(trained->state_dict(), {}); },
                                   "trained with pissa.alpha = 8 but [peft.pissa] alpha = 16"));
}

TEST(PissaTest, ExportedFilesOpenInPythonWithTheExpectedNamesShapesAndDtypes) {
  testing::TempDir dir;
  model::RwkvModel model(small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto method = pissa("randomized");
  method->attach(model);
  method->export_to("hf-peft", dir / "hf");
  method->export_to("rwkv-pth", dir / "pissa.pth");
  method->export_to("rwkv-lora-pth", dir / "lora.pth");
  auto check =
      testing::run_command(std::string(PEFTKIT_PYTHON) +
                           " -c \"import json, torch; from safetensors.torch import load_file; "
                           "t = load_file('" +
                           (dir / "hf" / "adapter_model.safetensors").string() +
                           "'); "
                           "c = json.load(open('" +
                           (dir / "hf" / "adapter_config.json").string() +
                           "')); "
                           "a = t['base_model.model.blocks.1.ffn.key.lora_A.weight']; b = "
                           "t['base_model.model.blocks.1.ffn.key.lora_B.weight']; "
                           "assert a.shape == (8, 64) and b.shape == (" +
                           std::to_string(testing::small_config().ffn) +
                           ", 8) and a.dtype == "
                           "b.dtype == torch.float32, (a.shape, b.shape); "
                           "assert len(t) == " +
                           std::to_string(2 * testing::small_linear_sites()) +
                           " and c['peft_type'] == 'LORA' and c['r'] == 8 and "
                           "c['lora_alpha'] == 16, c; "
                           "p = torch.load('" +
                           (dir / "pissa.pth").string() +
                           "', weights_only=True); "
                           "assert p['blocks.1.ffn.key.init_lora_A'].shape == (4, 64) and "
                           "int(p['pissa.r']) == 4, p.keys(); "
                           "assert torch.equal(p['blocks.1.ffn.key.lora_A'], a[:4]) and "
                           "torch.equal(p['blocks.1.ffn.key.init_lora_B'], -b[:, 4:]); "
                           "l = torch.load('" +
                           (dir / "lora.pth").string() +
                           "', weights_only=True); "
                           "assert int(l['lora.r']) == 8 and float(l['lora.alpha']) == 16.0 and "
                           "torch.equal(l['blocks.1.ffn.key.lora_A'], a); "
                           "print('ok')\"");
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

TEST(PissaTest, TrainingThroughARecipeLowersTheLoss) {
  testing::TempDir dir;
  auto run = testing::train_small_model(
      dir.path(), "[peft]\nmethod = \"pissa\"\n[peft.pissa]\nr = 4\nalpha = 4\n", 5e-3);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  // r (in + out) per site, A and B: x070 2 x 4 (4 (64 + 64) + (64 + 256) + (256 + 64)) = 9216.
  int64_t parameters = 0;
  for (const std::string& site : testing::small_config().block_linear_names())
    parameters +=
        4 * (site == "ffn.key" || site == "ffn.value" ? 64 + testing::small_config().ffn : 128);
  parameters *= testing::small_config().n_layer;
  EXPECT_NE(run.command.output.find("trainable parameters: " + std::to_string(parameters) + " in " +
                                    std::to_string(2 * testing::small_linear_sites()) + " tensors"),
            std::string::npos)
      << run.command.output;
  ASSERT_EQ(run.losses.size(), 10u);
  EXPECT_LT(run.losses.back(), run.losses.front());
}

}  // namespace
}  // namespace peftkit

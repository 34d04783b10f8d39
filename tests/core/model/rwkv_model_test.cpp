// Both architectures against independent float64 references written from the spec (Python,
// reading files written by torch.save), and the behaviours every model must have (GPT mode equals
// RNN mode, state passing, bf16, gradient checkpointing) for x070 and x060 alike.
#include "model/rwkv_model.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <fstream>

#include "model/state_file.hpp"
#include "model_fixtures.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"
#include "wkv7/wkv7.hpp"

namespace peftkit {
namespace {

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want.to(at::kDouble)).norm().item<double>() /
         want.to(at::kDouble).norm().item<double>();
}

using testing::perturbed_model;

using model::Architecture;

const model::ModelConfig& tiny() {
  static const model::ModelConfig config = model::ModelConfig::for_size(3, 64, 300, 16);  // H = 4
  return config;
}
const model::ModelConfig& tiny(Architecture arch) {
  static const model::ModelConfig x060 =
      model::ModelConfig::for_size(Architecture::kX060, 3, 64, 300, 16);
  return arch == Architecture::kX060 ? x060 : tiny();
}

// The behaviours every architecture must have, for each of them.
class EveryArchitecture : public ::testing::TestWithParam<Architecture> {
 protected:
  const model::ModelConfig& config() const { return tiny(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Rwkv, EveryArchitecture,
                         ::testing::Values(Architecture::kX070, Architecture::kX060),
                         [](const auto& info) {
                           return std::string(model::architecture_name(info.param));
                         });

at::Tensor random_tokens(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(vocab, {batch, length}, generator);
}

TEST_P(EveryArchitecture, MatchesAnIndependentFloat64ReferenceOnAFileWrittenByTorchSave) {
  testing::TempDir dir;
  const model::ModelConfig config = model::ModelConfig::for_size(GetParam(), 2, 64, 500, 16);
  const bool x060 = GetParam() == Architecture::kX060;
  write_pth(dir / "init.pth", model::init_model(config, 11));
  const at::Tensor tokens = random_tokens(1, 37, 500, 5);
  {
    std::ofstream out(dir / "tokens");
    for (int64_t i = 0; i < tokens.size(1); ++i) out << tokens[0][i].item<int64_t>() << "\n";
  }
  auto result = testing::run_command(std::string(PEFTKIT_PYTHON) + " " +
                                     (x060 ? RWKV6_REFERENCE_SCRIPT : RWKV7_REFERENCE_SCRIPT) +
                                     " " + dir.path().string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  // model.pth: bf16, an OrderedDict in shuffled order (x070: with the unused layer-0 v0/v1/v2).
  auto model = model::RwkvModel::load(dir / "model.pth", {at::kFloat, at::kCPU});
  EXPECT_EQ(model->arch(), GetParam());
  EXPECT_EQ(model->config().layer0_value_lora, !x060);
  const at::Tensor logits = model->forward(tokens).squeeze(0);
  const at::Tensor reference = read_pth(dir / "logits.pth").at("logits");
  const double error = relative_error(logits, reference);
  EXPECT_LT(error, 1e-5) << "relative error of fp32 logits against the fp64 reference: " << error;
  EXPECT_TRUE(at::equal(logits.argmax(-1), reference.argmax(-1)));

  // A state file in RWKV-PEFT's layout (bf16 [H, N, N], value-major for both architectures)
  // mounted as the initial state.
  model->set_state_adapter(std::make_shared<model::FixedStates>(
      model::read_state_file(dir / "state.pth", model->config())));
  const at::Tensor with_state = model->forward(tokens).squeeze(0);
  const at::Tensor reference_state = read_pth(dir / "logits_state.pth").at("logits");
  const double state_error = relative_error(with_state, reference_state);
  EXPECT_LT(state_error, 1e-5) << "relative error with the mounted state: " << state_error;
  EXPECT_GT(relative_error(reference, reference_state), 1e-3);  // the state matters
}

TEST(StateFile, RefusesAStateForAnotherBaseNamingBothShapes) {
  testing::TempDir dir;
  const model::ModelConfig model = model::ModelConfig::for_size(2, 64, 100, 16);
  write_pth(dir / "other.pth", {{"blocks.0.att.time_state", at::zeros({2, 32, 32})},
                                {"blocks.1.att.time_state", at::zeros({2, 32, 32})}});
  write_pth(dir / "short.pth", {{"blocks.0.att.time_state", at::zeros({4, 16, 16})}});
  write_pth(dir / "stray.pth",
            {{"blocks.0.att.time_state", at::zeros({4, 16, 16})}, {"emb.weight", at::zeros({1})}});
  auto error = [&](const std::string& name) {
    try {
      model::read_state_file(dir / name, model);
    } catch (const Error& e) {
      return std::string(e.what()).substr((dir / name).string().size());
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(error("other.pth"),
            ": blocks.0.att.time_state has shape [2, 32, 32] but the model (" + model.describe() +
                ") needs [4, 16, 16]; the state was trained on a base of another shape");
  EXPECT_EQ(error("short.pth"),
            ": the state file has 1 layers but the model has 2; the state was trained on a base of "
            "another shape");
  EXPECT_EQ(error("stray.pth"),
            ": 'emb.weight' is not a state tensor (expected blocks.{i}.att.time_state only)");
}

TEST_P(EveryArchitecture, GptModeEqualsRnnModeOver64Tokens) {
  at::NoGradGuard no_grad;
  model::RwkvModel model(perturbed_model(config(), 1), {at::kFloat, at::kCPU}, "test");
  const at::Tensor tokens = random_tokens(2, 64, config().vocab, 2);
  const at::Tensor parallel = model.forward(tokens);
  model::ModelState state = model.initial_state(2);
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < 64; ++t)
    steps.push_back(model.forward(tokens.slice(1, t, t + 1), &state));
  const double error = relative_error(at::cat(steps, 1), parallel);
  EXPECT_LE(error, 1e-5) << error;
}

TEST_P(EveryArchitecture, TwoHalvesWithTheStateCarriedEqualTheWhole) {
  at::NoGradGuard no_grad;
  model::RwkvModel model(perturbed_model(config(), 3), {at::kFloat, at::kCPU}, "test");
  const at::Tensor tokens = random_tokens(1, 50, config().vocab, 4);
  model::ModelState whole_state = model.initial_state(1);
  const at::Tensor whole = model.forward(tokens, &whole_state);
  model::ModelState state = model.initial_state(1);
  const at::Tensor first = model.forward(tokens.slice(1, 0, 23), &state);
  const at::Tensor second = model.forward(tokens.slice(1, 23, 50), &state);
  EXPECT_LE(relative_error(at::cat({first, second}, 1), whole), 1e-6);
  for (int64_t l = 0; l < config().n_layer; ++l) {
    EXPECT_LE(relative_error(state.wkv[l], whole_state.wkv[l]), 1e-6);
    EXPECT_TRUE(at::allclose(state.att_shift[l], whole_state.att_shift[l]));
  }
}

TEST_P(EveryArchitecture, Bfloat16ModelStaysCloseToFloat32) {
  at::NoGradGuard no_grad;
  TensorMap weights = perturbed_model(config(), 5);
  for (auto& [name, t] : weights) t = t.to(at::kBFloat16).to(at::kFloat);  // same values in both
  model::RwkvModel fp32(weights, {at::kFloat, at::kCPU}, "test");
  model::RwkvModel bf16(weights, {at::kBFloat16, at::kCPU}, "test");
  const at::Tensor tokens = random_tokens(1, 40, config().vocab, 6);
  EXPECT_LE(relative_error(bf16.forward(tokens).to(at::kFloat), fp32.forward(tokens)), 2e-2);
}

// A new model with seed 42 that reads back as `config` and has its parameter count.
TensorMap initialised_model(const model::ModelConfig& config) {
  TensorMap t = model::init_model(config, 42);
  EXPECT_EQ(model::ModelConfig::from_tensors(t, "init").describe(), config.describe());
  int64_t total = 0;
  for (const auto& [name, tensor] : t) total += tensor.numel();
  EXPECT_EQ(total, config.parameter_count());
  return t;
}

TEST(RwkvModel, InitialisesAsRwkvLm) {
  const model::ModelConfig config = model::ModelConfig::for_size(4, 128, 1000, 32);
  TensorMap t = initialised_model(config);
  const int64_t C = 128, L = 4;
  // Closed forms at a few channels, computed here from spec §1.7.
  for (int64_t l : {0, 2, 3}) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    const double r1 = 1.0 - double(l) / L, r01 = double(l) / (L - 1);
    for (int64_t n : {0, 5, 77, 127}) {
      const double ddd = double(n) / C, lin = double(n) / (C - 1) - 0.5;
      const double z = ((n % 32) - 15.5) / 15.5, zigzag = z * std::abs(z);
      const double www = -6 + 6 * std::pow(double(n) / (C - 1), 1 + std::pow(r01, 0.3));
      auto at_n = [&](const std::string& name) {
        return t.at(p + name).view({-1})[n].item<double>();
      };
      EXPECT_NEAR(at_n("att.x_r"), 1 - std::pow(ddd, 0.2 * r1), 1e-6);
      EXPECT_NEAR(at_n("att.x_w"), 1 - std::pow(ddd, 0.9 * r1), 1e-6);
      EXPECT_NEAR(at_n("att.x_k"), 1 - std::pow(ddd, 0.7 * r1), 1e-6);
      EXPECT_NEAR(at_n("att.w0"), www + 0.5 + 2.5 * zigzag, 1e-5);
      EXPECT_NEAR(at_n("att.a0"), -0.19 + 0.3 * zigzag + 0.4 * lin, 1e-6);
      EXPECT_NEAR(at_n("att.k_k"), 0.71 - 0.1 * lin, 1e-6);
      EXPECT_NEAR(at_n("ffn.x_k"), 1 - std::pow(ddd, std::pow(r1, 4)), 1e-6);
      if (l > 0) {
        EXPECT_NEAR(at_n("att.v0"), 0.73 - 0.4 * lin, 1e-6);
      }
    }
    EXPECT_NEAR(t.at(p + "att.ln_x.weight")[0].item<double>(), std::pow((1.0 + l) / L, 0.7), 1e-6);
    EXPECT_EQ(t.at(p + "att.k_a").min().item<float>(), 1.02f);
    EXPECT_EQ(t.at(p + "att.r_k").max().item<float>(), -0.04f);
    for (const char* zero : {"att.w1", "att.a1", "att.g1", "att.output.weight", "ffn.value.weight"})
      EXPECT_EQ(t.at(p + zero).abs().max().item<float>(), 0.0f) << zero;
    // Orthogonal with the stated gains: W W^T = gain^2 I for the wide [D, C] matrices, W^T W for
    // square/tall.
    auto expect_orthogonal = [&](const std::string& name, double gain) {
      at::Tensor w = t.at(p + name).to(at::kDouble);
      at::Tensor gram = w.size(0) <= w.size(1) ? at::matmul(w, w.t()) : at::matmul(w.t(), w);
      EXPECT_LT(
          (gram - gain * gain * at::eye(gram.size(0), at::kDouble)).abs().max().item<double>(),
          1e-5)
          << name;
    };
    expect_orthogonal("att.receptance.weight", 1.0);
    expect_orthogonal("att.key.weight", 0.1);
    expect_orthogonal("att.value.weight", 1.0);
    expect_orthogonal("att.w2", 0.1);
    expect_orthogonal("att.g2", 0.1);
    expect_orthogonal("ffn.key.weight", 1.0);
  }
  EXPECT_EQ(t.count("blocks.0.att.v1"), 0u);
  EXPECT_LE(t.at("emb.weight").abs().max().item<float>(), 1e-4f);
  at::Tensor head = t.at("head.weight").to(at::kDouble);
  const double gain = 0.5 * std::sqrt(1000.0 / 128.0);
  EXPECT_LT((at::matmul(head.t(), head) - gain * gain * at::eye(128, at::kDouble))
                .abs()
                .max()
                .item<double>(),
            1e-4);
  // Same seed, same model.
  EXPECT_TRUE(at::equal(model::init_model(config, 42).at("blocks.1.att.key.weight"),
                        t.at("blocks.1.att.key.weight")));
}

TEST(ModelConfig, OfficialGeometriesHaveTheReleasedLowRankDimsAndParameterCounts) {
  auto dims = [](int64_t L, int64_t C) {
    auto c = model::ModelConfig::for_size(L, C, 65536, 64);
    return std::vector<int64_t>{c.dim_w, c.dim_a, c.dim_v, c.dim_g};
  };
  EXPECT_EQ(dims(12, 768), (std::vector<int64_t>{64, 64, 32, 128}));
  EXPECT_EQ(dims(24, 1024), (std::vector<int64_t>{64, 64, 32, 128}));
  EXPECT_EQ(dims(24, 2048), (std::vector<int64_t>{96, 96, 64, 256}));
  EXPECT_EQ(dims(32, 2560), (std::vector<int64_t>{96, 96, 64, 320}));
  // README: 450.834432M parameters for L24-D1024 (layer-0 v-LoRA present).
  auto c = model::ModelConfig::for_size(24, 1024, 65536, 64);
  c.layer0_value_lora = true;
  EXPECT_EQ(c.parameter_count(), 450834432);
}

TEST(ModelConfig, RejectsOtherArchitecturesAndBrokenFiles) {
  TensorMap t = model::init_model(tiny(), 1);
  auto error = [](const TensorMap& m) {
    try {
      model::ModelConfig::from_tensors(m, "m.pth");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  TensorMap both = t;
  both["blocks.0.att.time_maa_x"] = at::zeros({1, 1, 64});
  EXPECT_EQ(error(both),
            "m.pth: holds both blocks.0.att.time_maa_x (RWKV-6) and blocks.0.att.r_k (RWKV-7): not "
            "one model");
  TensorMap v5 = model::init_model(tiny(Architecture::kX060), 1);
  v5.erase("blocks.0.att.time_maa_x");
  v5["blocks.0.att.time_first"] = at::zeros({4, 16});
  EXPECT_EQ(error(v5),
            "m.pth: an RWKV-4/5 model (time_mix_k / time_first); peftkit reads RWKV-6 (x060) and "
            "RWKV-7 (x070)");
  TensorMap v6 = model::init_model(tiny(Architecture::kX060), 1);
  v6.erase("blocks.2.ffn.receptance.weight");
  EXPECT_EQ(error(v6),
            "m.pth: missing tensor 'blocks.2.ffn.receptance.weight' (not an RWKV-6 x060 model?)");
  TensorMap deep = t;
  deep["blocks.0.ffn.s_emb.weight"] = at::zeros({300, 32});
  EXPECT_EQ(error(deep),
            "m.pth: 1 unexpected tensor(s) for an RWKV-7 x070 model: blocks.0.ffn.s_emb.weight "
            "(DeepEmbed and other variants are not supported)");
  TensorMap missing = t;
  missing.erase("blocks.1.att.k_a");
  EXPECT_EQ(error(missing), "m.pth: missing tensor 'blocks.1.att.k_a' (not an RWKV-7 x070 model?)");
  TensorMap shape = t;
  shape["blocks.2.att.key.weight"] = at::zeros({64, 32});
  EXPECT_NE(
      error(shape).find("m.pth: blocks.2.att.key.weight has shape [64, 32], expected [64, 64]"),
      std::string::npos);
}

TEST_P(EveryArchitecture, GradientCheckpointingGivesTheSameGradients) {
  const TensorMap weights = perturbed_model(config(), 8);
  const at::Tensor tokens = random_tokens(2, 21, config().vocab, 9);
  auto gradients = [&](bool checkpointing, bool keep_wkv = false) {
    model::RwkvModel model(weights, {at::kFloat, at::kCPU}, "test");
    std::vector<TrainableTensor> trainable =
        model.make_trainable([](const std::string&) { return true; });
    std::vector<at::Tensor> states;
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
    for (int64_t l = 0; l < config().n_layer; ++l) {
      states.push_back(
          at::normal(0, 0.5, {config().n_head, config().head_size, config().head_size}, g)
              .requires_grad_(true));
      trainable.push_back({"state" + std::to_string(l), states.back()});
    }
    model.set_state_adapter(std::make_shared<model::FixedStates>(states));
    model.set_gradient_checkpointing(checkpointing, keep_wkv);
    model.forward(tokens).square().mean().backward();
    std::map<std::string, at::Tensor> grads;
    for (const auto& t : trainable) grads[t.name] = t.tensor.grad().clone();
    return grads;
  };
  const auto plain = gradients(false), checkpointed = gradients(true);
  ASSERT_EQ(plain.size(), weights.size() + 3u);
  for (const auto& [name, grad] : plain) {
    ASSERT_TRUE(checkpointed.at(name).defined()) << name;
    EXPECT_TRUE(at::allclose(checkpointed.at(name), grad, 1e-5, 1e-7)) << name;
  }
  EXPECT_GT(plain.at("state1").abs().max().item<float>(), 0.0f);

  // grad_cp_keep_wkv: the recomputation takes the first pass's WKV forward, which is the same
  // arithmetic, so every gradient is bit-identical to plain checkpointing.
  if (config().arch == Architecture::kX060) {
    EXPECT_TRUE(testing::throws_with([&] { gradients(true, true); },
                                     "grad_cp_keep_wkv = true applies to x070"));
    return;
  }
  const int64_t taken = kernels::wkv7_memos_taken();
  const auto kept = gradients(true, true);
  EXPECT_EQ(kernels::wkv7_memos_taken() - taken, config().n_layer);
  for (const auto& [name, grad] : checkpointed) EXPECT_TRUE(at::equal(kept.at(name), grad)) << name;
  EXPECT_TRUE(testing::throws_with([&] { gradients(false, true); }, "needs grad_cp = true"));
}

TEST(RwkvModel, ExposesNamedSitesAndRefusesUnknownOnes) {
  model::RwkvModel model(model::init_model(tiny(), 1), {at::kFloat, at::kCPU}, "test");
  auto sites = model.linear_sites();
  ASSERT_EQ(sites.size(), 18u);
  EXPECT_EQ(sites[1].name, "blocks.0.att.key");
  EXPECT_EQ(sites[4].name, "blocks.0.ffn.key");
  EXPECT_EQ(sites[4].out_features, 256);
  EXPECT_EQ(model.state_sites()[2].name, "blocks.2.att");
  EXPECT_TRUE(testing::throws_with([&] { model.linear("blocks.0.att.gate"); },
                                   "no linear site 'blocks.0.att.gate'"));
  EXPECT_EQ(model.architecture(), "rwkv7");
}

TEST(RwkvModel, X060HasGateAndReceptanceSites) {
  model::RwkvModel model(model::init_model(tiny(Architecture::kX060), 1), {at::kFloat, at::kCPU},
                         "test");
  EXPECT_EQ(model.architecture(), "rwkv6");
  auto sites = model.linear_sites();
  ASSERT_EQ(sites.size(), 24u);  // 8 per layer
  std::vector<std::string> first;
  for (int i = 0; i < 8; ++i) first.push_back(sites[i].name);
  EXPECT_EQ(first, (std::vector<std::string>{"blocks.0.att.receptance", "blocks.0.att.key",
                                             "blocks.0.att.value", "blocks.0.att.gate",
                                             "blocks.0.att.output", "blocks.0.ffn.key",
                                             "blocks.0.ffn.receptance", "blocks.0.ffn.value"}));
  EXPECT_EQ(sites[5].out_features, tiny(Architecture::kX060).ffn);
  EXPECT_EQ(sites[8].layer, 1);
  EXPECT_EQ(model.state_sites()[1].heads, 4);
  try {
    model.linear("blocks.0.att.w1");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RWKV-6 sites are blocks.{0..2}.att.receptance|att.key|"),
              std::string::npos)
        << e.what();
  }
}

TEST(RwkvModel, X060InitialisesAsRwkvLm) {
  const model::ModelConfig config =
      model::ModelConfig::for_size(Architecture::kX060, 4, 128, 1000, 32);
  EXPECT_EQ(config.ffn, 448);  // int(3.5 * 128 / 32) * 32
  EXPECT_EQ(config.dim_mix, 32);
  EXPECT_EQ(config.dim_decay, 64);
  TensorMap t = initialised_model(config);
  const int64_t C = 128, L = 4;
  // Closed forms at a few channels, computed here from spec §4.
  for (int64_t l : {0, 2, 3}) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    const double r1 = 1.0 - double(l) / L, r01 = double(l) / (L - 1);
    for (int64_t n : {0, 5, 77, 127}) {
      const double ddd = double(n) / C, position = double(n) / (C - 1);
      auto at_n = [&](const std::string& name) {
        return t.at(p + name).view({-1})[n].item<double>();
      };
      EXPECT_NEAR(at_n("att.time_maa_x"), 1 - std::pow(ddd, r1), 1e-6);
      EXPECT_NEAR(at_n("att.time_maa_v"), 1 - (std::pow(ddd, r1) + 0.3 * r01), 1e-6);
      EXPECT_NEAR(at_n("att.time_maa_r"), 1 - std::pow(ddd, 0.5 * r1), 1e-6);
      EXPECT_NEAR(at_n("att.time_decay"), -6 + 5 * std::pow(position, 0.7 + 1.3 * r01), 1e-5);
      EXPECT_NEAR(at_n("att.time_faaaa"), r01 * (1 - position) + 0.1 * ((n + 1) % 3 - 1), 1e-6);
      EXPECT_NEAR(at_n("ffn.time_maa_k"), 1 - std::pow(ddd, std::pow(r1, 3)), 1e-6);
    }
    for (const char* zero : {"att.time_maa_w1", "att.time_decay_w1", "att.output.weight",
                             "ffn.receptance.weight", "ffn.value.weight"})
      EXPECT_EQ(t.at(p + zero).abs().max().item<float>(), 0.0f) << zero;
    EXPECT_LE(t.at(p + "att.time_maa_w2").abs().max().item<float>(), 0.01f);
    EXPECT_GT(t.at(p + "att.time_maa_w2").abs().max().item<float>(), 0.009f);
    at::Tensor gate = t.at(p + "att.gate.weight").to(at::kDouble);
    EXPECT_LT(
        (at::matmul(gate.t(), gate) - 0.01 * at::eye(C, at::kDouble)).abs().max().item<double>(),
        1e-5);
  }
}

}  // namespace
}  // namespace peftkit

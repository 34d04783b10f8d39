#include <fstream>

#include "peft_fixtures.hpp"

namespace peftkit {
namespace {

const model::ModelConfig& config() { return testing::small_config(); }  // H = 4, N = 16
TensorMap model_weights() { return testing::small_model_weights(); }

std::shared_ptr<PeftMethod> method(const std::string& init_file = "", bool tune_shift = false) {
  return testing::make_method("state", {{"init_file", init_file}, {"tune_shift", tune_shift}});
}

TEST(StateTuningTest, StartsAtZeroSoTheOutputEqualsTheBase) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 17});
  model::RwkvModel base(model_weights(), {at::kFloat, at::kCPU}, "test");
  const at::Tensor expected = base.forward(tokens);
  model::RwkvModel tuned(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto state = method();
  state->attach(tuned);
  auto trainable = state->trainable_tensors();
  ASSERT_EQ(trainable.size(), 2u);
  int64_t count = 0;
  for (const auto& t : trainable) count += t.tensor.numel();
  EXPECT_EQ(count, config().n_layer * config().n_head * config().head_size *
                       config().head_size);  // L H N^2
  EXPECT_TRUE(at::equal(tuned.forward(tokens), expected));
  EXPECT_EQ(method("", true)->trainable_tensors().size(), 0u);  // nothing before attach
}

TEST(StateTuningTest, StateGradientMatchesFiniteDifferencesOfTheLoss) {
  model::RwkvModel model(model_weights(), {at::kDouble, at::kCPU}, "test");
  auto state = method("", true);
  state->attach(model);
  auto trainable = state->trainable_tensors();
  ASSERT_EQ(trainable.size(), 6u);  // time_state and both shifts per layer
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  {
    at::NoGradGuard no_grad;
    for (auto& t : trainable) t.tensor.normal_(0, 0.3, g);
  }
  const at::Tensor tokens = at::randint(300, {3, 9}, g), targets = at::randint(300, {3, 9}, g);
  auto loss = [&]() {
    return at::cross_entropy_loss(model.forward(tokens).view({-1, 300}), targets.view({-1}));
  };
  loss().backward();
  // The ReLU² of the channel-mix has a kink in its second derivative; x060's test model has a live
  // ffn.value (x070's is ~1e-3), so a difference step that straddles one is off by up to ~3e-3.
  // (The WKV6 kernel itself is checked against differences in float64 to 1e-7.)
  const double tolerance = testing::small_config().arch == model::Architecture::kX060 ? 1e-2 : 1e-5;
  for (const auto& t : trainable) {
    at::Tensor flat = t.tensor.detach().view({-1});
    at::Tensor grad = t.tensor.grad().view({-1});
    for (int64_t e : {int64_t{0}, flat.numel() / 3, flat.numel() - 1}) {
      at::NoGradGuard no_grad;
      // The states are fp32 masters: divide by the steps they really took, not by 2h.
      const double h = 1e-5, saved = flat[e].item<double>();
      flat[e].fill_(saved + h);
      const double up = flat[e].item<double>(), plus = loss().item<double>();
      flat[e].fill_(saved - h);
      const double down = flat[e].item<double>(), minus = loss().item<double>();
      flat[e].fill_(saved);
      const double numeric = (plus - minus) / (up - down);
      EXPECT_NEAR(grad[e].item<double>(), numeric, 1e-7 + tolerance * std::abs(numeric))
          << t.name << "[" << e << "]";
    }
  }
}

TEST(StateTuningTest, SavesRwkvPeftAndAi00LayoutsAndReloadsThem) {
  testing::TempDir dir;
  model::RwkvModel model(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto state = method();
  state->attach(model);
  {
    at::NoGradGuard no_grad;
    for (auto& t : state->trainable_tensors()) t.tensor.uniform_(-1, 1);
  }
  state->export_to("rwkv-pth", dir / "state.pth");
  state->export_to("ai00", dir / "state.safetensors");
  auto check = testing::run_command(
      std::string(PEFTKIT_PYTHON) +
      " -c \"import torch; from safetensors.torch import load_file; "
      "a = torch.load('" +
      (dir / "state.pth").string() +
      "', weights_only=True); "
      "b = load_file('" +
      (dir / "state.safetensors").string() +
      "'); "
      "assert sorted(a) == ['blocks.0.att.time_state', 'blocks.1.att.time_state'], sorted(a); "
      "assert a['blocks.1.att.time_state'].dtype == torch.bfloat16 and "
      "a['blocks.1.att.time_state'].shape == (4, 16, 16); "
      "assert b['blocks.1.att.time_state'].dtype == torch.float16; "
      "d = (b['blocks.1.att.time_state'].float() - "
      "a['blocks.1.att.time_state'].float().transpose(-1, -2)).abs().max(); "
      "assert d < 1e-2, d; print('ok')\"");
  EXPECT_EQ(check.exit_code, 0) << check.output;
  // A new run continues from the file; a file for another base is refused naming both shapes.
  model::RwkvModel again(model_weights(), {at::kFloat, at::kCPU}, "test");
  auto continued = method((dir / "state.pth").string());
  continued->attach(again);
  EXPECT_TRUE(at::equal(continued->state_dict().at("blocks.0.att.time_state"),
                        state->state_dict().at("blocks.0.att.time_state")));
  write_pth(dir / "other.pth", {{"blocks.0.att.time_state", at::zeros({2, 32, 32})},
                                {"blocks.1.att.time_state", at::zeros({2, 32, 32})}});
  model::RwkvModel third(model_weights(), {at::kFloat, at::kCPU}, "test");
  try {
    method((dir / "other.pth").string())->attach(third);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(
        e.what(),
        "state: blocks.0.att.time_state has shape [2, 32, 32] but this base needs [4, 16, 16]; the "
        "state was trained on a base of another shape");
  }
  // merge_into adds the states to the model's weights, as RWKV-PEFT's merge_state.py.
  TensorMap weights = model.weights();
  state->merge_into(weights);
  EXPECT_EQ(weights.count("blocks.1.att.time_state"), 1u);
}

TEST(StateTuningTest, TrainingTheStateLowersTheLoss) {
  testing::TempDir dir;
  auto run = testing::train_small_model(dir.path(), "[peft]\nmethod = \"state\"\n", 1e-1);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  EXPECT_NE(run.command.output.find("trainable parameters: 2048 in 2 tensors"), std::string::npos)
      << run.command.output;  // L H N^2
  ASSERT_EQ(run.losses.size(), 10u);
  EXPECT_LT(run.losses.back(), run.losses.front());
  TensorMap saved = read_pth(dir / "out" / "rwkv-0.pth");
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved.at("blocks.0.att.time_state").scalar_type(), at::kBFloat16);
}

}  // namespace
}  // namespace peftkit

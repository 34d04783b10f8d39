#include <fstream>
#include <nlohmann/json.hpp>

#include "peft_fixtures.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

using testing::make_method;
using testing::relative_error;

struct ModeCase {
  std::string mode;
  int64_t r;
  int64_t mini_r;
};
// balance with r = 24, which divides neither 64 nor 256 (a padded tail block); mini; bat.
const ModeCase kModes[] = {{"balance", 24, 1}, {"mini", 8, 16}, {"bat", 16, 1}};

std::shared_ptr<PeftMethod> miss(const ModeCase& c) {
  return make_method("miss", {{"r", c.r}, {"mode", c.mode}, {"mini_r", c.mini_r}});
}

TensorMap weights_as(at::ScalarType dtype) {
  TensorMap w = testing::small_model_weights();
  for (auto& [name, t] : w) t = t.to(dtype);
  return w;
}

// ΔW of one site written element by element from spec formats §1.7, in fp64.
at::Tensor oracle_delta(const ModeCase& c, const at::Tensor& w, const at::Tensor& d) {
  const int64_t out = w.size(0), in = w.size(1), r = c.r;
  at::Tensor delta = at::zeros({out, in}, at::kDouble);
  auto dw = delta.accessor<double, 2>();
  if (c.mode == "bat") {
    for (int64_t a = 0; a < out / r; ++a)
      for (int64_t b = 0; b < in / r; ++b)
        delta.narrow(0, a * r, r)
            .narrow(1, b * r, r)
            .copy_(at::matmul(w.narrow(0, a * r, r).narrow(1, b * r, r), d[a]) + d[a]);
    return delta;
  }
  auto dd = d.accessor<double, 2>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t col = 0; col < in; ++col)
      dw[o][col] = c.mode == "mini" ? dd[col % r][o % c.mini_r] : dd[col % r][o];
  return delta;
}

TEST(MissTest, StartsAsTheBaseWithTheClosedFormParameterCount) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  model::RwkvModel base(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
  for (const auto& c : kModes) {
    model::RwkvModel adapted(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = miss(c);
    method->attach(adapted);
    int64_t expected = 0;
    for (const auto& site : adapted.linear_sites())
      expected +=
          c.mode == "mini" ? c.r * c.mini_r : c.r * site.out_features;  // r out (bat: out/r r r)
    EXPECT_EQ(testing::trainable_count(*method), expected) << c.mode;
    EXPECT_TRUE(at::equal(adapted.forward(tokens), base.forward(tokens))) << c.mode;
  }
}

TEST(MissTest, ForwardMergeAndUnmergeFollowTheSpecFormulas) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  const TensorMap original = weights_as(at::kDouble);
  for (const auto& c : kModes) {
    model::RwkvModel adapted(original, {at::kDouble, at::kCPU}, "test");
    auto method = miss(c);
    method->attach(adapted);
    testing::randomise(*method, 4, 0.05);
    const TensorMap state = method->state_dict();
    TensorMap by_oracle = original;
    for (const auto& site : adapted.linear_sites()) {
      const at::Tensor w = original.at(site.name + ".weight");
      by_oracle[site.name + ".weight"] =
          w + oracle_delta(c, w, state.at(site.name + ".miss_block").to(at::kDouble));
    }
    // The adapter's forward is the forward of W + ΔW (fp64, so any difference is a formula error).
    model::RwkvModel oracle_model(by_oracle, {at::kDouble, at::kCPU}, "test");
    EXPECT_LE(relative_error(adapted.forward(tokens), oracle_model.forward(tokens)), 1e-10)
        << c.mode;
    TensorMap merged = original;
    method->merge_into(merged);
    for (const auto& site : adapted.linear_sites())
      EXPECT_LE(
          relative_error(merged.at(site.name + ".weight"), by_oracle.at(site.name + ".weight")),
          1e-12)
          << c.mode << " " << site.name;
    method->unmerge_from(merged);
    for (const auto& site : adapted.linear_sites())
      EXPECT_LE(
          relative_error(merged.at(site.name + ".weight"), original.at(site.name + ".weight")),
          1e-12)
          << "unmerge " << c.mode << " " << site.name;
  }
}

TEST(MissTest, MergedFp32WeightsGiveTheAdapterForwardAndSaveLoadIsExact) {
  at::NoGradGuard no_grad;
  const at::Tensor tokens = at::randint(300, {2, 13});
  for (const auto& c : kModes) {
    model::RwkvModel adapted(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = miss(c);
    method->attach(adapted);
    testing::randomise(*method, 8, 0.05);
    const at::Tensor with_adapter = adapted.forward(tokens);
    TensorMap merged = testing::small_model_weights();
    method->merge_into(merged);
    model::RwkvModel merged_model(merged, {at::kFloat, at::kCPU}, "test");
    EXPECT_LE(relative_error(merged_model.forward(tokens), with_adapter), 1e-5) << c.mode;
    model::RwkvModel again(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
    auto loaded = miss(c);
    loaded->attach(again);
    loaded->load_state_dict(method->state_dict(), {});
    EXPECT_TRUE(at::equal(again.forward(tokens), with_adapter)) << c.mode;
  }
  // Another mode or r than the adapter was trained with is refused.
  model::RwkvModel model(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto balance = miss(kModes[0]);
  balance->attach(model);
  model::RwkvModel other(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto bat = make_method(
      "miss", {{"r", int64_t{24}}, {"mode", std::string("mini")}, {"mini_r", int64_t{16}}});
  bat->attach(other);
  EXPECT_TRUE(testing::throws_with([&] { bat->load_state_dict(balance->state_dict(), {}); },
                                   "trained with miss.mode = 0 but [peft.miss] mode"));
}

TEST(MissTest, BatNeedsDivisibleDimensionsAndRefusesDropout) {
  model::RwkvModel model(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
  auto bat = make_method("miss", {{"r", int64_t{24}}, {"mode", std::string("bat")}});
  try {
    bat->attach(model);
    FAIL() << "r = 24 does not divide 64";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0.att.receptance [64, 64]"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(testing::throws_with(
      [&] {
        make_method("miss", {{"mode", std::string("bat")}, {"dropout", 0.1}});
      },
      "has no adapter-only input to drop"));
}

TEST(MissTest, ExportsTheHfPeftFolderAndThePth) {
  testing::TempDir dir;
  for (const auto& c : kModes) {
    model::RwkvModel model(testing::small_model_weights(), {at::kFloat, at::kCPU}, "test");
    auto method = miss(c);
    method->attach(model);
    testing::randomise(*method, 9, 0.05);
    method->export_to("hf-peft", dir / c.mode);
    method->export_to("rwkv-pth", dir / (c.mode + ".pth"));
  }
  auto check = testing::run_command(
      std::string(PEFTKIT_PYTHON) +
      " -c \"import json, torch; from safetensors.torch import load_file\n"
      "shapes = {'balance': (24, " +
      std::to_string(testing::small_config().ffn) + "), 'mini': (8, 16), 'bat': (" +
      std::to_string(testing::small_config().ffn / 16) +
      ", 16, 16)}\n"
      "init = {'balance': True, 'mini': 'mini', 'bat': 'bat'}\n"
      "for mode, shape in shapes.items():\n"
      "  t = load_file('" +
      dir.path().string() +
      "/' + mode + '/adapter_model.safetensors')\n"
      "  c = json.load(open('" +
      dir.path().string() +
      "/' + mode + '/adapter_config.json'))\n"
      "  d = t['base_model.model.blocks.1.ffn.key.miss_block']\n"
      "  assert len(t) == " +
      std::to_string(testing::small_linear_sites()) +
      " and d.shape == shape and d.dtype == torch.float32, (mode, d.shape, "
      "len(t))\n"
      "  assert c['peft_type'] == 'MISS' and c['init_weights'] == init[mode] and c['r'] == "
      "shape[-2 if mode == 'bat' else 0], c\n"
      "  p = torch.load('" +
      dir.path().string() +
      "/' + mode + '.pth', weights_only=True)\n"
      "  assert torch.equal(p['blocks.1.ffn.key.miss_block'], d) and int(p['miss.r']) == c['r']\n"
      "print('ok')\"");
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

TEST(MissTest, TrainingThroughARecipeLowersTheLossInEveryMode) {
  for (const auto& c : kModes) {
    testing::TempDir dir;
    auto run = testing::train_small_model(dir.path(),
                                          "[peft]\nmethod = \"miss\"\n[peft.miss]\nmode = \"" +
                                              c.mode + "\"\nr = " + std::to_string(c.r) +
                                              "\nmini_r = " + std::to_string(c.mini_r) + "\n",
                                          1e-2);
    ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
    ASSERT_EQ(run.losses.size(), 10u);
    EXPECT_LT(run.losses.back(), run.losses.front()) << c.mode;
  }
}

}  // namespace
}  // namespace peftkit

// peftkit merge / export / generate with saved adapters, end to end through the program; merged
// weights are checked by PyTorch from the files themselves.
#include "peft_fixtures.hpp"

namespace peftkit {
namespace {

using testing::peftkit_command;
using testing::run_command;

std::string peftkit(const std::string& args) { return peftkit_command(args + " --plugin-dir " PLUGIN_DIR); }

std::string python(const std::string& code) { return std::string(PEFTKIT_PYTHON) + " -c \"" + code + "\""; }

// Greedy text from the small model (its vocabulary is 300 ids: the prompt is one byte token).
std::string generate(const std::string& args) {
  auto result = run_command(peftkit("generate " + args + " --prompt a --max-tokens 12 --temperature 0 --log-level warn"));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  return result.output;
}

TEST(AdapterCommandsTest, ATrainedLoraMergesExportsAndGeneratesFromTheSavedFile) {
  testing::TempDir dir;
  auto run = testing::train_small_model(
      dir.path(), "[peft]\nmethod = \"lora\"\ntrain_parts = [\"ln_out\"]\n[peft.lora]\nr = 4\nalpha = 8\n", 5e-2);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  const std::string base = (dir / "model.pth").string(), adapter = (dir / "out" / "rwkv-0.pth").string();
  const std::string merged = (dir / "merged.pth").string();

  auto merge = run_command(peftkit("merge --base " + base + " --adapter " + adapter + " --output " + merged));
  ASSERT_EQ(merge.exit_code, 0) << merge.output;
  auto check = run_command(python(
      "import torch; b = torch.load('" + base + "', weights_only=True); a = torch.load('" + adapter +
      "', weights_only=True); m = torch.load('" + merged + "', weights_only=True)\n"
      "s = float(a['lora.alpha']) / int(a['lora.r']); assert s == 2.0\n"
      "for k in b:\n"
      "  site = k[:-len('.weight')]\n"
      "  want = b[k] + s * a[site + '.lora_B'] @ a[site + '.lora_A'] if site + '.lora_A' in a else a.get(k, b[k])\n"
      "  assert torch.allclose(m[k], want, rtol=1e-5, atol=1e-6), k\n"
      "assert not torch.equal(m['ln_out.weight'], b['ln_out.weight']) and set(m) == set(b)\n"
      "print('ok')"));
  EXPECT_EQ(check.exit_code, 0) << check.output;

  auto exported = run_command(peftkit("export --base " + base + " --adapter " + adapter + " --format hf-peft --output " +
                                       (dir / "hf").string()));
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  // The merged model, the adapter file and the HF folder (+ the trained ln_out) generate alike.
  const std::string from_merged = generate("--model " + merged);
  EXPECT_EQ(generate("--model " + base + " --adapter " + adapter), from_merged);
  TensorMap with_ln = read_pth(base);
  with_ln["ln_out.weight"] = read_pth(adapter).at("ln_out.weight");
  write_pth(dir / "base-with-ln.pth", with_ln);
  EXPECT_EQ(generate("--model " + (dir / "base-with-ln.pth").string() + " --lora " + (dir / "hf").string()), from_merged);

  // Unmerge refuses what it cannot take out (the trained ln_out) ...
  auto refused = run_command(peftkit("merge --unmerge --base " + merged + " --adapter " + adapter + " --output " +
                                     (dir / "x.pth").string()));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("ln_out"), std::string::npos) << refused.output;
  // ... and recovers the base from a LoRA-only merge.
  auto hf_merge = run_command(peftkit("merge --base " + base + " --lora " + (dir / "hf").string() + " --output " +
                                      (dir / "hf-merged.pth").string()));
  ASSERT_EQ(hf_merge.exit_code, 0) << hf_merge.output;
  auto unmerge = run_command(peftkit("merge --unmerge --base " + (dir / "hf-merged.pth").string() + " --lora " +
                                     (dir / "hf").string() + " --output " + (dir / "unmerged.pth").string()));
  ASSERT_EQ(unmerge.exit_code, 0) << unmerge.output;
  const TensorMap original = read_pth(base), recovered = read_pth(dir / "unmerged.pth");
  for (const auto& [name, t] : original) EXPECT_TRUE(at::allclose(recovered.at(name), t, 1e-5, 1e-6)) << name;
}

TEST(AdapterCommandsTest, AStateMergesIntoTheModelFileAndRefusesAnotherBase) {
  testing::TempDir dir;
  const Rwkv7Config& c = testing::small_config();
  // Output projections of ordinary size: the perturbed init's are tiny and would hide the state.
  TensorMap weights = testing::small_model_weights();
  for (int64_t l = 0; l < c.n_layer; ++l)
    weights["blocks." + std::to_string(l) + ".att.output.weight"] = at::randn({c.n_embd, c.n_embd}) * 0.3;
  write_pth(dir / "model.pth", weights);
  TensorMap state;
  for (int64_t l = 0; l < c.n_layer; ++l)
    state["blocks." + std::to_string(l) + ".att.time_state"] =
        (at::randn({c.n_head, c.head_size, c.head_size}) * 3).to(at::kBFloat16);
  write_pth(dir / "state.pth", state);
  const std::string base = (dir / "model.pth").string(), merged = (dir / "merged.pth").string();
  auto merge = run_command(peftkit("merge --base " + base + " --state " + (dir / "state.pth").string() + " --output " + merged));
  ASSERT_EQ(merge.exit_code, 0) << merge.output;
  const TensorMap file = read_pth(merged);
  EXPECT_EQ(file.size(), read_pth(base).size() + 2);
  EXPECT_TRUE(at::equal(file.at("blocks.1.att.time_state"), state.at("blocks.1.att.time_state")));
  // A model file with merged states starts from them, like the base with the state mounted.
  EXPECT_EQ(generate("--model " + merged), generate("--model " + base + " --state " + (dir / "state.pth").string()));
  EXPECT_NE(generate("--model " + merged), generate("--model " + base));

  state["blocks.0.att.time_state"] = at::zeros({2, 32, 32});
  write_pth(dir / "other.pth", state);
  auto refused = run_command(peftkit("merge --base " + base + " --state " + (dir / "other.pth").string() +
                                     " --output " + (dir / "y.pth").string()));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("[2, 32, 32]"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("[4, 16, 16]"), std::string::npos) << refused.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "y.pth"));
}

TEST(AdapterCommandsTest, StateAndLoraTrainedTogetherMergeAndMountTogether) {
  testing::TempDir dir;
  auto run = testing::train_small_model(
      dir.path(), "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n", 5e-2);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  // L H N^2 + r (in + out) over the 12 sites.
  EXPECT_NE(run.command.output.find("trainable parameters: " + std::to_string(2048 + 9216) + " in 26 tensors"),
            std::string::npos) << run.command.output;
  ASSERT_EQ(run.losses.size(), 10u);
  EXPECT_LT(run.losses.back(), run.losses.front());
  const std::string base = (dir / "model.pth").string(), adapter = (dir / "out" / "rwkv-0.pth").string();
  auto merge = run_command(peftkit("merge --base " + base + " --adapter " + adapter + " --output " +
                                   (dir / "merged.pth").string()));
  ASSERT_EQ(merge.exit_code, 0) << merge.output;
  const TensorMap merged = read_pth(dir / "merged.pth");
  EXPECT_EQ(merged.count("blocks.1.att.time_state"), 1u);
  EXPECT_FALSE(at::equal(merged.at("blocks.1.att.key.weight"), read_pth(base).at("blocks.1.att.key.weight")));
  EXPECT_EQ(generate("--model " + (dir / "merged.pth").string()), generate("--model " + base + " --adapter " + adapter));
  // Both methods have an rwkv-pth export: --method picks one.
  auto ambiguous = run_command(peftkit("export --base " + base + " --adapter " + adapter + " --format rwkv-pth --output " +
                                       (dir / "x.pth").string()));
  EXPECT_NE(ambiguous.output.find("pick one with --method"), std::string::npos) << ambiguous.output;
  auto ai00 = run_command(peftkit("export --base " + base + " --adapter " + adapter + " --format ai00 --output " +
                                  (dir / "state.safetensors").string()));
  ASSERT_EQ(ai00.exit_code, 0) << ai00.output;
  const TensorMap exported = read_safetensors(dir / "state.safetensors").tensors;
  EXPECT_EQ(exported.at("blocks.0.att.time_state").scalar_type(), at::kHalf);
  EXPECT_TRUE(at::allclose(exported.at("blocks.0.att.time_state").to(at::kFloat).transpose(1, 2),
                           merged.at("blocks.0.att.time_state").to(at::kFloat), 1e-2, 1e-2));
}

TEST(AdapterCommandsTest, InspectNamesEachAdapterKind) {
  testing::TempDir dir;
  write_pth(dir / "miss.pth", {{"blocks.0.att.key.miss_block", at::zeros({8, 64})},
                               {"miss.r", at::scalar_tensor(8, at::kLong)},
                               {"miss.mode", at::scalar_tensor(2, at::kLong)}});
  write_pth(dir / "pissa.pth", {{"blocks.0.att.key.lora_A", at::zeros({4, 64})}, {"blocks.0.att.key.lora_B", at::zeros({64, 4})},
                                {"blocks.0.att.key.init_lora_A", at::zeros({4, 64})},
                                {"blocks.0.att.key.init_lora_B", at::zeros({64, 4})},
                                {"pissa.alpha", at::scalar_tensor(8.0, at::kDouble)}});
  auto miss = run_command(peftkit("inspect " + (dir / "miss.pth").string()));
  EXPECT_NE(miss.output.find("kind:          MiSS adapter\nsites:         1\nmode:          bat"), std::string::npos)
      << miss.output;
  auto pissa = run_command(peftkit("inspect " + (dir / "pissa.pth").string()));
  EXPECT_NE(pissa.output.find("PiSSA adapter (with its init pair)\nsites:         1\nrank:          4\nalpha:         8"),
            std::string::npos) << pissa.output;
}

TEST(AdapterCommandsTest, AdaptersThatDoNotDescribeThemselvesAskForTheirRecipe) {
  testing::TempDir dir;
  write_pth(dir / "model.pth", testing::small_model_weights());
  write_pth(dir / "mystery.pth", {{"blocks.0.att.key.miss_block", at::zeros({4, 64})}});
  const std::string base = (dir / "model.pth").string();
  auto unknown = run_command(peftkit("merge --base " + base + " --adapter " + (dir / "mystery.pth").string() +
                                     " --output " + (dir / "m.pth").string()));
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.output.find("pass --recipe"), std::string::npos) << unknown.output;
  auto same = run_command(peftkit("merge --base " + base + " --adapter " + (dir / "mystery.pth").string() +
                                  " --output " + base));
  EXPECT_NE(same.output.find("is the --base itself"), std::string::npos) << same.output;
  std::filesystem::create_directories(dir / "hf");
  testing::write_file(dir / "hf" / "adapter_config.json", "{\"peft_type\": \"ADALORA\", \"r\": 8}");
  write_safetensors(dir / "hf" / "adapter_model.safetensors", {}, {});
  auto adalora = run_command(peftkit("generate --model " + base + " --lora " + (dir / "hf").string() + " --prompt a"));
  EXPECT_NE(adalora.exit_code, 0);
  EXPECT_NE(adalora.output.find("adapter_config.json: peft_type \"ADALORA\""), std::string::npos) << adalora.output;
}

}  // namespace
}  // namespace peftkit

#include "host/recipe.hpp"

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "host/device.hpp"
#include "peftkit/error.hpp"
#include "test_util.hpp"

namespace peftkit::host {
namespace {

// A recipe that validates; the tests break one thing at a time.
constexpr std::string_view kValidRecipe = R"([model]
path = "model.pth"

[data]
format = "token-lines"
path = "ids.txt"

[peft]
method = "fixture"

[peft.fixture]
r = 16

[train]
ctx_len = 512
lr_init = 1e-4
grad_cp = 1
)";

class RecipeTest : public ::testing::Test {
 protected:
  const PluginRegistry& registry() {
    static const PluginRegistry registry =
        PluginRegistry::discover({FIXTURE_VALID_DIR, FIXTURE_EXAMPLE_DIR});
    return registry;
  }

  Recipe parse(std::string_view text, const std::vector<std::string>& sets = {}) {
    std::vector<Override> overrides;
    for (const auto& s : sets) overrides.push_back(parse_override(s));
    return parse_recipe(text, "recipes/test.toml", overrides, registry());
  }

  // The error message of parsing `text`, or "(valid)".
  std::string error(std::string_view text, const std::vector<std::string>& sets = {}) {
    try {
      parse(text, sets);
    } catch (const Error& e) {
      return e.what();
    }
    return "(valid)";
  }

  // kValidRecipe with `from` replaced by `to` (which must occur).
  static std::string with(std::string_view from, std::string_view to) {
    std::string text(kValidRecipe);
    size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return text.replace(at, from.size(), to);
  }
};

TEST_F(RecipeTest, ValidRecipeResolvesWithDefaultsAndSources) {
  Recipe recipe = parse(kValidRecipe);
  EXPECT_EQ(recipe.train.get_int("ctx_len"), 512);
  EXPECT_EQ(recipe.train.source("ctx_len"), OptionSource::kRecipe);
  EXPECT_EQ(recipe.train.location("ctx_len"), "recipes/test.toml:15:11");
  EXPECT_EQ(recipe.train.get_int("micro_bsz"), 12);  // RWKV-PEFT's default
  EXPECT_EQ(recipe.train.source("micro_bsz"), OptionSource::kDefault);
  EXPECT_TRUE(recipe.train.get_bool("grad_cp"));  // RWKV-PEFT style 0/1 switch
  EXPECT_EQ(recipe.train.get_string("lr_schedule"), "cos");
  ASSERT_EQ(recipe.peft_methods.size(), 1u);
  EXPECT_EQ(recipe.peft_methods[0].options.get_int("r"), 16);
  EXPECT_EQ(recipe.peft_methods[0].options.get_float("alpha"), 16.0);
  ASSERT_TRUE(recipe.dataset.has_value());
  EXPECT_TRUE(recipe.dataset->options.get_bool("skip_empty_lines"));
  EXPECT_FALSE(recipe.quantizer.has_value());
  EXPECT_EQ(recipe.resolve_path(recipe.model.get_string("path")), "recipes/model.pth");
}

TEST_F(RecipeTest, IntegerIsAcceptedWhereANumberIsExpected) {
  EXPECT_EQ(parse(with("lr_init = 1e-4", "lr_init = 1")).train.get_float("lr_init"), 1.0);
}

TEST_F(RecipeTest, UnknownKeyNamesFileLineAndClosestKey) {
  EXPECT_EQ(
      error(with("lr_init = 1e-4", "lr_int = 1e-4")).substr(0, 90),
      "recipes/test.toml:16:1: unknown key 'lr_int' in [train]; did you mean 'lr_init'? (valid ke");
}

TEST_F(RecipeTest, UnknownKeyWithoutCloseMatchListsValidKeys) {
  std::string message = error(with("[model]\n", "[model]\nflavour = 1\n"));
  EXPECT_EQ(message, "recipes/test.toml:2:1: unknown key 'flavour' in [model] (valid keys: path)");
}

TEST_F(RecipeTest, UnknownSectionSuggestsTheClosestOne) {
  std::string message = error(std::string(kValidRecipe) + "[trian]\nseed = 1\n");
  EXPECT_EQ(message,
            "recipes/test.toml:18:2: unknown recipe section [trian]; did you mean [train]? "
            "(sections: model, data, peft, quant, train, output, run)");
}

TEST_F(RecipeTest, WrongTypeNamesKeyExpectedAndFound) {
  EXPECT_EQ(error(with("ctx_len = 512", "ctx_len = \"512\"")),
            "recipes/test.toml:15:11: [train] ctx_len: expected an integer in [1, 1048576], found "
            "string \"512\"");
  EXPECT_EQ(error(with("grad_cp = 1", "grad_cp = 2")),
            "recipes/test.toml:17:11: [train] grad_cp: expected true or false, found integer 2");
}

TEST_F(RecipeTest, OutOfRangeNamesTheRange) {
  EXPECT_EQ(error(with("ctx_len = 512", "ctx_len = 0")),
            "recipes/test.toml:15:11: [train] ctx_len: expected an integer in [1, 1048576], found "
            "integer 0");
  EXPECT_EQ(
      error(with("lr_init = 1e-4", "beta1 = 1.0")),
      "recipes/test.toml:16:9: [train] beta1: expected a number in [0.0, 1.0), found number 1.0");
}

TEST_F(RecipeTest, ValueOutsideChoicesListsThem) {
  EXPECT_EQ(error(with("lr_init = 1e-4", "lr_schedule = \"linear\"")),
            "recipes/test.toml:16:15: [train] lr_schedule: expected one of \"cos\", \"wsd\", found "
            "string \"linear\"");
}

TEST_F(RecipeTest, MissingRequiredKeyIsNamed) {
  EXPECT_EQ(error(with("path = \"model.pth\"", "")),
            "recipes/test.toml:1:1: [model] is missing the required key 'path': the base model: "
            "an RWKV .pth or .safetensors file (RWKV-PEFT --load_model)");
  std::string without_model(kValidRecipe.substr(kValidRecipe.find("[data]")));
  EXPECT_EQ(error(without_model).substr(0, 61),
            "recipes/test.toml: [model] is missing the required key 'path'");
}

TEST_F(RecipeTest, UnknownPluginListsTheAvailableOnesOfThatKind) {
  EXPECT_EQ(
      error(with("method = \"fixture\"", "method = \"lorra\"")),
      "recipes/test.toml:9:10: [peft] method: no peft plugin named 'lorra'; available: fixture");
  EXPECT_EQ(error(with("format = \"token-lines\"", "format = \"parquet\"")),
            "recipes/test.toml:5:10: [data] format: no dataset plugin named 'parquet'; available: "
            "token-lines");
  EXPECT_EQ(
      error(std::string(kValidRecipe) + "[quant]\nmethod = \"nf4\"\n"),
      "recipes/test.toml:19:10: [quant] method: no quantizer plugin named 'nf4'; available: none");
}

TEST_F(RecipeTest, PluginTablesAreValidatedByThePluginSchema) {
  EXPECT_EQ(error(with("r = 16", "rr = 16")).substr(0, 80),
            "recipes/test.toml:12:1: unknown key 'rr' in [peft.fixture]; did you mean 'r'? (v");
  EXPECT_EQ(error(with("r = 16", "r = 0")),
            "recipes/test.toml:12:5: [peft.fixture] r: expected an integer in [1, 4096], found "
            "integer 0");
  EXPECT_EQ(
      error(with("r = 16", "init = \"kaiming\"")),
      "recipes/test.toml:12:8: [peft.fixture] init: expected one of \"zero\", \"random\", found "
      "string \"kaiming\"");
}

TEST_F(RecipeTest, PluginCrossKeyChecksRun) {
  EXPECT_EQ(error(with("r = 16", "r = 16\nblock = 5")),
            "recipes/test.toml:13:9: [peft.fixture] block: must divide r = 16, found 5");
}

TEST_F(RecipeTest, TableOfAPluginThatIsNotSelectedIsRefused) {
  EXPECT_EQ(error(with("method = \"fixture\"", "method = \"none\"")),
            "recipes/test.toml:11:1: table [peft.fixture] is given but [peft] method = [\"none\"] "
            "does not select 'fixture'");
}

TEST_F(RecipeTest, NoneCannotBeCombinedAndMethodsAreDistinct) {
  EXPECT_EQ(
      error(with("method = \"fixture\"", "method = [\"none\", \"fixture\"]")),
      "recipes/test.toml:9:10: [peft] method: \"none\" cannot be combined with other methods");
  EXPECT_EQ(error(with("method = \"fixture\"", "method = [\"fixture\", \"fixture\"]")),
            "recipes/test.toml:9:10: [peft] method: 'fixture' is listed twice");
}

TEST_F(RecipeTest, TomlSyntaxErrorHasLineAndColumn) {
  EXPECT_EQ(error(with("ctx_len = 512", "ctx_len = = 512")).substr(0, 69),
            "recipes/test.toml:15:11: TOML syntax error: Error while parsing value");
}

TEST_F(RecipeTest, SectionMustBeATable) {
  EXPECT_EQ(error(std::string("run = 5\n") + std::string(kValidRecipe)),
            "recipes/test.toml:1:1: 'run' must be a table [run], found integer 5");
}

TEST_F(RecipeTest, SectionsWithoutPluginsHaveNoSubtables) {
  EXPECT_EQ(error(std::string(kValidRecipe) + "[train.extra]\nx = 1\n"),
            "recipes/test.toml:18:8: [train.extra]: [train] has no sub-tables");
}

TEST_F(RecipeTest, DeviceMustBeAKnownForm) {
  EXPECT_EQ(error(std::string(kValidRecipe) + "[run]\ndevice = \"gpu\"\n"),
            "recipes/test.toml:19:10: [run] device: expected \"auto\", \"cpu\", \"cuda\" or "
            "\"cuda:N\", found \"gpu\"");
  EXPECT_EQ(
      parse(std::string(kValidRecipe) + "[run]\ndevice = \"cuda:1\"\n").run.get_string("device"),
      "cuda:1");
}

TEST_F(RecipeTest, OverridesReplaceValuesAndAreReportedAsTheirOrigin) {
  Recipe recipe = parse(kValidRecipe, {"train.lr_init=1e-3", "peft.fixture.r=32",
                                       "data.path=/tmp/other ids.txt", "run.threads=2"});
  EXPECT_EQ(recipe.train.get_float("lr_init"), 1e-3);
  EXPECT_EQ(recipe.train.source("lr_init"), OptionSource::kOverride);
  EXPECT_EQ(recipe.train.location("lr_init"), "--set train.lr_init=1e-3");
  EXPECT_EQ(recipe.peft_methods[0].options.get_int("r"), 32);
  EXPECT_EQ(recipe.data.get_string("path"), "/tmp/other ids.txt");  // unquoted strings work
  EXPECT_EQ(recipe.run.get_int("threads"), 2);
}

TEST_F(RecipeTest, BadOverridesAreErrorsNamingTheArgument) {
  EXPECT_EQ(error(kValidRecipe, {"train.ctx_len=abc"}),
            "--set train.ctx_len=abc: [train] ctx_len: expected an integer in [1, 1048576], found "
            "string \"abc\"");
  EXPECT_EQ(error(kValidRecipe, {"train.lr_int=1"}).substr(0, 78),
            "--set train.lr_int=1: unknown key 'lr_int' in [train]; did you mean 'lr_init'?");
  EXPECT_TRUE(testing::throws_with(
      [&] { parse_override("lr_init=1"); },
      "expected SECTION.KEY=VALUE (a key inside a section such as [train]), found no section"));
  EXPECT_TRUE(testing::throws_with([&] { parse_override("train.lr_init"); },
                                   "--set train.lr_init: expected SECTION.KEY=VALUE"));
  EXPECT_TRUE(testing::throws_with([&] { parse_override("train..x=1"); },
                                   "empty key component in 'train..x'"));
}

TEST_F(RecipeTest, ShowPrintsEveryKeyWithItsOriginAndReadsBack) {
  Recipe recipe = parse(kValidRecipe, {"train.seed=7"});
  const std::string text = format_recipe(recipe);
  EXPECT_NE(text.find("ctx_len = 512"), std::string::npos) << text;
  EXPECT_NE(text.find("micro_bsz = 12"), std::string::npos) << text;
  EXPECT_NE(text.find("# --set train.seed=7"), std::string::npos) << text;
  EXPECT_NE(text.find("[peft.fixture]"), std::string::npos) << text;
  EXPECT_NE(text.find("alpha = 16.0"), std::string::npos) << text;
  // The resolved recipe is itself a valid recipe with the same values.
  Recipe again = parse(text);
  for (const auto& section : recipe_sections())
    for (const auto& name : recipe.section(section.name).names())
      EXPECT_EQ(recipe.section(section.name).get(name), again.section(section.name).get(name))
          << name;
}

TEST(ClosestMatch, SuggestsOnlyLikelyTypos) {
  EXPECT_EQ(closest_match("micro_bs", {"ctx_len", "micro_bsz"}), "micro_bsz");
  EXPECT_EQ(closest_match("zzzz", {"ctx_len", "micro_bsz"}), "");
}

// [run] device as training resolves it: always an explicit index (per-device CUDA calls refuse
// index -1), or an error saying why not.
// GPU only (each test is a process of its own): a training run's device setup asks for no thread
// stack (the driver grows it for a kernel that needs one; the default is 1 KiB), sets the 4 MiB
// GEMM workspaces, and leaves a workspace size the user set alone.
TEST(ResolveDevice, TrimmingGpuOverheadsSetsTheStackAndWorkspacesAndKeepsTheUsersOwn) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  unsetenv("CUBLAS_WORKSPACE_CONFIG");
  setenv("CUBLASLT_WORKSPACE_SIZE", "32768", 1);
  trim_gpu_memory_overheads(c10::Device(c10::kCUDA, 0));
  EXPECT_STREQ(std::getenv("CUBLAS_WORKSPACE_CONFIG"), ":4096:1");
  EXPECT_STREQ(std::getenv("CUBLASLT_WORKSPACE_SIZE"), "32768");
  size_t stack = 0;
  ASSERT_EQ(cudaDeviceGetLimit(&stack, cudaLimitStackSize), cudaSuccess);
  std::printf("thread stack after the trim: %zu bytes\n", stack);
  EXPECT_LE(stack, 64u);
  // ATen's kernels still run and give the right answer (here a strided copy).
  const at::Tensor x = at::arange(24, at::TensorOptions(at::kCUDA).dtype(at::kFloat));
  EXPECT_TRUE(
      at::equal(x.view({2, 3, 4}).permute({2, 0, 1}).contiguous().cpu(),
                at::arange(24, at::kFloat).view({2, 3, 4}).permute({2, 0, 1}).contiguous()));
}

TEST(ResolveDevice, GivesAnIndexedDeviceOrSaysWhyNot) {
  auto error_of = [](const std::string& name) {
    try {
      resolve_device(name);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(resolve_device("cpu"), c10::Device(c10::kCPU));
  if (!at::hasCUDA()) {
    EXPECT_EQ(resolve_device("auto"), c10::Device(c10::kCPU));
    EXPECT_EQ(error_of("cuda"), "cuda: no CUDA device is available on this machine");
    return;
  }
  EXPECT_EQ(resolve_device("auto"), c10::Device(c10::kCUDA, 0));
  EXPECT_EQ(resolve_device("cuda"), c10::Device(c10::kCUDA, 0));
  const std::string beyond = "cuda:" + std::to_string(at::getNumGPUs());
  EXPECT_NE(error_of(beyond).find(beyond + ": this machine has"), std::string::npos)
      << error_of(beyond);
}

}  // namespace
}  // namespace peftkit::host

namespace peftkit::host {
namespace {

// Issue 14 item 6: a 100,000-part dotted key or table header (200 KB) overflowed the stack inside
// the TOML parser; such recipes are refused by a linear scan before parsing.
TEST_F(RecipeTest, OverDeepKeysAndNestingAreRefusedBeforeParsing) {
  std::string header = "[a";
  for (int i = 0; i < 100000; ++i) header += ".b";
  EXPECT_EQ(error(header + "]\n"),
            "recipes/test.toml:1: a key or table name has more than 32 dotted parts; peftkit "
            "refuses such recipes before parsing");
  std::string dotted = std::string(kValidRecipe) + "\n[train]\nx";
  for (int i = 0; i < 100000; ++i) dotted += ".y";
  EXPECT_NE(error(dotted + " = 1\n").find("a key or table name has more than 32 dotted parts"),
            std::string::npos);
  EXPECT_EQ(error("x = " + std::string(100000, '[') + std::string(100000, ']') + "\n"),
            "recipes/test.toml:1: arrays or tables nest deeper than 32 levels; peftkit refuses "
            "such recipes before "
            "parsing");
  EXPECT_EQ(error("x = " + std::string(100000, '{') + "\n"),
            "recipes/test.toml:1: arrays or tables nest deeper than 32 levels; peftkit refuses "
            "such recipes before "
            "parsing");
  // Dots and brackets inside strings and comments, and floats, count for nothing.
  EXPECT_EQ(error(std::string(kValidRecipe) + "# " + std::string(100, '.') + std::string(100, '[') +
                  "\n"),
            "(valid)");
  EXPECT_EQ(error(kValidRecipe, {"model.path=" + std::string(100, '.')}), "(valid)");
  EXPECT_EQ(error(kValidRecipe, {"model.path=\"a" + std::string(50, '[') + "\""}), "(valid)");
  EXPECT_EQ(error(kValidRecipe, {"model.path=" + std::string(100, '[')}),
            "--set model.path=" + std::string(100, '[') +
                ":1: arrays or tables nest deeper than 32 levels; peftkit refuses such recipes "
                "before parsing");
  std::string set_key = "a";
  for (int i = 0; i < 100; ++i) set_key += ".b";
  EXPECT_TRUE(testing::throws_with([&] { parse_override(set_key + "=1"); },
                                   "the key has more than 32 dotted parts"));
}

}  // namespace
}  // namespace peftkit::host

namespace peftkit::host {
namespace {

// Found by fuzz_recipe (UBSan): the bound INT64_MAX is stored as the double 2^63, which was cast
// back to int64 (undefined) whenever a message described it.
TEST_F(RecipeTest, AnIntegerBoundAtTheInt64LimitIsDescribedExactly) {
  EXPECT_NE(error(kValidRecipe, {"train.seed=-1"}).find("[0, 9223372036854775807]"),
            std::string::npos)
      << error(kValidRecipe, {"train.seed=-1"});
}

}  // namespace
}  // namespace peftkit::host

namespace peftkit::host {
namespace {

// A recipe made from a pasted RWKV-PEFT training script: one run reports every problem, in file
// order, each flag peftkit does not take with where it went.
TEST_F(RecipeTest, APastedRwkvPeftScriptGetsEveryProblemInOneRun) {
  std::string train_keys;
  for (const auto& name : section_schema("train").names())
    train_keys += (train_keys.empty() ? "" : ", ") + name;
  const std::string message = error(R"([model]
path = "model.pth"
load_model = "rwkv7-0.1b.pth"
[data]
format = "token-lines"
path = "ids.txt"
data_type = "binidx"
[peft]
method = "fixture"
[peft.fixture]
r = 16
[train]
n_layer = 12
n_embd = 768
ctx_len = 512
lr_int = 1e-4
strategy = "deepspeed_stage_1"
train_parts = ["ln"]
grad_cp = 2
my_testing = "x070"
)");
  const std::vector<std::string> expected = {
      "recipes/test.toml:3:1: unknown key 'load_model' in [model]: RWKV-PEFT's --load_model is not "
      "needed here; the "
      "base model is [model] path",
      "recipes/test.toml:7:1: unknown key 'data_type' in [data]: RWKV-PEFT's --data_type is not "
      "needed here; the data "
      "format is [data] format (a dataset plugin: jsonl, binidx, numpy, ...)",
      "recipes/test.toml:13:1: unknown key 'n_layer' in [train]: RWKV-PEFT's --n_layer is not "
      "needed here; the "
      "model's shape is read from the model file",
      "recipes/test.toml:14:1: unknown key 'n_embd' in [train]: RWKV-PEFT's --n_embd is not needed "
      "here; the model's "
      "shape is read from the model file",
      "recipes/test.toml:16:1: unknown key 'lr_int' in [train]; did you mean 'lr_init'? (valid "
      "keys: " +
          train_keys + ")",
      "recipes/test.toml:17:1: unknown key 'strategy' in [train]: RWKV-PEFT's --strategy is not "
      "needed here; data "
      "parallelism needs no strategy: [run] devices = N, or peftkit launch",
      "recipes/test.toml:18:1: unknown key 'train_parts' in [train]; it belongs in [peft]",
      "recipes/test.toml:19:11: [train] grad_cp: expected true or false, found integer 2",
      "recipes/test.toml:20:1: unknown key 'my_testing' in [train]: RWKV-PEFT's --my_testing is "
      "not needed here; the "
      "architecture (x060 or x070) is read from the model file",
      "(9 problems)"};
  std::string want;
  for (const auto& line : expected) want += (want.empty() ? "" : "\n") + line;
  EXPECT_EQ(message, want);
}

// precision = "auto" (the default): bf16 on a GPU, fp32 on the CPU.
TEST_F(RecipeTest, PrecisionAutoIsBf16OnAGpuAndFp32OnTheCpu) {
  EXPECT_EQ(parse(kValidRecipe).train.get_string("precision"), "auto");
  EXPECT_EQ(resolve_precision("auto", c10::Device("cpu")), "fp32");
  EXPECT_EQ(resolve_precision("auto", c10::Device("cuda:0")), "bf16");
  EXPECT_EQ(resolve_precision("tf32", c10::Device("cuda:0")), "tf32");
  EXPECT_EQ(resolve_precision("bf16", c10::Device("cpu")), "bf16");
}

}  // namespace
}  // namespace peftkit::host

#include <gtest/gtest.h>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/dataset.hpp"
#include "test_util.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit {
namespace {

class JsonlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new host::PluginRegistry(host::PluginRegistry::discover({PLUGIN_DIR}));
    tokenizer_ = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab()).release();
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete tokenizer_;
  }
  std::shared_ptr<Dataset> open(const std::string& text, int64_t ctx_len = 100, bool skip = false,
                                bool eod = true, const Tokenizer* tokenizer = tokenizer_) {
    auto plugin = registry_->get<DatasetPlugin>("jsonl");
    Options options = host::default_options(plugin->options(), "data.jsonl");
    options.set("skip_bad_lines", skip, OptionSource::kRecipe);
    options.set("append_eod", eod, OptionSource::kRecipe);
    auto file = testing::write_file(dir_ / "data.jsonl", text);
    return host::keep_loaded(plugin->open({file, ctx_len, 65536, 0, tokenizer}, options), plugin);
  }
  std::string error(const std::string& text, const Tokenizer* tokenizer = tokenizer_) {
    try {
      open(text, 100, false, true, tokenizer);
    } catch (const Error& e) {
      return std::string(e.what()).substr((dir_ / "data.jsonl").string().size());
    }
    return "(opened)";
  }
  static std::vector<int32_t> encode(const std::string& s) { return tokenizer_->encode(s); }
  testing::TempDir dir_;
  static inline host::PluginRegistry* registry_ = nullptr;
  static inline tokenizer::WorldTokenizer* tokenizer_ = nullptr;
};

TEST_F(JsonlTest, TextLinesAreTrainedOnEveryTokenAndEndWithTheEndToken) {
  auto dataset = open("{\"text\": \"Hello world!\\n\\n\"}\n\n{\"text\": \"你好，世界\"}\n");
  ASSERT_EQ(dataset->size(), 2);  // the blank line is not a document
  Sample s = dataset->sample(0);
  EXPECT_EQ(s.input_ids, (std::vector<int32_t>{33155, 40213, 34, 261}));
  EXPECT_EQ(s.targets, (std::vector<int32_t>{40213, 34, 261, 0}));
  EXPECT_EQ(open("{\"text\": \"Hello world!\\n\\n\"}\n", 100, false, false)->sample(0).targets,
            (std::vector<int32_t>{40213, 34, 261}));
}

TEST_F(JsonlTest, PromptResponseLinesTrainOnTheResponseOnly) {
  auto dataset =
      open("{\"prompt\": \"User: hi\\n\\nAssistant:\", \"response\": \" Hello!\\n\\n\"}\n");
  const auto prompt = encode("User: hi\n\nAssistant:"), response = encode(" Hello!\n\n");
  Sample s = dataset->sample(0);
  ASSERT_EQ(s.input_ids.size(), prompt.size() + response.size());
  for (size_t t = 0; t < s.targets.size(); ++t) {
    const bool predicts_response = t + 1 >= prompt.size();
    EXPECT_EQ(s.targets[t] == kIgnoreIndex, !predicts_response) << t;
  }
  EXPECT_EQ(s.targets.back(), 0);
  EXPECT_EQ(s.targets[prompt.size() - 1], response[0]);
}

TEST_F(JsonlTest, ChatMessagesUseTheWorldFormatWithLossOnAssistantReplies) {
  auto dataset = open(
      "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
      "\"content\": \"Why?\"}, {\"role\": \"assistant\", \"content\": \"Because.\"}]}\n");
  std::vector<int32_t> expected;
  for (const char* piece :
       {"System: Be brief.\n\n", "User: Why?\n\n", "Assistant:", " Because.\n\n"})
    for (int32_t id : encode(piece)) expected.push_back(id);
  expected.push_back(0);
  Sample s = dataset->sample(0);
  EXPECT_EQ(s.input_ids, std::vector<int32_t>(expected.begin(), expected.end() - 1));
  const size_t reply = encode("System: Be brief.\n\n").size() + encode("User: Why?\n\n").size() +
                       encode("Assistant:").size();
  int64_t counted = 0;
  for (size_t t = 0; t < s.targets.size(); ++t) {
    EXPECT_EQ(s.targets[t] != kIgnoreIndex, t + 1 >= reply) << t;
    counted += s.targets[t] != kIgnoreIndex;
  }
  EXPECT_EQ(counted, static_cast<int64_t>(encode(" Because.\n\n").size()) + 1);
}

TEST_F(JsonlTest, LongDocumentsAreTruncatedToTheContext) {
  Sample s =
      open("{\"text\": \"one two three four five six seven eight nine ten\"}\n", 4)->sample(0);
  EXPECT_EQ(s.input_ids.size(), 4u);
}

TEST_F(JsonlTest, MalformedLinesNameFileAndLineOrAreSkipped) {
  EXPECT_EQ(error("{\"text\": \"a\"}\n{\"text\": 5}\n"),
            ":2: \"text\" must be a string (set skip_bad_lines = true in [data.jsonl] to skip such "
            "lines)");
  EXPECT_EQ(error("{\"text\": \"a\"}\n\n{oops\n").substr(0, 20), ":3: not valid JSON (");
  EXPECT_EQ(error("{\"title\": \"a\"}\n"),
            ":1: expected a \"text\", \"prompt\"/\"response\" or \"messages\" field (set "
            "skip_bad_lines = true in "
            "[data.jsonl] to skip such lines)");
  EXPECT_EQ(error("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n").substr(0, 60),
            ":1: each message needs \"role\" (system, user or assistant) an");
  EXPECT_EQ(error(""), ": the file is empty");
  EXPECT_EQ(error("\n\n"), ": contains no usable lines");
  EXPECT_EQ(
      error("{\"text\": \"a\"}\n", nullptr),
      ": jsonl data needs the RWKV World tokenizer; run scripts/setup.sh or set PEFTKIT_VOCAB");
  auto dataset = open("{\"text\": \"a\"}\n{broken\n{\"text\": \"b\"}\n", 100, true);
  EXPECT_EQ(dataset->size(), 2);
  EXPECT_NE(dataset->describe().find("(1 bad lines skipped)"), std::string::npos);
}

// Issue 14 item 7: a file that yields no counted target is refused when it is opened (a run used
// to end "0 tokens", rc 0, with the weights changed by L2Wrap on padding).
TEST_F(JsonlTest, AFileWithoutAnyTargetIsRefusedAtOpen) {
  const std::string why =
      ": no line has a token to learn within ctx_len = 100 (empty texts, or prompts that fill the "
      "whole context); every step would be skipped";
  EXPECT_EQ(error("{\"text\": \"\"}\n"), why);
  std::string long_prompt;
  for (int i = 0; i < 300; ++i)
    long_prompt += " hello";  // 300 tokens: no response token fits in 100
  EXPECT_EQ(error("{\"prompt\": \"" + long_prompt + "\", \"response\": \"ok\"}\n"), why);
  // One line with a target is enough; the others are samples without loss.
  EXPECT_EQ(open("{\"text\": \"\"}\n{\"text\": \"hello\"}\n")->size(), 2);
}

// Issue 14 item 12: ids outside a (small) model's vocabulary are found when the file is opened.
TEST_F(JsonlTest, TokenIdsOutsideTheVocabularyAreFoundAtOpen) {
  auto plugin = registry_->get<DatasetPlugin>("jsonl");
  auto file =
      testing::write_file(dir_ / "data.jsonl", "{\"text\": \"a\"}\n{\"text\": \"Hello world\"}\n");
  try {
    plugin->open({file, 100, 1000, 0, tokenizer_},
                 host::default_options(plugin->options(), "data.jsonl"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file.string() + ":2: token id "), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("is outside the model's vocabulary [0, 1000)"),
              std::string::npos)
        << e.what();
  }
}

// Issue 14 (memory): a line nesting JSON deeply is refused before it is parsed.
TEST_F(JsonlTest, DeeplyNestedLinesAreRefusedBeforeParsing) {
  const std::string deep =
      "{\"text\": \"a\", \"extra\": " + std::string(100000, '[') + std::string(100000, ']') + "}\n";
  EXPECT_EQ(error(deep).substr(0, 43), ":1: JSON nests deeper than 32 levels (at ch")
      << error(deep);
  EXPECT_EQ(open("{\"text\": \"a\"}\n" + deep, 100, true)->size(), 1);
}

}  // namespace
}  // namespace peftkit

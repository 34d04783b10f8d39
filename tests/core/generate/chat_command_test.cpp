// `peftkit chat` through stdin: the state carries the conversation, so a later answer is exactly
// what `generate` gives for the whole conversation's text; /save, /load and /reset restore what
// they say.
#include <gtest/gtest.h>

#include "model/rwkv_model.hpp"
#include "model_fixtures.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

using testing::peftkit_command;
using testing::run_command;

class ChatCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    write_pth(dir_->path() / "model.pth",
              testing::perturbed_model(model::ModelConfig::for_size(2, 64, 65536, 16), 21));
  }
  static void TearDownTestSuite() { delete dir_; }

  // Runs a chat on `input` (one message or command per line); returns its output.
  testing::CommandResult chat(const std::string& input, const std::string& transcript = "") {
    testing::write_file(local_ / "input.txt", input);
    return run_command(peftkit_command(
        "chat --model " + (dir_->path() / "model.pth").string() + kSampling +
        (transcript.empty() ? "" : " --transcript " + (local_ / transcript).string()) + " < " +
        (local_ / "input.txt").string()));
  }
  // The answers of a chat's output, in order.
  static std::vector<std::string> answers(const std::string& output) {
    std::vector<std::string> out;
    for (size_t at = output.find("Assistant:"); at != std::string::npos;
         at = output.find("Assistant:", at)) {
      at += 10;
      const size_t end = output.find("\n\n", at);
      out.push_back(output.substr(at, end - at));
      at = end;
    }
    return out;
  }

  static constexpr const char* kSampling = " --device cpu --temperature 0 --max-tokens 12";
  static testing::TempDir* dir_;
  testing::TempDir local_;
};
testing::TempDir* ChatCommand::dir_ = nullptr;

TEST_F(ChatCommand, TheSecondAnswerEqualsGenerateOnTheWholeConversation) {
  auto result = chat("Hello there, who are you?\nTell me about the sea.\n", "transcript.txt");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto said = answers(result.output);
  ASSERT_EQ(said.size(), 2u) << result.output;
  // The transcript is everything the model read: up to the second "Assistant:" is the prompt that
  // generate gets; the rest is the second answer.
  const std::string transcript = testing::read_file(local_ / "transcript.txt");
  ASSERT_EQ(transcript.rfind("User: Hello there, who are you?\n\nAssistant:", 0), 0u) << transcript;
  const size_t second = transcript.rfind("User: Tell me about the sea.\n\nAssistant:");
  ASSERT_NE(second, std::string::npos) << transcript;
  const size_t prompt_end =
      second + std::string("User: Tell me about the sea.\n\nAssistant:").size();
  testing::write_file(local_ / "prompt.txt", transcript.substr(0, prompt_end));
  auto whole = run_command(peftkit_command(
      "generate --model " + (dir_->path() / "model.pth").string() + kSampling +
      " --stop-at-blank-line true --prompt-file " + (local_ / "prompt.txt").string()));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  ASSERT_FALSE(whole.output.empty());
  const std::string generated =
      whole.output.substr(0, whole.output.size() - 1);  // generate ends with a newline
  EXPECT_EQ(generated, transcript.substr(prompt_end));
  EXPECT_EQ(said[1], generated.substr(0, generated.find("\n\n")));
  EXPECT_FALSE(said[1].empty());
}

TEST_F(ChatCommand, SaveLoadAndResetRestoreTheConversation) {
  const std::string state = (local_ / "conversation.pth").string();
  auto first = chat("Hi.\nWhat is rain?\n/save " + state + "\nAnd snow?\n");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const auto a = answers(first.output);
  ASSERT_EQ(a.size(), 3u) << first.output;
  EXPECT_NE(first.output.find("saved to"), std::string::npos) << first.output;

  // A later session that loads the saved state answers the third message as the first did.
  auto loaded = chat("/load " + state + "\nAnd snow?\n/quit\nnever read\n");
  ASSERT_EQ(loaded.exit_code, 0) << loaded.output;
  const auto b = answers(loaded.output);
  ASSERT_EQ(b.size(), 1u) << loaded.output;
  EXPECT_EQ(b[0], a[2]);

  // /reset starts over: the same first message gets the same answer; a bad /load changes nothing.
  testing::write_file(local_ / "not-a-conversation.pth", "junk");
  auto reset = chat("Hi.\n/reset\n/load " + (local_ / "not-a-conversation.pth").string() +
                    "\n/frobnicate\nHi.\n");
  ASSERT_EQ(reset.exit_code, 0) << reset.output;
  const auto c = answers(reset.output);
  ASSERT_EQ(c.size(), 2u) << reset.output;
  EXPECT_EQ(c[0], a[0]);
  EXPECT_EQ(c[1], a[0]);
  EXPECT_NE(reset.output.find("error: "), std::string::npos) << reset.output;
  EXPECT_NE(reset.output.find("unknown command /frobnicate"), std::string::npos) << reset.output;
}

}  // namespace
}  // namespace peftkit

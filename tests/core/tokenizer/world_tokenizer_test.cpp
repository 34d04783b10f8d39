#include "tokenizer/world_tokenizer.hpp"

#include <gtest/gtest.h>

#include <random>

#include "peftkit/error.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

const tokenizer::WorldTokenizer& tokenizer() {
  static const auto instance = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
  return *instance;
}

using Ids = std::vector<int32_t>;

// Test vectors of spec rwkv-model §5, produced with the official TRIE tokenizer.
TEST(WorldTokenizer, MatchesTheOfficialTestVectors) {
  EXPECT_EQ(tokenizer().encode("The Eiffel tower is in the city of"),
            (Ids{6699, 304, 25740, 109, 39990, 4600, 4596, 22590, 30449, 4706}));
  EXPECT_EQ(
      tokenizer().encode("User: simulate SpaceX mars landing using python\n\nAssistant: <think"),
      (Ids{24281, 59, 57236, 44898, 31377, 52092, 40085, 46966, 261, 5585, 41693, 59, 295, 35762}));
  EXPECT_EQ(tokenizer().encode("Hello world!\n\n"), (Ids{33155, 40213, 34, 261}));
  EXPECT_EQ(tokenizer().encode("你好，世界"), (Ids{10464, 11685, 19137, 10267, 14610}));
  EXPECT_EQ(tokenizer().encode("😀 a\tb\r\n"), (Ids{3319, 153, 129, 332, 10, 99, 263}));
  EXPECT_EQ(tokenizer().encode("   x   "), (Ids{3340, 121, 3340}));
  const Ids prefix = {11,    1136, 332,   57212, 51746, 45,  60455, 61885, 332,
                      31076, 4706, 51525, 46456, 4596,  332, 47064, 45};
  Ids ids = tokenizer().encode(
      "\nIn a shocking finding, scientist discovered a herd of dragons living in a remote, "
      "previously unexplored valley, in Tibet.");
  ids.resize(prefix.size());
  EXPECT_EQ(ids, prefix);
}

TEST(WorldTokenizer, VocabularyShapeAndEscapes) {
  EXPECT_EQ(tokenizer().vocab_size(), 65530);
  EXPECT_EQ(tokenizer().token(1), std::string(1, '\0'));
  EXPECT_EQ(tokenizer().token(256), std::string(1, '\xff'));
  EXPECT_EQ(tokenizer().token(2423), "\xC2\x80");  // '\x80' in a str literal is U+0080
  EXPECT_EQ(tokenizer().token(0), "");             // end of document
  EXPECT_TRUE(testing::throws_with([&] { tokenizer().token(65530); },
                                   "tokenizer: id 65530 is outside [0, 65530)"));
}

TEST(WorldTokenizer, EveryTokenEncodesToItself) {
  for (int32_t id = 1; id < tokenizer().vocab_size(); ++id)
    ASSERT_EQ(tokenizer().encode(tokenizer().token(id)), Ids{id}) << "id " << id;
}

TEST(WorldTokenizer, DecodeInvertsEncodeOnArbitraryBytes) {
  std::mt19937 random(1234);
  for (int round = 0; round < 300; ++round) {
    std::string bytes(random() % 200, '\0');
    // Mix raw bytes with ASCII words so that long tokens occur too.
    for (auto& b : bytes)
      b = static_cast<char>(random() % 3 ? "the quick brown fox "[random() % 20] : random() % 256);
    EXPECT_EQ(tokenizer().decode(tokenizer().encode(bytes)), bytes);
  }
}

TEST(WorldTokenizer, MalformedVocabularyLinesNameFileAndLine) {
  testing::TempDir dir;
  auto error = [&](const std::string& text) {
    auto path = testing::write_file(dir / "vocab.txt", text);
    try {
      tokenizer::WorldTokenizer::load(path);
    } catch (const Error& e) {
      return std::string(e.what()).substr(path.string().size());
    }
    return std::string("(loaded)");
  };
  EXPECT_EQ(error("1 'a' 1\n2 'b'\n"),
            ":2: expected '<id> <literal> <byte length>', found '2 'b''");
  EXPECT_EQ(error("1 'a' 1\nx 'b' 1\n"),
            ":2: expected '<id> <literal> <byte length>', found 'x 'b' 1'");
  EXPECT_EQ(error("1 'a' 1\n3 'b' 1\n"), ":2: expected id 2, found 3 (ids must count up from 1)");
  EXPECT_EQ(error("1 'ab' 1\n"), ":1: the literal holds 2 bytes but the line says 1");
  EXPECT_EQ(error("1 ab 2\n"), ":1: expected a Python string or bytes literal, found ab");
  EXPECT_EQ(error("1 '\\xZZ' 1\n"), ":1: bad \\x escape in '\\xZZ'");
  EXPECT_EQ(error("1 'a' 1\n"), ": the vocabulary has no token for the single byte 0");
}

}  // namespace
}  // namespace peftkit

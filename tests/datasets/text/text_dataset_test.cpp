// The text dataset plugin: UTF-8 and UTF-16LE files, a file, a folder or a glob, one document per
// file or split on a separator, against the World tokenizer itself.
#include <gtest/gtest.h>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "test_util.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit {
namespace {

class TextTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new host::PluginRegistry(host::PluginRegistry::discover({PLUGIN_DIR}));
    tokenizer_ = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab()).release();
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete tokenizer_;
  }
  std::shared_ptr<Dataset> open(const std::filesystem::path& path,
                                const std::string& encoding = "utf-8",
                                const std::string& separator = "", int64_t ctx_len = 100) {
    auto plugin = registry_->get<DatasetPlugin>("text");
    Options options = host::default_options(plugin->options(), "data.text");
    options.set("encoding", encoding, OptionSource::kRecipe);
    options.set("separator", separator, OptionSource::kRecipe);
    return host::keep_loaded(plugin->open({path, ctx_len, 65536, 0, tokenizer_}, options), plugin);
  }
  // A document's tokens as a sample: the text's ids and the end token 0, shifted by one.
  static void expect_document(const Sample& s, const std::string& text) {
    std::vector<int32_t> ids = tokenizer_->encode(text);
    ids.push_back(0);
    EXPECT_EQ(s.input_ids, std::vector<int32_t>(ids.begin(), ids.end() - 1)) << text;
    EXPECT_EQ(s.targets, std::vector<int32_t>(ids.begin() + 1, ids.end())) << text;
  }
  std::string error(const std::function<void()>& run) {
    try {
      run();
    } catch (const Error& e) {
      return e.what();
    }
    return "(accepted)";
  }
  static host::PluginRegistry* registry_;
  static tokenizer::WorldTokenizer* tokenizer_;
  testing::TempDir dir_;
};
host::PluginRegistry* TextTest::registry_ = nullptr;
tokenizer::WorldTokenizer* TextTest::tokenizer_ = nullptr;

TEST_F(TextTest, Utf8FilesSplitOnASeparatorOrWhole) {
  testing::write_file(dir_ / "a.txt", "\xEF\xBB\xBFHello world!\n\nSecond one.\n\n\n\nThird, 你好");
  auto split = open(dir_ / "a.txt", "utf-8", "\n\n");
  ASSERT_EQ(split->size(), 3);  // the blank piece between two separators is no document
  expect_document(split->sample(0), "Hello world!");
  expect_document(split->sample(1), "Second one.");
  expect_document(split->sample(2), "Third, 你好");
  auto whole = open(dir_ / "a.txt");
  ASSERT_EQ(whole->size(), 1);
  expect_document(whole->sample(0),
                  "Hello world!\n\nSecond one.\n\n\n\nThird, 你好");  // BOM dropped
  EXPECT_EQ(open(dir_ / "a.txt", "utf-8", "", 3)->sample(0).input_ids.size(),
            3u);  // cut at ctx_len + 1 tokens
}

TEST_F(TextTest, Utf16leFilesFoldersAndGlobs) {
  // "Hi 😀\n" in UTF-16LE with a BOM: the emoji is a surrogate pair.
  testing::write_file(dir_ / "corpus" / "b.txt", std::string("\xFF\xFE"
                                                             "H\0i\0 \0\x3D\xD8\x00\xDE\n\0",
                                                             14));
  testing::write_file(dir_ / "corpus" / "c.txt", std::string("O\0k\0", 4));
  testing::write_file(dir_ / "corpus" / "d.md", std::string("N\0o\0", 4));
  auto folder = open(dir_ / "corpus", "utf-16le");
  ASSERT_EQ(folder->size(), 3);  // b.txt, c.txt, d.md in name order
  expect_document(folder->sample(0), "Hi \xF0\x9F\x98\x80\n");
  expect_document(folder->sample(1), "Ok");
  auto glob = open(dir_ / "corpus" / "*.txt", "utf-16le");
  ASSERT_EQ(glob->size(), 2);
  expect_document(glob->sample(1), "Ok");
  EXPECT_NE(glob->describe().find("2 documents from 2 utf-16le file(s)"), std::string::npos)
      << glob->describe();
}

TEST_F(TextTest, BadFilesNameTheFileAndWhatIsWrong) {
  testing::write_file(dir_ / "odd.txt", std::string("a\0b", 3));
  EXPECT_EQ(error([&] { open(dir_ / "odd.txt", "utf-16le"); }),
            (dir_ / "odd.txt").string() + ": 3 bytes, not whole UTF-16 units");
  testing::write_file(dir_ / "lone.txt", std::string("a\0\x3D\xD8"
                                                     "b\0",
                                                     6));
  EXPECT_EQ(error([&] { open(dir_ / "lone.txt", "utf-16le"); }),
            (dir_ / "lone.txt").string() + ": byte 2: a high surrogate without its low half");
  EXPECT_EQ(error([&] { open(dir_ / "missing.txt"); }),
            (dir_ / "missing.txt").string() + ": no such file");
  EXPECT_EQ(error([&] { open(dir_ / "*.none"); }),
            (dir_ / "*.none").string() + ": no file matches");
  testing::write_file(dir_ / "blank.txt", "\n \n");
  EXPECT_NE(error([&] { open(dir_ / "blank.txt"); }).find("no document of two tokens or more"),
            std::string::npos);
}

}  // namespace
}  // namespace peftkit

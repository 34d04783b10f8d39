#include <gtest/gtest.h>

#include <sstream>

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "peftkit/dataset.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

std::vector<int32_t> document(int d) {
  std::vector<int32_t> tokens;
  for (int k = 0; k < 3 + 4 * d; ++k) tokens.push_back(100 * d + k);
  tokens.push_back(0);
  return tokens;
}

class BinidxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    auto result = testing::run_command(std::string(PEFTKIT_PYTHON) + " " MAKE_BINIDX_SCRIPT " write " + dir_->path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    registry_ = new host::PluginRegistry(host::PluginRegistry::discover({PLUGIN_DIR}));
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete dir_;
  }
  static std::shared_ptr<Dataset> open(const std::string& name, int64_t ctx_len, const std::string& mode = "pad",
                                       const std::string& order = "") {
    auto plugin = registry_->get<DatasetPlugin>("binidx");
    Options options = host::default_options(plugin->options(), "data.binidx");
    options.set("mode", mode, OptionSource::kRecipe);
    if (!order.empty()) options.set("order", order, OptionSource::kRecipe);
    return host::keep_loaded(plugin->open({dir_->path() / name, ctx_len, 65536, 0, nullptr}, options), plugin);
  }
  static std::string error(const std::string& name) {
    try {
      open(name, 8);
    } catch (const Error& e) {
      return e.what();
    }
    return "(opened)";
  }
  static std::string path(const std::string& name) { return (dir_->path() / name).string(); }
  static inline testing::TempDir* dir_ = nullptr;
  static inline host::PluginRegistry* registry_ = nullptr;
};

TEST_F(BinidxTest, PadModeGivesOneDocumentPerSampleForUint16AndInt32) {
  for (const char* prefix : {"u16", "i32.bin", "i32.idx"}) {  // the prefix or either file name
    auto dataset = open(prefix, 10);
    ASSERT_EQ(dataset->size(), 6) << prefix;
    for (int d = 0; d < 6; ++d) {
      std::vector<int32_t> doc = document(d);
      if (doc.size() > 11) doc.resize(11);  // truncated to ctx_len + 1
      Sample s = dataset->sample(d);
      EXPECT_EQ(s.input_ids, std::vector<int32_t>(doc.begin(), doc.end() - 1)) << prefix << " " << d;
      EXPECT_EQ(s.targets, std::vector<int32_t>(doc.begin() + 1, doc.end())) << prefix << " " << d;
    }
  }
}

TEST_F(BinidxTest, StreamModeReadsTheWholeFileAsOneStream) {
  std::vector<int32_t> stream;
  for (int d = 0; d < 6; ++d)
    for (int32_t t : document(d)) stream.push_back(t);
  auto dataset = open("u16", 8, "stream", "sequential");
  EXPECT_EQ(dataset->size(), static_cast<int64_t>((stream.size() - 1) / 8));
  Sample s = dataset->sample(3);
  EXPECT_EQ(s.input_ids, std::vector<int32_t>(stream.begin() + 24, stream.begin() + 32));
  EXPECT_EQ(s.targets, std::vector<int32_t>(stream.begin() + 25, stream.begin() + 33));
  EXPECT_NE(open("u16", 8, "stream", "magic_prime")->describe().find("in magic_prime order"), std::string::npos);
}

TEST_F(BinidxTest, BadFilesGetPreciseErrors) {
  EXPECT_EQ(error("float"), path("float") + ".idx: dtype code 6 is a float type; token ids need an integer type "
                                            "(8 = uint16 or 4 = int32 as json2binidx and make_data.py write)");
  EXPECT_NE(error("legacy").find("legacy fairseq \"cached\" index (TNTIDX) is not supported"), std::string::npos);
  EXPECT_NE(error("short").find("truncated index"), std::string::npos) << error("short");
  EXPECT_EQ(error("missing"), path("missing") + ".idx: cannot open (No such file or directory)");
  auto big = open("big", 8);
  try {
    big->sample(0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path("big") + ".bin: token id 70000 at element 2 is outside the model's vocabulary [0, 65536)");
  }
  auto plugin = registry_->get<DatasetPlugin>("binidx");
  Options options = host::default_options(plugin->options(), "data.binidx");
  options.set("order", std::string("sequential"), OptionSource::kRecipe, "r.toml:4:9");
  EXPECT_THROW(plugin->validate(options), Error);  // order without mode = "stream"
}

TEST_F(BinidxTest, ConvertWritesJson2binidxFilesFromJsonl) {
  testing::TempDir dir;
  auto jsonl = testing::write_file(dir / "docs.jsonl",
                                   "{\"text\": \"Hello world!\\n\\n\"}\n"
                                   "{\"prompt\": \"User: hi\\n\\nAssistant:\", \"response\": \" Hello!\\n\\n\"}\n");
  auto result = testing::run_command(std::string(PEFTKIT_BINARY) + " convert --from jsonl --to binidx --input " +
                                     jsonl.string() + " --output " + (dir / "out").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("2 documents"), std::string::npos) << result.output;
  // Python reads what we wrote, independently.
  auto check = testing::run_command(std::string(PEFTKIT_PYTHON) + " " MAKE_BINIDX_SCRIPT " check " + (dir / "out").string());
  ASSERT_EQ(check.exit_code, 0) << check.output;
  std::istringstream lines(check.output);
  std::string dtype, first;
  std::getline(lines, dtype);
  std::getline(lines, first);
  EXPECT_EQ(dtype, "<u2");
  EXPECT_EQ(first, "33155 40213 34 261 0");  // spec rwkv-model §5 vector plus end of document
  // And our binidx plugin reads it back.
  auto plugin = registry_->get<DatasetPlugin>("binidx");
  auto dataset = plugin->open({dir / "out", 100, 65536, 0, nullptr}, host::default_options(plugin->options(), "data.binidx"));
  EXPECT_EQ(dataset->sample(0).input_ids, (std::vector<int32_t>{33155, 40213, 34, 261}));
  EXPECT_EQ(dataset->size(), 2);
}

}  // namespace
}  // namespace peftkit

#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include "host/plugin_registry.hpp"
#include "peftkit/dataset.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

int32_t expected_token(int64_t k) { return static_cast<int32_t>((k * 7919) % 1000); }

class NumpyDatasetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixtures_ = new testing::TempDir();
    auto result = testing::run_command(std::string(PEFTKIT_PYTHON) + " " MAKE_FIXTURES_SCRIPT " " +
                                       fixtures_->path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    std::istringstream lines(result.output);
    for (int64_t offset; lines >> offset;) magic_offsets_.push_back(offset);
    registry_ = new host::PluginRegistry(host::PluginRegistry::discover({NUMPY_PLUGIN_DIR}));
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete fixtures_;
  }

  static std::shared_ptr<Dataset> open(const std::string& name, int64_t ctx_len,
                                       const std::string& order = "", uint64_t seed = 0,
                                       int64_t vocab = 1000) {
    auto plugin = registry_->get<DatasetPlugin>("numpy");
    Options options("data.numpy");
    if (order.empty())
      options.set("order", std::string("random"), OptionSource::kDefault);
    else
      options.set("order", order, OptionSource::kRecipe, "recipe.toml:9:9");
    DatasetSource source{fixtures_->path() / name, ctx_len, vocab, seed, nullptr};
    return host::keep_loaded(plugin->open(source, options), plugin);
  }

  static std::string open_error(const std::string& name, int64_t ctx_len = 8,
                                const std::string& order = "") {
    try {
      open(name, ctx_len, order);
    } catch (const Error& e) {
      return e.what();
    }
    return "(opened)";
  }

  static std::string path(const std::string& name) { return (fixtures_->path() / name).string(); }

  static inline testing::TempDir* fixtures_ = nullptr;
  static inline host::PluginRegistry* registry_ = nullptr;
  static inline std::vector<int64_t> magic_offsets_;
};

TEST_F(NumpyDatasetTest, ReadsEveryVersionAndTokenTypeNumpyWrites) {
  for (const char* version : {"v1", "v2", "v3"}) {
    for (const char* type : {"u2", "i4", "i8"}) {
      const std::string name = std::string("stream-") + version + "-" + type + ".npy";
      auto dataset = open(name, 10, "sequential");
      ASSERT_EQ(dataset->size(), 99) << name;  // (1000 - 1) / 10 windows
      for (int64_t i : {0, 1, 57, 98}) {
        Sample sample = dataset->sample(i);
        ASSERT_EQ(sample.input_ids.size(), 10u);
        for (int64_t k = 0; k < 10; ++k) {
          EXPECT_EQ(sample.input_ids[k], expected_token(i * 10 + k)) << name;
          EXPECT_EQ(sample.targets[k], expected_token(i * 10 + k + 1)) << name;
        }
      }
    }
  }
}

TEST_F(NumpyDatasetTest, TwoDimensionalRowsAreSamplesTruncatedToContext) {
  auto dataset = open("rows.npy", 16);
  ASSERT_EQ(dataset->size(), 5);
  Sample sample = dataset->sample(3);
  ASSERT_EQ(sample.input_ids.size(), 16u);
  for (int64_t k = 0; k < 16; ++k) {
    EXPECT_EQ(sample.input_ids[k], expected_token(3 * 40 + k));
    EXPECT_EQ(sample.targets[k], expected_token(3 * 40 + k + 1));
  }
  auto whole = open("rows.npy", 100);
  EXPECT_EQ(whole->sample(0).input_ids.size(), 39u);
}

TEST_F(NumpyDatasetTest, MagicPrimeOrderMatchesRwkvLm) {
  auto dataset = open("magic.npy", 16, "magic_prime");
  ASSERT_EQ(static_cast<size_t>(dataset->size()), magic_offsets_.size());
  for (size_t i = 0; i < magic_offsets_.size(); ++i) {
    Sample sample = dataset->sample(static_cast<int64_t>(i));
    EXPECT_EQ(sample.input_ids[0], expected_token(magic_offsets_[i])) << i;
    EXPECT_EQ(sample.targets[15], expected_token(magic_offsets_[i] + 16)) << i;
  }
}

TEST_F(NumpyDatasetTest, RandomOrderIsAPureFunctionOfSeedAndIndex) {
  auto a = open("magic.npy", 16, "random", 7);
  auto b = open("magic.npy", 16, "random", 7);
  auto c = open("magic.npy", 16, "random", 8);
  int differing = 0;
  std::set<int32_t> first_tokens;
  for (int64_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ(a->sample(i).input_ids, b->sample(i).input_ids);
    differing += a->sample(i).input_ids != c->sample(i).input_ids;
    first_tokens.insert(a->sample(i).input_ids[0]);
  }
  EXPECT_GT(differing, a->size() / 2);
  EXPECT_GT(first_tokens.size(), 50u);  // offsets spread over the stream
}

TEST_F(NumpyDatasetTest, BadFilesGetPreciseErrors) {
  EXPECT_EQ(open_error("big-endian.npy"),
            path("big-endian.npy") +
                ": dtype '>u2' is big-endian; expected little-endian token ids "
                "('<u2', '<i4' or '<i8'), e.g. arr.astype('<u2')");
  EXPECT_EQ(open_error("float.npy"), path("float.npy") +
                                         ": dtype '<f4' is not a token-id type; "
                                         "expected '<u2' (uint16), '<i4' (int32) or "
                                         "'<i8' (int64)");
  EXPECT_NE(open_error("fortran.npy").find("Fortran order"), std::string::npos);
  EXPECT_NE(open_error("cube.npy").find("has 3 dimensions"), std::string::npos);
  EXPECT_EQ(open_error("empty-array.npy"),
            path("empty-array.npy") + ": the array (0,) holds no tokens");
  EXPECT_NE(open_error("missing.npy").find("missing.npy: cannot open"), std::string::npos);
  EXPECT_EQ(
      open_error("stream-v1-u2.npy", 1000),
      path("stream-v1-u2.npy") + ": holds 1000 tokens but one sample needs ctx_len + 1 = 1001");
  EXPECT_EQ(open_error("rows.npy", 8, "sequential"),
            "recipe.toml:9:9: [data.numpy] order: " + path("rows.npy") +
                " is a 2-D [samples, length] array, whose rows are the samples; order applies to "
                "1-D streams only");
}

TEST_F(NumpyDatasetTest, MalformedBytesGetPreciseErrors) {
  testing::TempDir dir;
  auto write = [&](const std::string& name, const std::string& bytes) {
    return testing::write_file(dir / name, bytes).string();
  };
  auto error = [&](const std::string& file) {
    auto plugin = registry_->get<DatasetPlugin>("numpy");
    Options options("data.numpy");
    options.set("order", std::string("random"), OptionSource::kDefault);
    try {
      plugin->open(DatasetSource{file, 4, 1000, 0, nullptr}, options);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(opened)");
  };
  std::string empty = write("empty.npy", "");
  EXPECT_EQ(error(empty), empty + ": the file is empty");
  std::string zip = write("zip.npy", "PK\x03\x04 this is a zip archive");
  EXPECT_EQ(error(zip), zip + ": expected the .npy magic string \\x93NUMPY at the start");
  // A v1 header that promises 10 uint16 tokens, followed by 3 bytes of data.
  std::string header = "{'descr': '<u2', 'fortran_order': False, 'shape': (10,), }";
  std::string truncated =
      write("truncated.npy", std::string("\x93NUMPY\x01\x00", 8) +
                                 std::string(1, static_cast<char>(header.size())) +
                                 std::string(1, '\0') + header + "abc");
  EXPECT_EQ(error(truncated),
            truncated + ": shape (10,) needs 20 bytes of data but the file holds 3");
  std::string future = write("future.npy", std::string("\x93NUMPY\x04\x00\x00\x00", 10));
  EXPECT_NE(error(future).find("format version 4.0 is not supported"), std::string::npos);
}

// Issue 14 item 12: every id is checked when the file is opened, not when its window is drawn
// (a run used to fail at step 141, and a file whose bad id was never drawn trained with rc 0).
TEST_F(NumpyDatasetTest, TokenOutsideTheVocabularyIsReportedAtOpenWithItsPosition) {
  try {
    open("large-ids.npy", 2, "sequential", 0, 65536);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), (path("large-ids.npy") + ": token id 70000 at element 3 is outside the "
                                                    "model's vocabulary [0, 65536)")
                               .c_str());
  }
  EXPECT_EQ(open("large-ids.npy", 2, "sequential", 0, 70001)->sample(1).input_ids[1], 70000);
}

// Issue 14 items 3 and 4: a padded header is read without backtracking, and a shape whose size
// overflows 64 bits is refused instead of reading past the mapping.
TEST_F(NumpyDatasetTest, HostileHeadersAreRefusedOrReadInLinearTime) {
  testing::TempDir dir;
  auto npy = [&](const std::string& name, int version, const std::string& header,
                 const std::string& data) {
    std::string bytes("\x93NUMPY", 6);
    bytes += static_cast<char>(version);
    bytes += '\0';
    const size_t length = header.size();
    for (int b = 0; b < (version == 1 ? 2 : 4); ++b)
      bytes += static_cast<char>((length >> (8 * b)) & 0xFF);
    return testing::write_file(dir / name, bytes + header + data).string();
  };
  auto opened = [&](const std::string& file) -> std::string {
    auto plugin = registry_->get<DatasetPlugin>("numpy");
    Options options("data.numpy");
    options.set("order", std::string("sequential"), OptionSource::kDefault);
    try {
      return std::to_string(
          plugin->open(DatasetSource{file, 4, 1000, 0, nullptr}, options)->size());
    } catch (const Error& e) {
      return e.what();
    }
  };
  const std::string tokens(20, '\x01');  // ten uint16 tokens of id 257
  const std::string dict = "{'descr': '<u2', 'fortran_order': False, 'shape': (10,), }";
  // Valid headers padded with spaces to 60 KB (v1) and 200 KB (v2), as NumPy pads to alignment.
  EXPECT_EQ(opened(npy("v1-padded.npy", 1, dict + std::string(60000, ' ') + "\n", tokens)), "2");
  EXPECT_EQ(opened(npy("v2-padded.npy", 2, dict + std::string(200000, ' ') + "\n", tokens)), "2");
  const std::string huge = npy("v2-huge.npy", 2, dict + std::string(2 << 20, ' '), tokens);
  EXPECT_EQ(opened(huge), huge + ": the header is " + std::to_string(dict.size() + (2 << 20)) +
                              " bytes long; peftkit reads .npy headers of at most 1048576 bytes");
  // The reproducer: (4, 2^60 + 2) with 32 bytes of data.
  const std::string beyond =
      npy("beyond.npy", 1,
          "{'descr': '<u2', 'fortran_order': False, 'shape': (4, 1152921504606846978), }",
          std::string(32, '\0'));
  EXPECT_EQ(opened(beyond), beyond +
                                ": shape (4, 1152921504606846978) needs 9223372036854775824 bytes "
                                "of data but the file holds 32");
  const std::string overflow =
      npy("overflow.npy", 1,
          "{'descr': '<u2', 'fortran_order': False, 'shape': (8, 1152921504606846978), }",
          std::string(32, '\0'));
  EXPECT_EQ(opened(overflow),
            overflow + ": shape (8, 1152921504606846978) holds more than 2^63 elements");
  const std::string bytes_overflow = npy(
      "bytes.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2305843009213693953,), }",
      std::string(32, '\0'));
  EXPECT_EQ(opened(bytes_overflow), bytes_overflow +
                                        ": shape (2305843009213693953,) needs more than 2^64 bytes "
                                        "of data but the file holds 32");
  const std::string twice = npy("twice.npy", 1,
                                "{'descr': '<u2', 'descr': '<i8', 'fortran_order': False, "
                                "'shape': (10,), }",
                                tokens);
  EXPECT_NE(opened(twice).find("names 'descr' twice"), std::string::npos) << opened(twice);
  const std::string digits =
      npy("digits.npy", 1,
          "{'descr': '<u2', 'fortran_order': False, 'shape': (" + std::string(30, '9') + ",), }",
          tokens);
  EXPECT_NE(opened(digits).find("shape entry beyond 64 bits"), std::string::npos) << opened(digits);
}

TEST_F(NumpyDatasetTest, DescribeNamesFileTypeAndLayout) {
  EXPECT_EQ(open("stream-v2-i4.npy", 10, "sequential")->describe(),
            path("stream-v2-i4.npy") +
                ": int32 .npy v2, 1000 tokens, 99 windows of 11 tokens in "
                "sequential order");
}

}  // namespace
}  // namespace peftkit

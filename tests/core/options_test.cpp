#include "peftkit/options.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

namespace peftkit {
namespace {

TEST(OptionSchema, DescribesExpectedValuesFromBoundsAndChoices) {
  OptionSchema schema;
  schema.add_int("ctx_len", 1024, "", 1, 65536)
      .add_int("steps", 1, "", 1)
      .add_float("beta", 0.9, "", Bound{0}, Bound{1, true})
      .add_float("eps", 1e-8, "", Bound{0, true})
      .add_string("schedule", "cos", "", {"cos", "wsd"})
      .add_bool("grad_cp", false, "");
  EXPECT_EQ(describe_expected(*schema.find("ctx_len")), "an integer in [1, 65536]");
  EXPECT_EQ(describe_expected(*schema.find("steps")), "an integer >= 1");
  EXPECT_EQ(describe_expected(*schema.find("beta")), "a number in [0.0, 1.0)");
  EXPECT_EQ(describe_expected(*schema.find("eps")), "a number > 0.0");
  EXPECT_EQ(describe_expected(*schema.find("schedule")), "one of \"cos\", \"wsd\"");
  EXPECT_EQ(describe_expected(*schema.find("grad_cp")), "true or false");
}

TEST(OptionSchema, ChecksTypeBoundsAndChoices) {
  OptionSchema schema;
  schema.add_float("beta", 0.9, "", Bound{0}, Bound{1, true})
      .add_string_list("parts", {}, "", {"ln", "emb"});
  const OptionSpec& beta = *schema.find("beta");
  EXPECT_EQ(check_option_value(beta, 0.0), "");
  EXPECT_NE(check_option_value(beta, 1.0), "");  // exclusive upper bound
  EXPECT_NE(check_option_value(beta, -0.1), "");
  EXPECT_NE(check_option_value(beta, std::string("x")), "");
  const OptionSpec& parts = *schema.find("parts");
  EXPECT_EQ(check_option_value(parts, std::vector<std::string>{"ln", "emb"}), "");
  EXPECT_NE(check_option_value(parts, std::vector<std::string>{"ln", "head"}), "");
}

TEST(OptionSchema, RefusesDuplicateNamesAndInvalidDefaults) {
  OptionSchema schema;
  schema.add_int("r", 8, "");
  EXPECT_TRUE(testing::throws_with([&] { schema.add_int("r", 4, ""); }, "'r' is declared twice"));
  EXPECT_TRUE(testing::throws_with([&] { OptionSchema().add_int("r", 0, "", 1); },
                                   "the default of 'r' is not an integer >= 1"));
  EXPECT_TRUE(testing::throws_with(
      [&] {
        OptionSchema().add_string("mode", "x", "", {"a", "b"});
      },
      "the default of 'mode' is not one of \"a\", \"b\""));
}

TEST(OptionValueText, IsValidTomlThatReadsBackExactly) {
  EXPECT_EQ(format_option_value(true), "true");
  EXPECT_EQ(format_option_value(int64_t{-3}), "-3");
  EXPECT_EQ(format_option_value(6e-4), "0.0006");
  EXPECT_EQ(format_option_value(2.0), "2.0");
  EXPECT_EQ(format_option_value(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(format_option_value(std::string("a\"b\\c\n")), "\"a\\\"b\\\\c\\n\"");
  EXPECT_EQ(format_option_value(std::vector<std::string>{"ln", "emb"}), "[\"ln\", \"emb\"]");
}

TEST(Options, GettersCheckNamesAndTypes) {
  Options options("train");
  options.set("ctx_len", int64_t{512}, OptionSource::kRecipe, "r.toml:3:11");
  EXPECT_EQ(options.get_int("ctx_len"), 512);
  EXPECT_EQ(options.source("ctx_len"), OptionSource::kRecipe);
  EXPECT_TRUE(testing::throws_with([&] { options.get_float("ctx_len"); },
                                   "[train] ctx_len is not a number"));
  EXPECT_TRUE(
      testing::throws_with([&] { options.get_int("missing"); }, "[train] has no option 'missing'"));
  EXPECT_STREQ(options.error("ctx_len", "too long").what(),
               "r.toml:3:11: [train] ctx_len: too long");
}

}  // namespace
}  // namespace peftkit

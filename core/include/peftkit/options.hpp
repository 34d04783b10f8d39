// options.hpp: typed, validated settings for the host and for plugins.
//
// A plugin declares what its recipe table accepts as an OptionSchema; the host checks the user's
// TOML table against it (unknown keys with a suggestion, types, ranges, choices, each error with
// file:line) and hands the plugin the resolved Options, defaults filled in. No key is ever
// accepted and ignored: the schema is the complete list of what the plugin reads.
//
//   OptionSchema schema;
//   schema.add_int("r", 8, "LoRA rank", /*min=*/1)
//         .add_float("alpha", 32.0, "scaling numerator: s = alpha / r", /*min=*/0.0)
//         .add_string("init", "kaiming", "init of A", {"kaiming", "gaussian"});
//   ...
//   int64_t r = options.get_int("r");
//   if (r > 512) throw options.error("r", "must be at most 512 for this method");
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "peftkit/error.hpp"

namespace peftkit {

enum class OptionType { kBool, kInt, kFloat, kString, kStringList };
std::string_view option_type_name(OptionType type);

using OptionValue = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;

// One numeric limit; exclusive limits express ranges such as beta in [0, 1).
struct Bound {
  double value;
  bool exclusive = false;
};

struct OptionSpec {
  std::string name;
  OptionType type = OptionType::kString;
  std::optional<OptionValue> default_value;  // empty: the key is required
  std::string help;
  std::optional<Bound> min, max;     // numeric options only
  std::vector<std::string> choices;  // string options (and each element of a list): allowed values
  bool is_path = false;  // a file path: the host resolves it against the recipe's folder
};

class OptionSchema {
 public:
  OptionSchema& add_bool(std::string name, bool default_value, std::string help);
  OptionSchema& add_int(std::string name, int64_t default_value, std::string help,
                        std::optional<int64_t> min = std::nullopt,
                        std::optional<int64_t> max = std::nullopt);
  OptionSchema& add_float(std::string name, double default_value, std::string help,
                          std::optional<Bound> min = std::nullopt,
                          std::optional<Bound> max = std::nullopt);
  OptionSchema& add_string(std::string name, std::string default_value, std::string help,
                           std::vector<std::string> choices = {});
  OptionSchema& add_required_string(std::string name, std::string help);
  // A file path; relative paths in a recipe are resolved against the recipe's folder, and "" means
  // none.
  OptionSchema& add_path(std::string name, std::string default_value, std::string help);
  OptionSchema& add_string_list(std::string name, std::vector<std::string> default_value,
                                std::string help, std::vector<std::string> choices = {});
  // Any spec, e.g. a required int.
  OptionSchema& add(OptionSpec spec);

  const OptionSpec* find(std::string_view name) const;
  const std::vector<OptionSpec>& specs() const { return specs_; }
  std::vector<std::string> names() const;

 private:
  std::vector<OptionSpec> specs_;
};

// Where a resolved value came from; `peftkit recipe show` prints it.
enum class OptionSource { kDefault, kRecipe, kOverride };

// The resolved values of one recipe table. Getters throw peftkit::Error on a name that the schema
// did not declare or on a type mismatch, which is a programming error of the caller.
class Options {
 public:
  Options() = default;
  // table: the recipe table these came from, e.g. "train" or "peft.lora" (used in messages).
  explicit Options(std::string table) : table_(std::move(table)) {}

  const std::string& table() const { return table_; }

  bool get_bool(std::string_view name) const;
  int64_t get_int(std::string_view name) const;
  double get_float(std::string_view name) const;
  const std::string& get_string(std::string_view name) const;
  const std::vector<std::string>& get_string_list(std::string_view name) const;
  const OptionValue& get(std::string_view name) const;
  bool contains(std::string_view name) const;

  OptionSource source(std::string_view name) const;
  // "recipe.toml:12:3" for values from a file, "--set train.lr_init" for overrides, "" for
  // defaults.
  const std::string& location(std::string_view name) const;

  // An Error whose message starts with the value's location and "[table] name:".
  Error error(std::string_view name, std::string_view message) const;

  void set(std::string name, OptionValue value, OptionSource source, std::string location = {});
  // Names in schema order of insertion.
  const std::vector<std::string>& names() const { return order_; }

 private:
  struct Entry {
    OptionValue value;
    OptionSource source = OptionSource::kDefault;
    std::string location;
  };
  const Entry& entry(std::string_view name) const;

  std::string table_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::vector<std::string> order_;
};

// Text form of a value in TOML syntax: true, 42, 0.0006, "cos", ["ln", "emb"].
std::string format_option_value(const OptionValue& value);

// Checks a value against a spec's type, bounds and choices (after type conversion by the caller);
// returns an empty string when valid, else what was expected, e.g. "an integer >= 1".
std::string check_option_value(const OptionSpec& spec, const OptionValue& value);
// "an integer in [1, 65536]", "one of \"cos\", \"wsd\"", "true or false" ...
std::string describe_expected(const OptionSpec& spec);

}  // namespace peftkit

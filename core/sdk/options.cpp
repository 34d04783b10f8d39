#include "peftkit/options.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace peftkit {
namespace {

std::string format_number(double value) {
  // Shortest text that reads back to the same double, always with a '.' or exponent (TOML float).
  char buffer[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  std::string text = buffer;
  if (std::isfinite(value) && text.find_first_of(".eE") == std::string::npos) text += ".0";
  if (std::isinf(value)) text = value > 0 ? "inf" : "-inf";
  if (std::isnan(value)) text = "nan";
  return text;
}

std::string quote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
          out += buffer;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string format_bound(const OptionSpec& spec, double value) {
  if (spec.type != OptionType::kInt) return format_number(value);
  // Bounds are doubles: INT64_MAX is stored as 2^63, which no int64 holds (found by fuzz_recipe).
  if (value >= 0x1p63) return std::to_string(std::numeric_limits<int64_t>::max());
  if (value < -0x1p63) return std::to_string(std::numeric_limits<int64_t>::min());
  return std::to_string(static_cast<int64_t>(value));
}

std::string join_choices(const std::vector<std::string>& choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) out += (i ? ", " : "") + quote(choices[i]);
  return out;
}

bool in_choices(const std::vector<std::string>& choices, const std::string& value) {
  if (choices.empty()) return true;
  for (const auto& choice : choices)
    if (choice == value) return true;
  return false;
}

}  // namespace

std::string_view option_type_name(OptionType type) {
  switch (type) {
    case OptionType::kBool:
      return "boolean";
    case OptionType::kInt:
      return "integer";
    case OptionType::kFloat:
      return "number";
    case OptionType::kString:
      return "string";
    case OptionType::kStringList:
      return "list of strings";
  }
  return "value";
}

OptionSchema& OptionSchema::add(OptionSpec spec) {
  if (find(spec.name)) throw Error("option schema: '" + spec.name + "' is declared twice");
  if (spec.default_value) {
    std::string problem = check_option_value(spec, *spec.default_value);
    if (!problem.empty())
      throw Error("option schema: the default of '" + spec.name + "' is not " + problem);
  }
  specs_.push_back(std::move(spec));
  return *this;
}

OptionSchema& OptionSchema::add_bool(std::string name, bool default_value, std::string help) {
  return add({std::move(name), OptionType::kBool, default_value, std::move(help), {}, {}, {}});
}

OptionSchema& OptionSchema::add_int(std::string name, int64_t default_value, std::string help,
                                    std::optional<int64_t> min, std::optional<int64_t> max) {
  OptionSpec spec{std::move(name), OptionType::kInt, default_value, std::move(help), {}, {}, {}};
  if (min) spec.min = Bound{static_cast<double>(*min)};
  if (max) spec.max = Bound{static_cast<double>(*max)};
  return add(std::move(spec));
}

OptionSchema& OptionSchema::add_float(std::string name, double default_value, std::string help,
                                      std::optional<Bound> min, std::optional<Bound> max) {
  return add({std::move(name), OptionType::kFloat, default_value, std::move(help), min, max, {}});
}

OptionSchema& OptionSchema::add_string(std::string name, std::string default_value,
                                       std::string help, std::vector<std::string> choices) {
  return add({std::move(name),
              OptionType::kString,
              std::move(default_value),
              std::move(help),
              {},
              {},
              std::move(choices)});
}

OptionSchema& OptionSchema::add_required_string(std::string name, std::string help) {
  return add({std::move(name), OptionType::kString, std::nullopt, std::move(help), {}, {}, {}});
}

OptionSchema& OptionSchema::add_path(std::string name, std::string default_value,
                                     std::string help) {
  OptionSpec spec{
      std::move(name), OptionType::kString, std::move(default_value), std::move(help), {}, {}, {}};
  spec.is_path = true;
  return add(std::move(spec));
}

OptionSchema& OptionSchema::add_string_list(std::string name,
                                            std::vector<std::string> default_value,
                                            std::string help, std::vector<std::string> choices) {
  return add({std::move(name),
              OptionType::kStringList,
              std::move(default_value),
              std::move(help),
              {},
              {},
              std::move(choices)});
}

const OptionSpec* OptionSchema::find(std::string_view name) const {
  for (const auto& spec : specs_)
    if (spec.name == name) return &spec;
  return nullptr;
}

std::vector<std::string> OptionSchema::names() const {
  std::vector<std::string> out;
  for (const auto& spec : specs_) out.push_back(spec.name);
  return out;
}

std::string describe_expected(const OptionSpec& spec) {
  switch (spec.type) {
    case OptionType::kBool:
      return "true or false";
    case OptionType::kString:
      return spec.choices.empty() ? "a string" : "one of " + join_choices(spec.choices);
    case OptionType::kStringList:
      return spec.choices.empty() ? "a list of strings"
                                  : "a list of strings from " + join_choices(spec.choices);
    case OptionType::kInt:
    case OptionType::kFloat:
      break;
  }
  std::string what = spec.type == OptionType::kInt ? "an integer" : "a number";
  if (spec.min && spec.max) {
    return what + " in " + (spec.min->exclusive ? "(" : "[") + format_bound(spec, spec.min->value) +
           ", " + format_bound(spec, spec.max->value) + (spec.max->exclusive ? ")" : "]");
  }
  if (spec.min)
    return what + (spec.min->exclusive ? " > " : " >= ") + format_bound(spec, spec.min->value);
  if (spec.max)
    return what + (spec.max->exclusive ? " < " : " <= ") + format_bound(spec, spec.max->value);
  return what;
}

std::string check_option_value(const OptionSpec& spec, const OptionValue& value) {
  const std::string expected = describe_expected(spec);
  auto numeric_ok = [&](double v) {
    if (!std::isfinite(v)) return false;
    if (spec.min && (spec.min->exclusive ? v <= spec.min->value : v < spec.min->value))
      return false;
    if (spec.max && (spec.max->exclusive ? v >= spec.max->value : v > spec.max->value))
      return false;
    return true;
  };
  switch (spec.type) {
    case OptionType::kBool:
      return std::holds_alternative<bool>(value) ? "" : expected;
    case OptionType::kInt:
      if (auto* v = std::get_if<int64_t>(&value))
        return numeric_ok(static_cast<double>(*v)) ? "" : expected;
      return expected;
    case OptionType::kFloat:
      if (auto* v = std::get_if<double>(&value)) return numeric_ok(*v) ? "" : expected;
      return expected;
    case OptionType::kString:
      if (auto* v = std::get_if<std::string>(&value))
        return in_choices(spec.choices, *v) ? "" : expected;
      return expected;
    case OptionType::kStringList:
      if (auto* v = std::get_if<std::vector<std::string>>(&value)) {
        for (const auto& element : *v)
          if (!in_choices(spec.choices, element)) return expected;
        return "";
      }
      return expected;
  }
  return expected;
}

std::string format_option_value(const OptionValue& value) {
  struct Visitor {
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(int64_t v) const { return std::to_string(v); }
    std::string operator()(double v) const { return format_number(v); }
    std::string operator()(const std::string& v) const { return quote(v); }
    std::string operator()(const std::vector<std::string>& v) const {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + quote(v[i]);
      return out + "]";
    }
  };
  return std::visit(Visitor{}, value);
}

void Options::set(std::string name, OptionValue value, OptionSource source, std::string location) {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    order_.push_back(name);
    entries_.emplace(std::move(name), Entry{std::move(value), source, std::move(location)});
  } else {
    it->second = Entry{std::move(value), source, std::move(location)};
  }
}

const Options::Entry& Options::entry(std::string_view name) const {
  auto it = entries_.find(name);
  if (it == entries_.end())
    throw Error("[" + table_ + "] has no option '" + std::string(name) + "' (not in its schema)");
  return it->second;
}

bool Options::contains(std::string_view name) const { return entries_.count(name) != 0; }
const OptionValue& Options::get(std::string_view name) const { return entry(name).value; }
OptionSource Options::source(std::string_view name) const { return entry(name).source; }
const std::string& Options::location(std::string_view name) const { return entry(name).location; }

namespace {
template <class T>
const T& typed(const Options& options, std::string_view name, OptionType type) {
  const OptionValue& value = options.get(name);
  if (auto* v = std::get_if<T>(&value)) return *v;
  throw Error("[" + options.table() + "] " + std::string(name) + " is not a " +
              std::string(option_type_name(type)));
}
}  // namespace

bool Options::get_bool(std::string_view name) const {
  return typed<bool>(*this, name, OptionType::kBool);
}
int64_t Options::get_int(std::string_view name) const {
  return typed<int64_t>(*this, name, OptionType::kInt);
}
double Options::get_float(std::string_view name) const {
  return typed<double>(*this, name, OptionType::kFloat);
}
const std::string& Options::get_string(std::string_view name) const {
  return typed<std::string>(*this, name, OptionType::kString);
}
const std::vector<std::string>& Options::get_string_list(std::string_view name) const {
  return typed<std::vector<std::string>>(*this, name, OptionType::kStringList);
}

Error Options::error(std::string_view name, std::string_view message) const {
  std::string where;
  if (contains(name) && !location(name).empty()) where = location(name) + ": ";
  return Error(where + "[" + table_ + "] " + std::string(name) + ": " + std::string(message));
}

}  // namespace peftkit

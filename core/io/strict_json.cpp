#include "io/strict_json.hpp"

#include <set>
#include <vector>

#include "peftkit/error.hpp"
#include "peftkit/json_limits.hpp"

namespace peftkit::io {

nlohmann::json parse_strict_json(std::string_view text, int max_depth, const std::string& where) {
  check_json_nesting(text, max_depth, where);
  // One set of keys per open object; arrays hold none (an empty placeholder keeps the levels).
  std::vector<std::set<std::string>> open;
  std::vector<std::string> path;
  std::string duplicate;
  using Event = nlohmann::json::parse_event_t;
  auto check = [&](int, Event event, nlohmann::json& parsed) {
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        open.emplace_back();
        break;
      case Event::object_end:
      case Event::array_end:
        if (!open.empty()) open.pop_back();
        break;
      case Event::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, check);
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": not valid JSON (" + e.what() + ")");
  }
  if (!duplicate.empty())
    throw Error(where + ": the key '" + duplicate +
                "' appears twice in one object; which value counts would be "
                "a guess, so the file is refused");
  return json;
}

}  // namespace peftkit::io

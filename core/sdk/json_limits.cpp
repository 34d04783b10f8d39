#include "peftkit/json_limits.hpp"

#include "peftkit/error.hpp"

namespace peftkit {

void check_json_nesting(std::string_view text, int max_depth, const std::string& where) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;  // the escaped character cannot end the string
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        throw Error(where + ": JSON nests deeper than " + std::to_string(max_depth) +
                    " levels (at character " + std::to_string(i) +
                    "); peftkit refuses such input before parsing it");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

}  // namespace peftkit

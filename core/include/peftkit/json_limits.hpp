// json_limits.hpp: bounds checked on JSON text before it is parsed, so that a hostile file cannot
// make a parser allocate without limit (every level of [[[[ ... is a container) or recurse.
//
//   peftkit::check_json_nesting(line, 32, "data.jsonl:7");   // throws peftkit::Error if deeper
#pragma once

#include <string>
#include <string_view>

namespace peftkit {

// Throws peftkit::Error naming `where` when arrays and objects in `text` nest deeper than
// `max_depth` levels (a top-level object is level 1). Strings are skipped, escapes included; the
// scan is linear and allocates nothing. Malformed JSON is left to the parser.
void check_json_nesting(std::string_view text, int max_depth, const std::string& where);

}  // namespace peftkit

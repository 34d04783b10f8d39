// strict_json.hpp (internal): JSON from files peftkit does not trust (safetensors headers, HF
// adapter_config.json), parsed with the nesting bounded before parsing and every object checked
// for a key named twice, at every level (nlohmann keeps the last one silently).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace peftkit::io {

// Throws peftkit::Error naming `where` on invalid JSON, nesting deeper than `max_depth`, or a
// duplicated key (named with the object's path).
nlohmann::json parse_strict_json(std::string_view text, int max_depth, const std::string& where);

}  // namespace peftkit::io

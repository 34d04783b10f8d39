// sites.hpp: choosing model sites by name, the way every PEFT method and quantizer does.
//
// A recipe names sites by the end of their checkpoint name: "att.key" selects "blocks.{i}.att.key"
// in every layer, "key" selects att.key and ffn.key. A pattern matches a whole trailing part of the
// name (HF PEFT's target_modules rule): "key" matches "blocks.0.att.key" but "ey" matches nothing.
//
//   .add_string_list("targets", peftkit::default_linear_targets(), "adapted sites")
//   for (const auto& site : model.linear_sites())
//     if (peftkit::site_matches_any(site.name, targets)) ...
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace peftkit {

// Whether `site` is `pattern` or ends with "." + pattern.
inline bool site_matches(std::string_view site, std::string_view pattern) {
  if (pattern.empty() || site.size() < pattern.size()) return false;
  if (site.substr(site.size() - pattern.size()) != pattern) return false;
  return site.size() == pattern.size() || site[site.size() - pattern.size() - 1] == '.';
}

inline bool site_matches_any(std::string_view site, const std::vector<std::string>& patterns) {
  for (const auto& pattern : patterns)
    if (site_matches(site, pattern)) return true;
  return false;
}

// The linear sites adapted (and quantized) by default: every projection of time-mix and
// channel-mix whose weight is a full matrix, as RWKV-PEFT's LoRA targets them. RWKV-6 (x060) also
// has att.gate and ffn.receptance; RWKV-7 models have no such sites, so those match nothing there.
inline std::vector<std::string> default_linear_targets() {
  return {"att.receptance", "att.key", "att.value",      "att.gate",
          "att.output",     "ffn.key", "ffn.receptance", "ffn.value"};
}

}  // namespace peftkit

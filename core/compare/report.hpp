// report.hpp (host-internal): the report of `peftkit compare`, rendered from report.json's numbers
// alone: report.md and a self-contained report.html (inline CSS and SVG charts, no script, no
// external resource), readable on a phone.
//
// report.json: {"variants": [{"name": "base", "kind": "base", "eval": {...}, "generations": [...]},
//               {"name": "lora", "kind": "run", "methods": [...], "trainable_parameters": N, ...,
//                "curves": {"train": [[tokens, loss], ...], "eval": [[tokens, loss], ...]}}, ...],
//                ...}
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace peftkit::compare {

std::string report_markdown(const nlohmann::json& report);
std::string report_html(const nlohmann::json& report);

// The columns of the table, for tests and both renderers: key in a variant, and whether smaller
// is better.
struct ReportColumn {
  std::string title;
  std::string key;  // "eval.loss", "trainable_parameters", ...
  bool lower_is_better;
};
const std::vector<ReportColumn>& report_columns();

}  // namespace peftkit::compare

#include "compare/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <limits>
#include <optional>
#include <sstream>

namespace peftkit::compare {
namespace {

using nlohmann::json;

// Colour-blind-safe palette (Okabe-Ito), one colour per run in order.
const char* const kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                               "#E69F00", "#56B4E9", "#000000", "#F0E442"};
const char* color_of(size_t run) { return kColors[run % (sizeof kColors / sizeof kColors[0])]; }

std::string escape_html(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A value at a dotted key of a variant ("eval.loss"); nullopt when absent or null.
std::optional<double> value_at(const json& variant, const std::string& key) {
  const json* node = &variant;
  std::string_view rest = key;
  while (true) {
    const size_t dot = rest.find('.');
    const std::string part(rest.substr(0, dot));
    if (!node->is_object() || !node->contains(part)) return std::nullopt;
    node = &(*node)[part];
    if (dot == std::string_view::npos) break;
    rest.remove_prefix(dot + 1);
  }
  if (!node->is_number()) return std::nullopt;
  return node->get<double>();
}

std::string fixed(double x, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, x);
  return buffer;
}

std::string bytes_text(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return fixed(bytes, unit == 0 ? 0 : bytes < 10 ? 2 : 1) + " " + units[unit];
}

// 1.5K, 20K, 3.25M: three significant digits at most, no trailing zeros.
std::string count_text(double n) {
  const char* suffix = "";
  if (std::abs(n) >= 1e9)
    n /= 1e9, suffix = "B";
  else if (std::abs(n) >= 1e6)
    n /= 1e6, suffix = "M";
  else if (std::abs(n) >= 1e3)
    n /= 1e3, suffix = "K";
  std::string text = fixed(n, std::abs(n) >= 100 ? 0 : std::abs(n) >= 10 ? 1 : 2);
  if (text.find('.') != std::string::npos) {
    while (text.back() == '0') text.pop_back();
    if (text.back() == '.') text.pop_back();
  }
  if (text == "-0") text = "0";
  return text + suffix;
}

std::string seconds_text(double s) {
  if (s < 60) return fixed(s, s < 10 ? 2 : 1) + " s";
  const auto total = static_cast<int64_t>(std::llround(s));
  char buffer[32];
  if (total >= 3600)
    std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", static_cast<long long>(total / 3600),
                  static_cast<long long>(total / 60 % 60));
  else
    std::snprintf(buffer, sizeof buffer, "%lldm%02llds", static_cast<long long>(total / 60),
                  static_cast<long long>(total % 60));
  return buffer;
}

// The cell text of a column for a variant ("" when the variant has no such number).
std::string cell_text(const json& variant, const ReportColumn& column) {
  if (column.key == "methods") {
    if (!variant.contains("methods")) return "(base model)";
    std::string out;
    for (const auto& m : variant["methods"])
      out += (out.empty() ? "" : " + ") + m.get<std::string>();
    return out;
  }
  const auto v = value_at(variant, column.key);
  if (column.key == "peak_memory_bytes") {
    if (!v) return "";
    const auto reserved = value_at(variant, "peak_gpu_reserved_bytes");
    if (value_at(variant, "peak_gpu_allocated_bytes"))
      return "GPU " + bytes_text(*v) + (reserved ? " (device " + bytes_text(*reserved) + ")" : "");
    return "RSS " + bytes_text(*v);
  }
  if (!v) return "";
  if (column.key == "trainable_parameters") return count_text(*v);
  if (column.key == "adapter_bytes") return bytes_text(*v);
  if (column.key == "tokens_per_s") return fixed(*v, 0);
  if (column.key == "wall_seconds") return seconds_text(*v);
  if (column.key == "eval.accuracy") return fixed(100 * *v, 2) + "%";
  if (column.key == "eval.perplexity") return fixed(*v, 3);
  return fixed(*v, 4);
}

// Per column, whether each variant holds the best value among the runs (never the base); ties
// are all marked.
std::vector<std::vector<bool>> best_cells(const json& variants) {
  std::vector<std::vector<bool>> best;
  for (const auto& column : report_columns()) {
    std::optional<double> best_value;
    for (const auto& v : variants) {
      if (v.value("kind", "") != "run" || column.key == "methods") continue;
      const auto x = value_at(v, column.key);
      if (x && std::isfinite(*x) &&
          (!best_value || (column.lower_is_better ? *x < *best_value : *x > *best_value)))
        best_value = x;
    }
    std::vector<bool> marks;
    for (const auto& v : variants) {
      const auto x = value_at(v, column.key);
      marks.push_back(best_value && v.value("kind", "") == "run" && column.key != "methods" && x &&
                      *x == *best_value);
    }
    best.push_back(marks);
  }
  return best;
}

// ---- SVG charts ----

struct Axis {
  double lo, hi;
  bool log;
  double map(double x, double from, double to) const {
    const double a = log ? std::log10(lo) : lo, b = log ? std::log10(hi) : hi,
                 v = log ? std::log10(x) : x;
    return from + (to - from) * (b > a ? (v - a) / (b - a) : 0.5);
  }
};

// Axis ends with some room, and tick values at 1, 2, 5 x 10^k (powers of ten on a log axis).
Axis make_axis(double lo, double hi, bool log) {
  if (log) {
    lo = std::pow(10, std::floor(std::log10(std::max(lo, 1e-12))));
    hi = std::pow(10, std::ceil(std::log10(std::max(hi, 1e-12))));
    if (hi <= lo) hi = lo * 10;
    return {lo, hi, true};
  }
  if (hi <= lo) {
    lo -= 0.5;
    hi += 0.5;
  }
  const double pad = 0.05 * (hi - lo);
  return {lo >= 0 && lo - pad < 0 ? 0.0 : lo - pad, hi + pad, false};
}

std::vector<double> ticks(const Axis& axis) {
  std::vector<double> out;
  if (axis.log) {
    // Powers of ten; with two decades or fewer, also 2 and 5 times them.
    const bool narrow = axis.hi / axis.lo <= 100.5;
    for (double t = axis.lo; t <= axis.hi * 1.0001; t *= 10)
      for (double m : {1.0, 2.0, 5.0})
        if ((m == 1.0 || narrow) && m * t <= axis.hi * 1.0001) out.push_back(m * t);
    return out;
  }
  const double raw = (axis.hi - axis.lo) / 5;
  const double magnitude = std::pow(10, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  for (double t = std::ceil(axis.lo / step) * step; t <= axis.hi + 1e-9 * step; t += step)
    out.push_back(std::abs(t) < 1e-9 * step ? 0.0 : t);
  return out;
}

std::string tick_text(double t, bool count) {
  if (count) return count_text(t);
  std::ostringstream out;
  out << std::setprecision(4) << t;
  return out.str();
}

struct ChartSeries {
  std::string run, color;
  std::vector<std::pair<double, double>> solid;   // drawn as a thin line
  std::vector<std::pair<double, double>> dashed;  // drawn as a dashed line with dots
  std::vector<std::pair<double, double>> points;  // dots with the run's name
};

// A narrow canvas with large type: scaled to a phone's width, the text stays readable.
constexpr double kWidth = 600, kPlotLeft = 84, kPlotRight = 564, kPlotTop = 44, kPlotBottom = 330;
constexpr int kLegendColumns = 3;

std::string chart_svg(const std::string& id, const std::string& title, const std::string& x_label,
                      const std::string& y_label, const std::vector<ChartSeries>& series,
                      bool log_x, std::optional<double> reference,
                      const std::string& reference_label,
                      const std::vector<std::pair<std::string, std::string>>& style_legend) {
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  auto extend = [&](const std::vector<std::pair<double, double>>& pts) {
    for (auto [x, y] : pts) {
      if (!std::isfinite(x) || !std::isfinite(y) || (log_x && x <= 0)) continue;
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y);
      y_hi = std::max(y_hi, y);
    }
  };
  for (const auto& s : series) {
    extend(s.solid);
    extend(s.dashed);
    extend(s.points);
  }
  if (reference && std::isfinite(*reference)) {
    y_lo = std::min(y_lo, *reference);
    y_hi = std::max(y_hi, *reference);
  }
  if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  const Axis x_axis = make_axis(x_lo, x_hi, log_x), y_axis = make_axis(y_lo, y_hi, false);
  const size_t legend_rows =
      (series.size() + style_legend.size() + kLegendColumns - 1) / kLegendColumns;
  const double height = kPlotBottom + 70 + 30 * static_cast<double>(legend_rows);
  auto X = [&](double x) { return x_axis.map(x, kPlotLeft, kPlotRight); };
  auto Y = [&](double y) { return y_axis.map(y, kPlotBottom, kPlotTop); };
  auto polyline = [&](const std::vector<std::pair<double, double>>& pts) {
    std::string out;
    for (auto [x, y] : pts)
      if (std::isfinite(x) && std::isfinite(y) && (!log_x || x > 0))
        out += fixed(X(x), 1) + "," + fixed(Y(y), 1) + " ";
    return out;
  };
  std::ostringstream svg;
  svg << "<svg id=\"" << id << "\" class=\"chart\" viewBox=\"0 0 " << kWidth << " " << height
      << "\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"" << escape_html(title)
      << "\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n"
      << "<text x=\"" << kWidth / 2 << "\" y=\"28\" class=\"title\" text-anchor=\"middle\">"
      << escape_html(title) << "</text>\n";
  for (double t : ticks(x_axis)) {
    svg << "<line class=\"grid\" x1=\"" << fixed(X(t), 1) << "\" x2=\"" << fixed(X(t), 1)
        << "\" y1=\"" << kPlotTop << "\" y2=\"" << kPlotBottom << "\"/>"
        << "<text x=\"" << fixed(X(t), 1) << "\" y=\"" << kPlotBottom + 22
        << "\" text-anchor=\"middle\">" << tick_text(t, true) << "</text>\n";
  }
  for (double t : ticks(y_axis)) {
    svg << "<line class=\"grid\" x1=\"" << kPlotLeft << "\" x2=\"" << kPlotRight << "\" y1=\""
        << fixed(Y(t), 1) << "\" y2=\"" << fixed(Y(t), 1) << "\"/>"
        << "<text x=\"" << kPlotLeft - 6 << "\" y=\"" << fixed(Y(t) + 6, 1)
        << "\" text-anchor=\"end\">" << tick_text(t, false) << "</text>\n";
  }
  svg << "<rect class=\"frame\" x=\"" << kPlotLeft << "\" y=\"" << kPlotTop << "\" width=\""
      << kPlotRight - kPlotLeft << "\" height=\"" << kPlotBottom - kPlotTop << "\"/>\n"
      << "<text x=\"" << (kPlotLeft + kPlotRight) / 2 << "\" y=\"" << kPlotBottom + 48
      << "\" text-anchor=\"middle\" class=\"label\">" << escape_html(x_label) << "</text>\n"
      << "<text transform=\"translate(20 " << (kPlotTop + kPlotBottom) / 2
      << ") rotate(-90)\" text-anchor=\"middle\" class=\"label\">" << escape_html(y_label)
      << "</text>\n";
  if (reference && std::isfinite(*reference))
    svg << "<g class=\"reference\"><line x1=\"" << kPlotLeft << "\" x2=\"" << kPlotRight
        << "\" y1=\"" << fixed(Y(*reference), 1) << "\" y2=\"" << fixed(Y(*reference), 1)
        << "\" stroke=\"#777\" stroke-dasharray=\"2 4\"/><text x=\"" << kPlotRight - 4 << "\" y=\""
        << fixed(Y(*reference) - 5, 1) << "\" text-anchor=\"end\" fill=\"#555\">"
        << escape_html(reference_label) << "</text></g>\n";
  for (const auto& s : series) {
    svg << "<g class=\"series\" data-run=\"" << escape_html(s.run) << "\">";
    if (!s.solid.empty())
      svg << "<polyline fill=\"none\" stroke=\"" << s.color
          << "\" stroke-width=\"1.5\" stroke-opacity=\"0.75\" points=\"" << polyline(s.solid)
          << "\"/>";
    if (!s.dashed.empty()) {
      svg << "<polyline fill=\"none\" stroke=\"" << s.color
          << "\" stroke-width=\"2.5\" stroke-dasharray=\"7 4\" points=\"" << polyline(s.dashed)
          << "\"/>";
      for (auto [x, y] : s.dashed)
        if (std::isfinite(y))
          svg << "<circle cx=\"" << fixed(X(x), 1) << "\" cy=\"" << fixed(Y(y), 1)
              << "\" r=\"3.5\" fill=\"" << s.color << "\"/>";
    }
    for (auto [x, y] : s.points)
      if (std::isfinite(y) && (!log_x || x > 0))
        svg << "<circle cx=\"" << fixed(X(x), 1) << "\" cy=\"" << fixed(Y(y), 1)
            << "\" r=\"6\" fill=\"" << s.color << "\"/><text x=\"" << fixed(X(x) + 9, 1)
            << "\" y=\"" << fixed(Y(y) - 8, 1) << "\" fill=\"" << s.color << "\">"
            << escape_html(s.run) << "</text>";
    svg << "</g>\n";
  }
  // Legend: one entry per run, then what the line styles mean, three to a row.
  svg << "<g class=\"legend\">";
  size_t slot = 0;
  auto legend_entry = [&](const std::string& swatch, const std::string& label) {
    const double x = 16 + 195 * static_cast<double>(slot % kLegendColumns),
                 y = kPlotBottom + 72 + 30 * static_cast<double>(slot / kLegendColumns);
    svg << "<g transform=\"translate(" << x << " " << y << ")\">" << swatch
        << "<text x=\"30\" y=\"5\">"
        << escape_html(label.size() > 14 ? label.substr(0, 13) + "…" : label) << "</text></g>";
    ++slot;
  };
  for (const auto& s : series)
    legend_entry("<rect x=\"0\" y=\"-6\" width=\"24\" height=\"12\" fill=\"" + s.color + "\"/>",
                 s.run);
  for (const auto& [swatch, label] : style_legend) legend_entry(swatch, label);
  svg << "</g>\n</svg>\n";
  return svg.str();
}

std::vector<std::pair<double, double>> curve(const json& points) {
  std::vector<std::pair<double, double>> out;
  for (const auto& p : points)
    if (p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_number())
      out.emplace_back(p[0].get<double>(), p[1].get<double>());
  return out;
}

const json* base_of(const json& report) {
  for (const auto& v : report["variants"])
    if (v.value("kind", "") == "base") return &v;
  return nullptr;
}

}  // namespace

const std::vector<ReportColumn>& report_columns() {
  static const std::vector<ReportColumn> columns = {
      {"method(s)", "methods", true},
      {"trainable params", "trainable_parameters", true},
      {"adapter file", "adapter_bytes", true},
      {"final train loss", "final_train_loss", true},
      {"eval loss", "eval.loss", true},
      {"perplexity", "eval.perplexity", true},
      {"token accuracy", "eval.accuracy", false},
      {"train tokens/s", "tokens_per_s", false},
      {"peak memory", "peak_memory_bytes", true},
      {"wall time", "wall_seconds", true},
  };
  return columns;
}

std::string report_markdown(const json& report) {
  std::ostringstream md;
  const json& variants = report["variants"];
  md << "# peftkit compare: " << report.value("title", "") << "\n\n"
     << "Base model `" << report.value("model", "") << "`, data `" << report.value("data", "")
     << "`, " << report.value("budget_text", "") << ", on " << report.value("device", "")
     << ". Created " << report.value("created", "") << ".\n\n"
     << "Evaluation: " << report.value("eval_text", "")
     << ". ★ marks the best run in each column.\n\n";
  md << "| run |";
  for (const auto& c : report_columns()) md << " " << c.title << " |";
  md << "\n|---|";
  for (size_t i = 0; i < report_columns().size(); ++i) md << "---:|";
  md << "\n";
  const auto best = best_cells(variants);
  for (size_t i = 0; i < variants.size(); ++i) {
    md << "| " << variants[i].value("name", "") << " |";
    for (size_t c = 0; c < report_columns().size(); ++c) {
      const std::string text = cell_text(variants[i], report_columns()[c]);
      md << " " << text << (best[c][i] && !text.empty() ? " ★" : "") << " |";
    }
    md << "\n";
  }
  md << "\nCharts: see report.html (train and eval loss against tokens seen; eval loss against "
        "trainable "
        "parameters).\n";
  const json& prompts = report["prompts"];
  if (!prompts.empty()) md << "\n## Sample generations (greedy)\n";
  for (size_t p = 0; p < prompts.size(); ++p) {
    md << "\n### Prompt " << p + 1 << "\n\n```\n" << prompts[p].get<std::string>() << "\n```\n\n";
    for (const auto& v : variants) {
      const json& generations = v["generations"];
      md << "- **" << v.value("name", "") << "**: "
         << (p < generations.size() ? json(generations[p].get<std::string>()).dump()
                                    : std::string("(none)"))
         << "\n";
    }
  }
  return md.str();
}

std::string report_html(const json& report) {
  const json& variants = report["variants"];
  const json* base = base_of(report);
  const std::optional<double> base_loss = base ? value_at(*base, "eval.loss") : std::nullopt;
  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, "
          "initial-scale=1\">\n<title>peftkit compare: "
       << escape_html(report.value("title", ""))
       << "</title>\n<style>\n"
          "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 "
          "auto;max-width:1000px;"
          "padding:12px;color:#222;line-height:1.4}\n"
          "h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}\n"
          ".meta{color:#555}.scroll{overflow-x:auto}\n"
          "table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px "
          "8px;vertical-align:top}"
          "th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}\n"
          "td.best{background:#e3f4e8;font-weight:600}tr.base td{color:#555;font-style:italic}\n"
          ".swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-"
          "1px}\n"
          "svg.chart{width:100%;height:auto;max-width:680px;display:block;margin:12px "
          "0;font-size:18px}\n"
          "svg .grid{stroke:#e4e4e4}svg .frame{fill:none;stroke:#888}svg "
          ".title{font-size:21px;font-weight:600}\n"
          "svg .label{font-size:19px}\n"
          "pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:13px}\n"
          "</style></head><body>\n";
  html << "<h1>peftkit compare: " << escape_html(report.value("title", ""))
       << "</h1>\n<p class=\"meta\">Base model <code>" << escape_html(report.value("model", ""))
       << "</code>, data <code>" << escape_html(report.value("data", "")) << "</code>, "
       << escape_html(report.value("budget_text", "")) << ", on "
       << escape_html(report.value("device", "")) << ". Created "
       << escape_html(report.value("created", ""))
       << ".<br>Evaluation: " << escape_html(report.value("eval_text", ""))
       << ". The best run in each column is highlighted.</p>\n";

  // Table.
  const auto best = best_cells(variants);
  html << "<div class=\"scroll\"><table id=\"results\"><thead><tr><th>run</th>";
  for (const auto& c : report_columns()) html << "<th>" << escape_html(c.title) << "</th>";
  html << "</tr></thead><tbody>\n";
  size_t run_index = 0;
  for (size_t i = 0; i < variants.size(); ++i) {
    const bool is_base = variants[i].value("kind", "") == "base";
    html << "<tr" << (is_base ? " class=\"base\"" : "") << "><td>";
    if (!is_base)
      html << "<span class=\"swatch\" style=\"background:" << color_of(run_index++) << "\"></span>";
    html << escape_html(variants[i].value("name", "")) << "</td>";
    for (size_t c = 0; c < report_columns().size(); ++c) {
      const bool is_best = best[c][i];
      html << "<td class=\"" << (c == 0 ? "" : "num") << (is_best ? " best" : "") << "\">"
           << escape_html(cell_text(variants[i], report_columns()[c])) << "</td>";
    }
    html << "</tr>\n";
  }
  html << "</tbody></table></div>\n";

  // Charts.
  std::vector<ChartSeries> losses, by_size;
  run_index = 0;
  for (const auto& v : variants) {
    if (v.value("kind", "") != "run") continue;
    const std::string color = color_of(run_index++);
    ChartSeries s{v.value("name", ""), color, {}, {}, {}};
    if (v.contains("curves")) {
      s.solid = curve(v["curves"]["train"]);
      s.dashed = curve(v["curves"]["eval"]);
    }
    losses.push_back(s);
    ChartSeries p{v.value("name", ""), color, {}, {}, {}};
    const auto params = value_at(v, "trainable_parameters");
    const auto loss = value_at(v, "eval.loss");
    if (params && loss) p.points.emplace_back(*params, *loss);
    by_size.push_back(p);
  }
  html << "<h2>Loss during training</h2>\n"
       << chart_svg(
              "loss-chart", "Train and eval loss against tokens seen",
              "tokens seen (counted targets)", "loss", losses, false, base_loss, "base eval loss",
              {{"<line x1=\"0\" x2=\"24\" y1=\"0\" y2=\"0\" stroke=\"#444\" stroke-width=\"1.5\"/>",
                "train loss"},
               {"<line x1=\"0\" x2=\"24\" y1=\"0\" y2=\"0\" stroke=\"#444\" stroke-width=\"2.5\" "
                "stroke-dasharray=\"7 4\"/>"
                "<circle cx=\"12\" cy=\"0\" r=\"3.5\" fill=\"#444\"/>",
                "eval loss"}});
  html << "<h2>Eval loss against trainable parameters</h2>\n"
       << chart_svg("size-chart", "Final eval loss against trainable parameters",
                    "trainable parameters (log scale)", "eval loss", by_size, true, base_loss,
                    "base", {});

  // Generations.
  const json& prompts = report["prompts"];
  if (!prompts.empty()) html << "<h2>Sample generations (greedy)</h2>\n";
  for (size_t p = 0; p < prompts.size(); ++p) {
    html << "<h3>Prompt " << p + 1 << "</h3>\n<pre>" << escape_html(prompts[p].get<std::string>())
         << "</pre>\n<div class=\"scroll\"><table class=\"generations\"><tbody>\n";
    for (const auto& v : variants) {
      const json& generations = v["generations"];
      html << "<tr><th>" << escape_html(v.value("name", "")) << "</th><td><pre>"
           << escape_html(p < generations.size() ? generations[p].get<std::string>()
                                                 : std::string())
           << "</pre></td></tr>\n";
    }
    html << "</tbody></table></div>\n";
  }
  html
      << "<p class=\"meta\">Made by peftkit compare. Final train loss: the mean loss of the last "
         "tenth of the "
         "steps. Eval: every variant on the same held-out samples with the same code as training's "
         "evaluation. Peak memory: CPU runs the resident set of the training process; GPU runs the "
         "caching "
         "allocator's peak (device: memory it reserved).</p>\n</body></html>\n";
  return html.str();
}

}  // namespace peftkit::compare

// peftkit compare COMPARE.toml: trains several variants of one job, one after another, each a
// normal training run in its own folder (a child `peftkit` process, so that its peak memory is its
// own); evaluates the base and every run on the same held-out samples; generates from fixed
// prompts; and writes report.json, report.md and report.html. Re-running skips finished runs and
// resumes an interrupted one.
#include <ATen/ATen.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.hpp"
#include "compare/compare_file.hpp"
#include "compare/report.hpp"
#include "dist/launcher.hpp"
#include "eval/data_split.hpp"
#include "eval/variants.hpp"
#include "generate/generation.hpp"
#include "host/device.hpp"
#include "host/loaded_model.hpp"
#include "host/plugin_registry.hpp"
#include "io/mapped_file.hpp"
#include "model/config.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"
#include "tokenizer/world_tokenizer.hpp"
#include "train/trainer.hpp"

namespace peftkit::cli {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The recipe text without its comment lines (which name where the file was read from).
std::string recipe_settings(const std::string& formatted) {
  std::istringstream in(formatted);
  std::string out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] != '#') out += line + "\n";
  return out;
}

// A run's own small files (recipe.toml, summary.json).
std::string read_text(const fs::path& path) {
  return io::read_small_file(path, 16 << 20, "run file");
}

json read_json(const fs::path& path) {
  const json parsed = json::parse(read_text(path), nullptr, false);
  if (parsed.is_discarded())
    throw Error(path.string() + ": not valid JSON (written by an interrupted run?)");
  return parsed;
}

// A finished run has its summary and was trained with exactly these settings.
bool finished(const compare::CompareRun& run, const fs::path& folder) {
  if (!fs::exists(folder / "summary.json")) return false;
  if (recipe_settings(read_text(folder / "recipe.toml")) !=
      recipe_settings(host::format_recipe(run.recipe)))
    throw Error(folder.string() + " holds a finished run '" + run.name +
                "' trained with other settings than the "
                "compare file now gives it; delete that folder to train it again, or choose "
                "another [compare] output");
  const json summary = read_json(folder / "summary.json");
  return summary.value("steps", int64_t{-1}) == run.steps;
}

json number(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

json eval_json(const eval::EvalResult& r) {
  return {{"loss", number(r.loss())},
          {"perplexity", number(r.perplexity())},
          {"accuracy", number(r.accuracy())},
          {"tokens", r.total.tokens},
          {"documents", r.documents},
          {"samples", r.samples},
          {"seconds", r.seconds}};
}

// The run's numbers from its own files: summary.json and metrics.jsonl.
json run_json(const compare::CompareRun& run, const fs::path& folder) {
  const json summary = read_json(folder / "summary.json");
  json out = {{"name", run.name}, {"kind", "run"}, {"folder", folder.string()}};
  for (const char* key :
       {"methods", "trainable_parameters", "adapter_file", "adapter_bytes", "steps", "tokens",
        "skipped_steps", "tokens_per_s", "train_seconds", "wall_seconds", "peak_rss_bytes",
        "peak_gpu_allocated_bytes", "peak_gpu_reserved_bytes"})
    out[key] = summary.contains(key) ? summary[key] : json(nullptr);
  out["peak_memory_bytes"] = summary.value("peak_gpu_allocated_bytes", json(nullptr)).is_null()
                                 ? out["peak_rss_bytes"]
                                 : out["peak_gpu_allocated_bytes"];
  json train = json::array(), eval = json::array();
  std::vector<double> losses;
  std::ifstream in(folder / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json m = json::parse(line, nullptr, false);
    if (m.is_discarded()) continue;
    const json tokens = m.value("tokens", json(0));
    if (m.contains("loss") && m["loss"].is_number()) {
      train.push_back({tokens, m["loss"]});
      losses.push_back(m["loss"].get<double>());
    }
    if (m.contains("eval_loss") && m["eval_loss"].is_number())
      eval.push_back({tokens, m["eval_loss"]});
  }
  out["curves"] = {{"train", train}, {"eval", eval}};
  // The mean of the last tenth of the steps: one step's loss is noisy.
  const size_t last = std::max<size_t>(1, (losses.size() + 9) / 10);
  double sum = 0;
  for (size_t i = losses.size() - std::min(last, losses.size()); i < losses.size(); ++i)
    sum += losses[i];
  out["final_train_loss"] = losses.empty()
                                ? json(nullptr)
                                : json(sum / static_cast<double>(std::min(last, losses.size())));
  out["final_train_loss_steps"] = std::min(last, losses.size());
  return out;
}

std::string now_text() {
  const std::time_t t = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buffer[64];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M UTC", &utc);
  return buffer;
}

}  // namespace

Command compare_command() {
  Command command;
  command.name = "compare";
  command.usage = "peftkit compare COMPARE.toml";
  command.summary =
      "train several variants of one job under one budget, evaluate them, write a report";
  command.describe = [](po::options_description& options,
                        po::positional_options_description& positionals) {
    options.add_options()("file", po::value<std::string>()->required(), "the compare file (TOML)")(
        "train-run", po::value<std::string>(),
        "(used by compare itself) train only this run, in this process");
    positionals.add("file", 1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const fs::path file = vm["file"].as<std::string>();
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const compare::CompareFile compare = compare::load_compare_file(file, registry);
    const std::string resume_command = "peftkit compare " + file.string();

    if (vm.count("train-run")) {
      const std::string name = vm["train-run"].as<std::string>();
      for (const auto& run : compare.runs)
        if (run.name == name)
          return train::Trainer(run.recipe, registry, train::TrainFlags{false, resume_command})
              .run();
      throw Error("--train-run: " + file.string() + " has no run '" + name + "'");
    }

    // The prompts are checked against the base before anything trains, not after the last run.
    std::unique_ptr<tokenizer::WorldTokenizer> tokenizer =
        tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
    const fs::path base_model = compare.base.resolve_path(compare.base.model.get_string("path"));
    const int64_t vocab =
        model::ModelConfig::from_tensors(read_tensor_file(base_model).tensors, base_model.string())
            .vocab;
    for (size_t p = 0; p < compare.prompts.size(); ++p) {
      const std::string where = file.string() + ": [generation] prompts[" + std::to_string(p) + "]";
      const std::vector<int32_t> ids = tokenizer->encode(compare.prompts[p]);
      if (ids.empty()) throw Error(where + " is empty");
      for (int32_t id : ids)
        if (id >= vocab)
          throw Error(where + " has token " + std::to_string(id) +
                      ", outside the base model's vocabulary of " + std::to_string(vocab));
    }
    fs::create_directories(compare.output_dir);
    for (const auto& run : compare.runs) {
      const fs::path folder = compare::run_folder(compare, run.name);
      if (finished(run, folder)) {
        log::info("run '" + run.name + "': finished earlier (" + folder.string() + "), skipped");
        continue;
      }
      log::info("run '" + run.name + "': " + std::to_string(run.steps) + " steps in " +
                folder.string());
      // In a child process of its own (its peak memory is its own), which SIGINT and SIGTERM
      // reach through this one (it checkpoints and stops).
      std::vector<std::string> arguments = {"compare", file.string(), "--train-run",
                                            run.name,  "--log-level", common.log_level};
      for (const auto& dir : common.plugin_dirs)
        arguments.insert(arguments.end(), {"--plugin-dir", dir.string()});
      const int code =
          dist::run_processes(dist::own_program(), arguments, {{}}, std::chrono::seconds(0),
                              [&](int) { return "run '" + run.name + "'"; });
      if (code == train::kExitInterrupted || code == 128 + SIGINT || code == 128 + SIGTERM) {
        std::cerr << "compare interrupted during run '" << run.name
                  << "'; finished runs are kept. Continue with: " << resume_command << "\n";
        return train::kExitInterrupted;
      }
      if (code != 0)
        throw Error("run '" + run.name + "' failed (exit code " + std::to_string(code) +
                    "); its log is " + (folder / "peftkit.log").string());
      if (!fs::exists(folder / "summary.json"))
        throw Error("run '" + run.name + "' ended without " + (folder / "summary.json").string());
    }

    // Every variant on the same held-out samples, then greedy generations from the same prompts.
    const at::Device device = host::resolve_device(compare.base.run.get_string("device"));
    const std::string precision =
        host::resolve_precision(compare.base.train.get_string("precision"), device);
    model::ModelOptions options{precision == "bf16" ? at::kBFloat16 : at::kFloat, device};
    at::globalContext().setAllowTF32CuBLAS(precision == "tf32");
    const eval::EvalSettings settings{compare.base.train.get_int("micro_bsz"),
                                      compare.base.train.get_int("ctx_len"),
                                      compare.base.train.get_int("chunk_ctx")};
    std::vector<eval::ModelVariant> variants = {{"base", {}}};
    for (const auto& run : compare.runs) {
      const fs::path folder = compare::run_folder(compare, run.name);
      const std::string adapter_file =
          read_json(folder / "summary.json").value("adapter_file", "rwkv-0.pth");
      variants.push_back(
          {run.name,
           {host::read_adapter(folder / adapter_file, folder / "recipe.toml", {}, registry)}});
    }
    generate::GenerationSettings greedy;
    greedy.sampling.temperature = 0;
    greedy.sampling.presence_penalty = 0;
    greedy.sampling.frequency_penalty = 0;
    greedy.max_tokens = compare.max_tokens;
    greedy.stop_at_blank_line = true;
    eval::SampleRange eval_range;
    json report = {
        {"title", file.filename().string()},
        {"compare_file", fs::absolute(file).lexically_normal().string()},
        {"created", now_text()},
        {"model", compare.base.resolve_path(compare.base.model.get_string("path")).string()},
        {"data", compare.base.resolve_path(compare.base.data.get_string("path")).string()},
        {"format", compare.base.data.get_string("format")},
        {"device", options.device.str()},
        {"precision", precision},
        {"budget", {{"steps", compare.budget_steps}, {"tokens", compare.budget_tokens}}},
        {"budget_text", compare.budget_steps > 0
                            ? std::to_string(compare.budget_steps) + " optimizer steps per run"
                            : std::to_string(compare.budget_tokens) + " positions per run"},
        {"prompts", compare.prompts},
        {"variants", json::array()}};
    const eval::OpenEvalData open_eval =
        [&](int64_t vocab) -> std::pair<std::shared_ptr<Dataset>, eval::SampleRange> {
      eval::DataSplit split = eval::open_data_split(compare.base, registry, vocab, tokenizer.get());
      eval_range = split.eval_range;
      return {split.eval, split.eval_range};
    };
    std::vector<json> generations(variants.size(), json::array());
    const std::vector<eval::VariantEvaluation> evaluations = eval::evaluate_variants(
        base_model, variants, registry, options, open_eval, settings, false,
        eval::terminal_progress("evaluating"), [&](size_t v, model::RwkvModel& model) {
          for (const auto& prompt : compare.prompts) {
            model::ModelState state = model.initial_state(1);
            generations[v].push_back(generate::continue_text(model, *tokenizer, state,
                                                             tokenizer->encode(prompt), greedy));
          }
        });
    for (size_t v = 0; v < variants.size(); ++v) {
      // Variant 0 is the base, variant v the run v - 1.
      json entry =
          v == 0 ? json{{"name", "base"}, {"kind", "base"}}
                 : run_json(compare.runs[v - 1], compare::run_folder(compare, variants[v].name));
      entry["eval"] = eval_json(evaluations[v].result);
      entry["generations"] = generations[v];
      report["variants"].push_back(entry);
    }
    report["eval_text"] = std::to_string(eval_range.size()) + " held-out samples (" +
                          std::to_string(report["variants"][0]["eval"]["tokens"].get<int64_t>()) +
                          " counted tokens), ctx_len " + std::to_string(settings.ctx_len) + ", " +
                          precision;
    write_text_file(compare.output_dir / "report.json", report.dump(2) + "\n");
    write_text_file(compare.output_dir / "report.md", compare::report_markdown(report));
    write_text_file(compare.output_dir / "report.html", compare::report_html(report));
    std::cout << compare::report_markdown(report).substr(
                     0, compare::report_markdown(report).find("\nCharts:"))
              << "\n"
              << "report: " << (compare.output_dir / "report.html").string()
              << " (also report.md, report.json)\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

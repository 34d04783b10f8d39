// peftkit eval: loss, perplexity and token accuracy of a model (with adapters) on a data file, or
// the LAMBADA task; several variants side by side on the same batches.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.hpp"
#include "eval/data_split.hpp"
#include "eval/lambada.hpp"
#include "eval/variants.hpp"
#include "host/plugin_registry.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::cli {
namespace fs = std::filesystem;

namespace {

// A TOML basic string.
std::string toml_string(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7F) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04X", c);
      out += escape;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// The [data] of a recipe for the file, so that the dataset plugin's options are validated and
// reported exactly as in a recipe (with the --set that gave them).
host::Recipe data_recipe(const std::string& model, const std::string& data,
                         const std::string& format, int64_t ctx_len,
                         const std::vector<host::Override>& overrides,
                         const host::PluginRegistry& plugins) {
  const std::string text = "[model]\npath = " + toml_string(model) +
                           "\n[data]\nformat = " + toml_string(format) +
                           "\npath = " + toml_string(fs::absolute(data).string()) +
                           "\n[train]\nctx_len = " + std::to_string(ctx_len) + "\n";
  return host::parse_recipe(text, fs::path("--data"), overrides, plugins);
}

std::string number(double x, int digits) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(digits);
  out << x;
  return out.str();
}

nlohmann::json json_number(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) {
      // The first column (names) to the left, numbers to the right.
      const std::string pad(width[c] - cells[c].size(), ' ');
      std::cout << (c ? "  " : "") << (c ? pad + cells[c] : cells[c] + pad);
    }
    std::cout << "\n";
  };
  line(header);
  for (const auto& row : rows) line(row);
}

}  // namespace

Command eval_command() {
  Command command;
  command.name = "eval";
  command.takes_adapters = true;
  command.usage =
      "peftkit eval --model FILE [--adapter PATH | --lora PATH | --state FILE]... --data FILE "
      "[--format F] [--task lambada] [--compare-with base] [--json OUT] [options]";
  command.summary =
      "loss, perplexity and token accuracy on a data file (or LAMBADA), variants side by side";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("data", po::value<std::string>()->required(), "the data to evaluate on")(
        "format", po::value<std::string>()->default_value("jsonl"),
        "dataset plugin that reads --data (jsonl, binidx, numpy, or an installed third-party one); "
        "its options "
        "via --set data.<format>.KEY=VALUE")("task", po::value<std::string>()->default_value("lm"),
                                             "lm: the loss over the targets training counts; "
                                             "lambada: RWKV-LM's last-word task on a jsonl of "
                                             "{\"text\": ...} lines")(
        "ctx-len", po::value<int64_t>()->default_value(4096),
        "samples are cut at this many tokens, as in training "
        "(the window length of token streams)")(
        "chunk-ctx", po::value<int64_t>()->default_value(1024),
        "run samples longer than this in segments that carry the state (bounded memory; 0: whole "
        "samples)")("micro-bsz", po::value<int64_t>()->default_value(4), "samples per batch")(
        "seed", po::value<uint64_t>()->default_value(42),
        "sampling seed of datasets that draw windows")(
        "compare-with", po::value<std::string>(),
        "base: evaluate the base model too, and each adapter option as its own variant, side by "
        "side")("json", po::value<std::string>(), "also write every number to this JSON file");
    add_model_options(options, "fp32");
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const model::ModelOptions model_options = model_options_from(vm);
    const std::string task = vm["task"].as<std::string>();
    if (task != "lm" && task != "lambada")
      throw Error("--task: expected lm or lambada, found '" + task + "'");
    eval::EvalSettings settings{vm["micro-bsz"].as<int64_t>(), vm["ctx-len"].as<int64_t>(),
                                vm["chunk-ctx"].as<int64_t>()};
    if (settings.micro_bsz < 1)
      throw Error("--micro-bsz: expected at least 1, found " + std::to_string(settings.micro_bsz));
    if (settings.ctx_len < 1)
      throw Error("--ctx-len: expected at least 1, found " + std::to_string(settings.ctx_len));
    if (settings.chunk_ctx < 0)
      throw Error("--chunk-ctx: expected 0 or more, found " + std::to_string(settings.chunk_ctx));
    const std::string model = vm["model"].as<std::string>(), data = vm["data"].as<std::string>();
    const std::string format = vm["format"].as<std::string>();

    // --set data.* configures the dataset; every other --set, the adapters' recipes.
    std::vector<host::Override> data_overrides, adapter_overrides;
    for (auto& o : set_overrides(vm))
      (o.key_path[0] == "data" ? data_overrides : adapter_overrides).push_back(o);
    for (const auto& o : data_overrides)
      if (o.key_path.size() != 3 || o.key_path[1] != format)
        throw Error(o.text + ": eval takes the dataset's own options as data." + format +
                    ".KEY=VALUE");
    if (task == "lambada" && (!data_overrides.empty() || !vm["format"].defaulted()))
      throw Error(
          "--task lambada reads its own jsonl format; --format and --set data.* do not apply");

    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    if (task == "lm") {
      try {
        registry.find(PluginKind::kDataset, format);
      } catch (const Error& e) {
        throw Error(std::string("--format: ") + e.what());
      }
    }
    std::vector<host::SavedAdapter> adapters = adapters_from(vm, registry, adapter_overrides);
    std::vector<eval::ModelVariant> variants;
    if (vm.count("compare-with")) {
      if (vm["compare-with"].as<std::string>() != "base")
        throw Error("--compare-with: expected base, found '" +
                    vm["compare-with"].as<std::string>() + "'");
      if (adapters.empty())
        throw Error("--compare-with base: name the adapters to compare with the base");
      variants.push_back({"base", {}});
      for (auto& a : adapters) variants.push_back({a.description, {a}});
    } else {
      std::string name = adapters.empty() ? "base" : "";
      for (const auto& a : adapters) name += (name.empty() ? "" : " + ") + a.description;
      variants.push_back({name, adapters});
    }

    std::unique_ptr<tokenizer::WorldTokenizer> tokenizer;
    try {
      tokenizer = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
    } catch (const Error& e) {
      if (task == "lambada" || format == "jsonl") throw;
      log::warn(std::string("no tokenizer: ") + e.what());
    }
    std::string data_description;
    const eval::OpenEvalData open_data =
        [&](int64_t vocab) -> std::pair<std::shared_ptr<Dataset>, eval::SampleRange> {
      std::shared_ptr<Dataset> dataset;
      if (task == "lambada") {
        dataset = eval::open_lambada(data, *tokenizer, vocab);
        settings.ctx_len = eval::longest_sample(*dataset);  // never cut a document
      } else {
        host::Recipe recipe =
            data_recipe(model, data, format, settings.ctx_len, data_overrides, registry);
        dataset = eval::open_data_split(recipe, registry, vocab, tokenizer.get()).train;
      }
      if (dataset->size() == 0) throw Error("--data " + data + ": no samples to evaluate");
      data_description = dataset->describe();
      log::info("data " + data_description);
      return {dataset, {0, dataset->size()}};
    };
    const std::vector<eval::VariantEvaluation> results =
        eval::evaluate_variants(model, variants, registry, model_options, open_data, settings,
                                task == "lambada", eval::terminal_progress("eval"));

    nlohmann::json report = {{"model", model},
                             {"data", data},
                             {"format", task == "lambada" ? "lambada" : format},
                             {"task", task},
                             {"ctx_len", settings.ctx_len},
                             {"chunk_ctx", settings.chunk_ctx},
                             {"dtype", vm["dtype"].as<std::string>()},
                             {"device", model_options.device.str()}};
    std::vector<std::vector<std::string>> rows;
    for (const auto& [name, r] : results) {
      nlohmann::json entry = {{"name", name},
                              {"documents", r.documents},
                              {"samples", r.samples},
                              {"seconds", r.seconds},
                              {"tokens_per_s", r.tokens_per_second()}};
      if (task == "lambada") {
        const eval::LambadaScore score = eval::lambada_score(r);
        entry["accuracy"] = json_number(score.accuracy());
        entry["perplexity"] = json_number(score.perplexity());
        entry["correct"] = score.correct;
        entry["target_tokens"] = r.total.tokens;
        rows.push_back({name, number(score.accuracy(), 4), number(score.perplexity(), 3),
                        std::to_string(score.documents), number(r.tokens_per_second(), 0)});
      } else {
        entry["loss"] = json_number(r.loss());
        entry["perplexity"] = json_number(r.perplexity());
        entry["accuracy"] = json_number(r.accuracy());
        entry["tokens"] = r.total.tokens;
        rows.push_back({name, number(r.loss(), 4), number(r.perplexity(), 3),
                        number(r.accuracy(), 4), std::to_string(r.total.tokens),
                        std::to_string(r.documents), number(r.tokens_per_second(), 0)});
      }
      report["variants"].push_back(entry);
    }
    if (results.front().result.total.tokens == 0)
      throw Error("--data " + data +
                  ": no target token counts in any sample (every position is padding or masked)");
    std::cout << data_description << "\n";
    if (task == "lambada")
      print_table({"variant", "accuracy", "perplexity", "documents", "tokens/s"}, rows);
    else
      print_table({"variant", "loss", "perplexity", "accuracy", "tokens", "documents", "tokens/s"},
                  rows);
    if (vm.count("json")) write_text_file(vm["json"].as<std::string>(), report.dump(2) + "\n");
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

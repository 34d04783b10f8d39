// peftkit convert --from A --to B --input FILE --output PATH
// Reads every document with dataset plugin A and writes it with dataset plugin B's writer
// (SDK 2.2): jsonl, numpy, text, dummy, binidx ... into binidx, token-lines, or any plugin that
// writes. Documents are never truncated; the writer decides what it can store, and the host refuses
// to drop a loss mask silently.
#include <algorithm>
#include <iostream>
#include <limits>

#include "cli/command.hpp"
#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "host/recipe_toml.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::cli {
namespace {

// SDK minor version that brought DatasetPlugin::create_writer.
constexpr int kWriterApiMinor = 2;

std::string writers(const host::PluginRegistry& registry) {
  std::string names;
  for (const auto& [name, plugin] : registry.all<DatasetPlugin>(kWriterApiMinor))
    if (!plugin->writer_description().empty()) names += (names.empty() ? "" : ", ") + name;
  return names.empty() ? "none" : names;
}

// A plugin's table: its defaults, with the --set data.<plugin>.KEY=VALUE of it checked as a
// recipe's.
Options plugin_options(const DatasetPlugin& plugin, const std::string& name,
                       const toml::table& sets) {
  const toml::table* data = sets["data"].as_table();
  const toml::table* table = data ? (*data)[name].as_table() : nullptr;
  Options options = host::validate_table(table, "data." + name, plugin.options(), "--set");
  plugin.validate(options);
  return options;
}

}  // namespace

Command convert_command() {
  Command command;
  command.name = "convert";
  command.usage =
      "peftkit convert --from FORMAT --to FORMAT --input PATH --output PATH [--drop-loss-mask] "
      "[--set data.FORMAT.KEY=VALUE]...";
  command.summary =
      "turn a dataset of any readable format into any format a plugin writes (e.g. jsonl to "
      "binidx)";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("from", po::value<std::string>()->required(),
                          "dataset plugin that reads the input: jsonl, ...")(
        "to", po::value<std::string>()->required(),
        "dataset plugin that writes the output: binidx, ...")(
        "input", po::value<std::string>()->required(),
        "input file (or folder/glob, as the reader takes)")(
        "output", po::value<std::string>()->required(),
        "output file, or prefix (binidx writes PREFIX.bin and PREFIX.idx)")(
        "drop-loss-mask",
        "convert documents whose tokens are partly outside the loss (prompts, user turns) "
        "into a format that cannot say so: training on the result learns every token");
    add_set_option(options);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const std::string from = vm["from"].as<std::string>(), to = vm["to"].as<std::string>();
    const auto reader = registry.get<DatasetPlugin>(from);
    std::shared_ptr<const DatasetPlugin> writer_plugin;
    try {
      writer_plugin = registry.get<DatasetPlugin>(to);
    } catch (const Error& e) {
      throw Error(std::string("--to: ") + e.what() + " (plugins that write: " + writers(registry) +
                  ")");
    }
    if (registry.api_minor(PluginKind::kDataset, to) < kWriterApiMinor ||
        writer_plugin->writer_description().empty())
      throw Error("--to " + to + ": the " + to +
                  " plugin reads its format but does not write it (plugins that write: " +
                  writers(registry) + ")");
    toml::table sets;
    for (const auto& set : set_overrides(vm)) {
      const auto& path = set.key_path;
      if (path.size() != 3 || path[0] != "data" || (path[1] != from && path[1] != to))
        throw Error(set.text + ": convert takes only data." + from + ".KEY and data." + to +
                    ".KEY");
      host::apply_override(sets, set);
    }
    const auto tokenizer = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
    // One sample per document, never truncated.
    DatasetSource source{vm["input"].as<std::string>(), std::numeric_limits<int32_t>::max() - 1,
                         tokenizer->vocab_size(), 0, tokenizer.get()};
    auto dataset =
        host::keep_loaded(reader->open(source, plugin_options(*reader, from, sets)), reader);
    DatasetTarget target{vm["output"].as<std::string>(), tokenizer->vocab_size(), tokenizer.get()};
    auto writer = host::keep_loaded(
        writer_plugin->create_writer(target, plugin_options(*writer_plugin, to, sets)),
        writer_plugin);

    int64_t skipped = 0, masked_tokens = 0;
    const bool drop_loss_mask = vm.count("drop-loss-mask") > 0;
    for (int64_t i = 0; i < dataset->size(); ++i) {
      const Sample sample = dataset->sample(i);
      if (sample.input_ids.empty()) {
        ++skipped;
        continue;
      }
      // A sample is the document shifted by one: only its last target holds the last token.
      if (sample.targets.back() == kIgnoreIndex)
        throw Error(source.path.string() + ": document " + std::to_string(i) +
                    " ends in tokens without loss; "
                    "its last token is not in the sample, so it cannot be written");
      const auto masked = std::count(sample.targets.begin(), sample.targets.end(), kIgnoreIndex);
      if (masked > 0 && !writer->keeps_loss_mask() && !drop_loss_mask)
        throw Error(source.path.string() + ": document " + std::to_string(i) + " has " +
                    std::to_string(masked) + " tokens outside the loss (a prompt or user turns); " +
                    to +
                    " stores no loss mask, so a run on "
                    "the converted file would learn them too. Train on the " +
                    from +
                    " file itself, or pass "
                    "--drop-loss-mask to convert anyway");
      if (!writer->keeps_loss_mask()) masked_tokens += masked;
      writer->add(sample);
    }
    std::cout << writer->finish()
              << (skipped ? ", " + std::to_string(skipped) + " empty documents skipped"
                          : std::string())
              << (masked_tokens ? ", loss mask of " + std::to_string(masked_tokens) +
                                      " tokens dropped (--drop-loss-mask)"
                                : std::string())
              << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

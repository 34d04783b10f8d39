// peftkit convert --from FORMAT --to binidx --input FILE --output PREFIX
// Reads the documents of any dataset plugin (jsonl, numpy 2-D, binidx pad) and writes them as
// json2binidx does: PREFIX.bin and PREFIX.idx, uint16 tokens when the vocabulary fits (int32 otherwise),
// each document ending with the end-of-document token 0.
#include <algorithm>
#include <cstring>
#include <iostream>
#include <limits>

#include "cli/command.hpp"
#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"
#include "io/little_endian.hpp"
#include "io/mapped_file.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::cli {
Command convert_command() {
  Command command;
  command.name = "convert";
  command.usage = "peftkit convert --from FORMAT --to binidx --input FILE --output PREFIX [--drop-loss-mask]";
  command.summary = "turn a dataset (e.g. jsonl) into json2binidx-compatible PREFIX.bin/.idx";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()("from", po::value<std::string>()->required(), "dataset plugin that reads the input: jsonl, ...")(
        "to", po::value<std::string>()->required(), "output format: binidx")(
        "input", po::value<std::string>()->required(), "input file")(
        "output", po::value<std::string>()->required(), "output prefix (writes PREFIX.bin and PREFIX.idx)")(
        "drop-loss-mask", "convert documents whose tokens are partly outside the loss (prompts, user turns) "
                          "although binidx cannot say so: training on the result learns every token");
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    if (vm["to"].as<std::string>() != "binidx")
      throw Error("--to: expected binidx, found '" + vm["to"].as<std::string>() + "'");
    const auto registry = host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    const std::string format = vm["from"].as<std::string>();
    const auto plugin = registry.get<DatasetPlugin>(format);
    const auto tokenizer = WorldTokenizer::load(find_world_vocab());
    // One sample per document, never truncated.
    DatasetSource source{vm["input"].as<std::string>(), std::numeric_limits<int32_t>::max() - 1, 0, 0, tokenizer.get()};
    auto dataset = plugin->open(source, host::default_options(plugin->options(), "data." + format));
    const bool narrow = tokenizer->vocab_size() <= 65536;
    const int item_size = narrow ? 2 : 4;

    std::vector<int32_t> sizes;
    std::vector<int64_t> pointers;
    int64_t skipped = 0, tokens = 0, masked_tokens = 0;
    const bool drop_loss_mask = vm.count("drop-loss-mask") > 0;
    const std::string prefix = vm["output"].as<std::string>();
    io::write_file_atomically(prefix + ".bin", [&](std::FILE* out) {
      for (int64_t i = 0; i < dataset->size(); ++i) {
        Sample sample = dataset->sample(i);
        if (sample.input_ids.empty()) {
          ++skipped;
          continue;
        }
        // A sample is the document shifted by one: inputs plus the last target restore it.
        std::vector<int32_t> ids = sample.input_ids;
        if (sample.targets.back() == kIgnoreIndex)
          throw Error(source.path.string() + ": document " + std::to_string(i) + " ends in tokens without loss; "
                                             "binidx cannot store its last token");
        ids.push_back(sample.targets.back());
        const auto masked = std::count(sample.targets.begin(), sample.targets.end(), kIgnoreIndex);
        if (masked > 0 && !drop_loss_mask)
          throw Error(source.path.string() + ": document " + std::to_string(i) + " has " + std::to_string(masked) +
                      " tokens outside the loss (a prompt or user turns); binidx stores no loss mask, so a run on "
                      "the converted file would learn them too. Train on the " + format + " file itself, or pass "
                      "--drop-loss-mask to convert anyway");
        masked_tokens += masked;
        if (ids.back() != 0) ids.push_back(0);  // end of document
        std::string bytes;
        for (int32_t id : ids) {
          if (narrow) io::append_le<uint16_t>(bytes, static_cast<uint16_t>(id));
          else io::append_le<int32_t>(bytes, id);
        }
        io::write_all(out, bytes.data(), bytes.size(), prefix + ".bin");
        pointers.push_back(tokens * item_size);
        sizes.push_back(static_cast<int32_t>(ids.size()));
        tokens += static_cast<int64_t>(ids.size());
      }
    });
    io::write_file_atomically(prefix + ".idx", [&](std::FILE* out) {
      std::string header("MMIDIDX\0\0", 9);
      io::append_le<uint64_t>(header, 1);
      header += static_cast<char>(narrow ? 8 : 4);  // dtype code: uint16 or int32
      io::append_le<uint64_t>(header, sizes.size());
      io::append_le<uint64_t>(header, sizes.size() + 1);  // doc_idx: 0, 1, ..., N
      for (int32_t s : sizes) io::append_le<int32_t>(header, s);
      for (int64_t p : pointers) io::append_le<int64_t>(header, p);
      for (uint64_t d = 0; d <= sizes.size(); ++d) io::append_le<int64_t>(header, static_cast<int64_t>(d));
      io::write_all(out, header.data(), header.size(), prefix + ".idx");
    });
    std::cout << "wrote " << prefix << ".bin and " << prefix << ".idx: " << sizes.size() << " documents, " << tokens
              << " tokens (" << (narrow ? "uint16" : "int32") << ")" << (skipped ? ", " + std::to_string(skipped) + " empty documents skipped" : "")
              << (masked_tokens ? ", loss mask of " + std::to_string(masked_tokens) + " tokens dropped (--drop-loss-mask)"
                                : std::string())
              << "\n";
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli

// dataset.hpp: the interface of dataset plugins (jsonl, binidx, numpy, third-party formats).
//
// A dataset turns a file into numbered training samples. The trainer asks for sample i and gets
// input ids plus per-position targets; kIgnoreIndex marks positions without loss (padding, prompt
// tokens). Sampling must be a pure function of (file, options, ctx_len, seed, i) so that a resumed
// run draws exactly the samples an uninterrupted run would.
//
//   class MyFormat final : public peftkit::DatasetPlugin {
//    public:
//     peftkit::OptionSchema options() const override {
//       return peftkit::OptionSchema().add_bool("skip_bad_lines", false, "skip and count bad
//       lines");
//     }
//     std::unique_ptr<peftkit::Dataset> open(const peftkit::DatasetSource& source,
//                                            const peftkit::Options& options) const override;
//   };
//   PEFTKIT_PLUGIN(MyFormat, "my-format", "1.0.0", "what it reads")
//
// A dataset plugin may also write its format (SDK 2.2): `peftkit convert --from A --to B` reads
// every document with A's open() and hands it to B's create_writer(). See DatasetWriter.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "peftkit/options.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/tokenizer.hpp"

namespace peftkit {

// Target value of positions that carry no loss (PyTorch's cross-entropy ignore_index).
inline constexpr int32_t kIgnoreIndex = -100;

struct Sample {
  std::vector<int32_t> input_ids;  // at most ctx_len tokens
  std::vector<int32_t> targets;  // same length; targets[t] is the token expected after input_ids[t]

  // Whether any target counts in the loss (is not kIgnoreIndex).
  bool has_target() const {
    for (int32_t t : targets)
      if (t != kIgnoreIndex) return true;
    return false;
  }
};

// What the host knows when it opens a dataset.
struct DatasetSource {
  std::filesystem::path path;            // the recipe's [data] path (or eval_file), resolved
  int64_t ctx_len = 0;                   // tokens per sample
  int64_t vocab_size = 0;                // ids must be below this; 0 when unknown
  uint64_t seed = 0;                     // for reproducible sampling
  const Tokenizer* tokenizer = nullptr;  // null when no tokenizer is loaded
};

class Dataset {
 public:
  virtual ~Dataset();
  // How many distinct samples there are (documents, rows, or windows of a token stream).
  virtual int64_t size() const = 0;
  // Sample `index` in [0, size()); pure and safe to call from several threads.
  virtual Sample sample(int64_t index) const = 0;
  // One line for the log: "data.npy: 1048576 tokens (uint16), windows of 1024".
  virtual std::string describe() const = 0;
};

// The whole document a sample of `peftkit convert` holds: its inputs and the last target (a
// sample is the document shifted by one). Empty for an empty sample.
inline std::vector<int32_t> document_tokens(const Sample& sample) {
  std::vector<int32_t> tokens = sample.input_ids;
  if (!sample.targets.empty()) tokens.push_back(sample.targets.back());
  return tokens;
}

// Where a writer writes, and what it may need.
struct DatasetTarget {
  std::filesystem::path path;            // --output: a file, or a prefix (binidx: PREFIX.bin/.idx)
  int64_t vocab_size = 0;                // every id is below this
  const Tokenizer* tokenizer = nullptr;  // for formats that store text
};

// Writes documents in a plugin's format. The host calls add() once per document, in order, then
// finish(); an exception before finish() must leave no file under the final name (AtomicFile).
class DatasetWriter {
 public:
  virtual ~DatasetWriter();
  // Whether the format stores which tokens count in the loss. When not, the host refuses documents
  // with masked targets (prompts, user turns) unless the user passes --drop-loss-mask.
  virtual bool keeps_loss_mask() const { return false; }
  // One document, never truncated: document_tokens(sample), with sample.targets saying which
  // tokens count in the loss.
  virtual void add(const Sample& document) = 0;
  // Completes the files; returns one line saying what was written.
  virtual std::string finish() = 0;
};

class DatasetPlugin : public Plugin {
 public:
  static constexpr PluginKind kKind = PluginKind::kDataset;
  // Opens the file; throws peftkit::Error naming the file (and line or offset) on bad input.
  virtual std::unique_ptr<Dataset> open(const DatasetSource& source,
                                        const Options& options) const = 0;

  // SDK 2.2 (called only on plugins built against 2.2 or later): writing the format.
  // What a writer writes, one line ("PREFIX.bin + PREFIX.idx, as json2binidx"); "" when the plugin
  // only reads (the default).
  virtual std::string writer_description() const;
  // Called only when writer_description() is not empty. `options`: the plugin's table, defaults
  // filled in. Default: throws.
  virtual std::unique_ptr<DatasetWriter> create_writer(const DatasetTarget& target,
                                                       const Options& options) const;
};

}  // namespace peftkit

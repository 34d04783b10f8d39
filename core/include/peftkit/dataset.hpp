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
//       return peftkit::OptionSchema().add_bool("skip_bad_lines", false, "skip and count bad lines");
//     }
//     std::unique_ptr<peftkit::Dataset> open(const peftkit::DatasetSource& source,
//                                            const peftkit::Options& options) const override;
//   };
//   PEFTKIT_PLUGIN(MyFormat, "my-format", "1.0.0", "what it reads")
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
  std::vector<int32_t> targets;    // same length; targets[t] is the token expected after input_ids[t]

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

class DatasetPlugin : public Plugin {
 public:
  static constexpr PluginKind kKind = PluginKind::kDataset;
  // Opens the file; throws peftkit::Error naming the file (and line or offset) on bad input.
  virtual std::unique_ptr<Dataset> open(const DatasetSource& source,
                                        const Options& options) const = 0;
};

}  // namespace peftkit

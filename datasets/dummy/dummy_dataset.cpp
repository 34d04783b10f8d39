// dummy: random tokens, no file — for benchmarks and smoke tests (RWKV-PEFT's `dummy` data type).
// `count` samples of `length` tokens each (0: ctx_len + 1, a full window), every id drawn uniformly
// from [1, vocab) (vocab 0: the model's vocabulary; the end-of-text token 0 never appears). Sample
// i is a pure function of (seed, i). [data] path is not read: any text will do, e.g. path = "-".
// Written against the SDK alone, as a third-party dataset plugin would be.
#include <algorithm>
#include <string>

#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/random.hpp"

namespace peftkit::dummy {
namespace {

class DummyDataset final : public Dataset {
 public:
  DummyDataset(int64_t count, int64_t length, int64_t vocab, uint64_t seed)
      : count_(count), length_(length), vocab_(vocab), seed_(seed) {}

  int64_t size() const override { return count_; }

  Sample sample(int64_t index) const override {
    if (index < 0 || index >= count_)
      throw Error("dummy: sample " + std::to_string(index) + " of " + std::to_string(count_));
    Sample sample;
    uint64_t state = mix64(seed_ ^ mix64(static_cast<uint64_t>(index) + 0x5eed));
    int32_t previous = 0;
    for (int64_t t = 0; t < length_; ++t) {
      state = mix64(state + 0x9e3779b97f4a7c15ull);
      const auto token = static_cast<int32_t>(1 + state % static_cast<uint64_t>(vocab_ - 1));
      if (t > 0) {
        sample.input_ids.push_back(previous);
        sample.targets.push_back(token);
      }
      previous = token;
    }
    return sample;
  }

  std::string describe() const override {
    return "dummy: " + std::to_string(count_) + " samples of " + std::to_string(length_) +
           " random tokens in [1, " + std::to_string(vocab_) + ")";
  }

 private:
  int64_t count_, length_, vocab_;
  uint64_t seed_;
};

class DummyPlugin final : public DatasetPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_int("count", 1000, "number of samples", 1, int64_t{1} << 40)
        .add_int("length", 0, "tokens per sample (0: ctx_len + 1, a full window)", 0,
                 int64_t{1} << 24)
        .add_int("vocab", 0, "ids are drawn from [1, vocab) (0: the model's vocabulary)", 0,
                 int64_t{1} << 31)
        .add_int("seed", 0, "added to [train] seed: other tokens with the same recipe", 0);
  }

  std::unique_ptr<Dataset> open(const DatasetSource& source,
                                const Options& options) const override {
    const int64_t length =
        options.get_int("length") > 0 ? options.get_int("length") : source.ctx_len + 1;
    if (length < 2)
      throw options.error("length", "a sample needs at least 2 tokens (an input and its target)");
    int64_t vocab = options.get_int("vocab");
    if (vocab == 0) vocab = source.vocab_size;
    if (vocab < 2)
      throw options.error(
          "vocab",
          "needs at least 2 ids (0 is never drawn); set vocab when the model's is unknown");
    if (source.vocab_size > 0 && vocab > source.vocab_size)
      throw options.error("vocab", std::to_string(vocab) +
                                       " is more than the model's vocabulary of " +
                                       std::to_string(source.vocab_size));
    return std::make_unique<DummyDataset>(
        options.get_int("count"), length, vocab,
        source.seed + static_cast<uint64_t>(options.get_int("seed")));
  }
};

}  // namespace
}  // namespace peftkit::dummy

PEFTKIT_PLUGIN(peftkit::dummy::DummyPlugin, "dummy", "1.0.0",
               "random tokens of a given length and count, no file: for benchmarks and smoke tests")

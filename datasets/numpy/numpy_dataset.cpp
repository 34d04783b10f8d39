// numpy: token ids from a .npy file (spec formats §3.2), memory-mapped.
//   1-D array: one token stream; sample i is a window of ctx_len + 1 tokens (inputs and the
//              targets shifted by one), its offset chosen by `order`.
//   2-D array: [samples, length]; sample i is row i, truncated to ctx_len + 1 tokens.
#include <cmath>
#include <memory>

#include "npy_file.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/plugin.hpp"

namespace peftkit::numpy {
namespace {

// Stateless 64-bit mixer (SplitMix64's finaliser): offset i depends only on (seed, i).
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

bool is_prime(int64_t n) {
  if (n < 2) return false;
  for (int64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

// RWKV-LM's magic prime: the largest prime p with p % 3 == 2 and p < tokens / ctx_len - 1, so
// that i -> i^3 mod p visits every window once (spec rwkv-model §1.7).
int64_t magic_prime(int64_t tokens, int64_t ctx_len) {
  for (int64_t p = tokens / ctx_len - 1; p >= 2; --p)
    if (p * ctx_len < tokens - ctx_len && p % 3 == 2 && is_prime(p)) return p;
  return 0;
}

__extension__ typedef unsigned __int128 Uint128;  // exact (golden * i^3) mod p

enum class Order { kRandom, kMagicPrime, kSequential };

class NumpyDataset final : public Dataset {
 public:
  NumpyDataset(std::unique_ptr<NpyFile> file, const DatasetSource& source, Order order)
      : file_(std::move(file)), ctx_len_(source.ctx_len), vocab_size_(source.vocab_size),
        seed_(source.seed), order_(order) {
    const std::string where = file_->path().string();
    if (ctx_len_ < 1) throw Error(where + ": ctx_len must be at least 1");
    if (file_->shape().size() == 2) {
      if (file_->shape()[1] < 2)
        throw Error(where + ": rows of length " + std::to_string(file_->shape()[1]) +
                    " are too short; a sample needs at least 2 tokens");
      size_ = file_->shape()[0];
      return;
    }
    const int64_t tokens = file_->element_count();
    if (tokens < ctx_len_ + 1)
      throw Error(where + ": holds " + std::to_string(tokens) + " tokens but one sample needs " +
                  "ctx_len + 1 = " + std::to_string(ctx_len_ + 1));
    if (order_ == Order::kMagicPrime) {
      prime_ = magic_prime(tokens, ctx_len_);
      if (prime_ == 0)
        throw Error(where + ": " + std::to_string(tokens) + " tokens are too few for order = "
                    "\"magic_prime\" with ctx_len " + std::to_string(ctx_len_) +
                    "; use order = \"random\"");
      // int(p * (sqrt(5) - 1) / 2), as RWKV-LM computes it.
      golden_ = static_cast<int64_t>(static_cast<double>(prime_) * (std::sqrt(5.0) - 1.0) / 2.0);
      size_ = prime_;
    } else {
      size_ = (tokens - 1) / ctx_len_;
    }
  }

  int64_t size() const override { return size_; }

  Sample sample(int64_t index) const override {
    if (index < 0 || index >= size_)
      throw Error(file_->path().string() + ": sample " + std::to_string(index) +
                  " is outside [0, " + std::to_string(size_) + ")");
    int64_t begin = 0;
    int64_t length = 0;
    if (file_->shape().size() == 2) {
      const int64_t row_length = file_->shape()[1];
      begin = index * row_length;
      length = std::min(row_length, ctx_len_ + 1);
    } else {
      begin = window_offset(index);
      length = ctx_len_ + 1;
    }
    Sample sample;
    sample.input_ids.reserve(static_cast<size_t>(length - 1));
    sample.targets.reserve(static_cast<size_t>(length - 1));
    for (int64_t k = 0; k < length; ++k) {
      const int32_t id = checked_token(begin + k);
      if (k + 1 < length) sample.input_ids.push_back(id);
      if (k > 0) sample.targets.push_back(id);
    }
    return sample;
  }

  std::string describe() const override {
    const auto& shape = file_->shape();
    std::string text = file_->path().string() + ": " + file_->type_name() + " .npy v" +
                       std::to_string(file_->version()) + ", ";
    if (shape.size() == 2)
      return text + std::to_string(shape[0]) + " rows of " + std::to_string(shape[1]) + " tokens";
    static const char* kOrderNames[] = {"random", "magic_prime", "sequential"};
    return text + std::to_string(shape[0]) + " tokens, " + std::to_string(size_) + " windows of " +
           std::to_string(ctx_len_ + 1) + " tokens in " + kOrderNames[static_cast<int>(order_)] +
           " order";
  }

 private:
  int64_t window_offset(int64_t index) const {
    switch (order_) {
      case Order::kSequential:
        return index * ctx_len_;
      case Order::kRandom: {
        const uint64_t positions = static_cast<uint64_t>(file_->element_count() - ctx_len_);
        return static_cast<int64_t>(mix(mix(seed_) ^ static_cast<uint64_t>(index)) % positions);
      }
      case Order::kMagicPrime: {
        const Uint128 ii = static_cast<uint64_t>(index) + 1;
        const Uint128 p = static_cast<uint64_t>(prime_);
        const Uint128 cube = (ii * ii % p) * ii % p;
        return static_cast<int64_t>(static_cast<Uint128>(golden_) * cube % p) * ctx_len_;
      }
    }
    return 0;
  }

  int32_t checked_token(int64_t element) const {
    const int64_t id = file_->at(element);
    if (id < 0 || (vocab_size_ > 0 && id >= vocab_size_))
      throw Error(file_->path().string() + ": token id " + std::to_string(id) + " at element " +
                  std::to_string(element) + " is outside the model's vocabulary [0, " +
                  std::to_string(vocab_size_) + ")");
    return static_cast<int32_t>(id);
  }

  std::unique_ptr<NpyFile> file_;
  int64_t ctx_len_;
  int64_t vocab_size_;
  uint64_t seed_;
  Order order_;
  int64_t size_ = 0;
  int64_t prime_ = 0;
  int64_t golden_ = 0;
};

class NumpyPlugin final : public DatasetPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema().add_string(
        "order", "random",
        "window order of a 1-D token stream: \"random\" (offsets drawn from the seed), "
        "\"magic_prime\" (RWKV-LM's walk over non-overlapping windows) or \"sequential\"",
        {"random", "magic_prime", "sequential"});
  }

  std::unique_ptr<Dataset> open(const DatasetSource& source, const Options& options) const override {
    auto file = std::make_unique<NpyFile>(source.path);
    const std::string& order = options.get_string("order");
    if (file->shape().size() == 2 && options.source("order") != OptionSource::kDefault)
      throw options.error("order", source.path.string() + " is a 2-D [samples, length] array, "
                                   "whose rows are the samples; order applies to 1-D streams only");
    const Order parsed = order == "magic_prime" ? Order::kMagicPrime
                         : order == "sequential" ? Order::kSequential
                                                 : Order::kRandom;
    return std::make_unique<NumpyDataset>(std::move(file), source, parsed);
  }
};

}  // namespace
}  // namespace peftkit::numpy

PEFTKIT_PLUGIN(peftkit::numpy::NumpyPlugin, "numpy", "0.1.0",
               "token ids in a .npy file: a 1-D stream or 2-D [samples, length]")

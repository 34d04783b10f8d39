#include "token_windows.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "peftkit/error.hpp"
#include "peftkit/random.hpp"

namespace peftkit::datasets {
namespace {

__extension__ typedef unsigned __int128 Uint128;  // exact (golden * i^3) mod p

bool is_prime(int64_t n) {
  if (n < 2) return false;
  for (int64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

int64_t magic_prime(int64_t tokens, int64_t ctx_len) {
  for (int64_t p = tokens / ctx_len - 1; p >= 2; --p)
    if (p * ctx_len < tokens - ctx_len && p % 3 == 2 && is_prime(p)) return p;
  return 0;
}

constexpr const char* kOrderNames[] = {"random", "magic_prime", "sequential"};

}  // namespace

void add_window_order_option(OptionSchema& schema) {
  schema.add_string(
      "order", "random",
      "window order of a token stream: \"random\" (offsets drawn from the seed), "
      "\"magic_prime\" (RWKV-LM's walk over non-overlapping windows) or \"sequential\"",
      {"random", "magic_prime", "sequential"});
}

WindowOrder window_order(const Options& options) {
  const std::string& order = options.get_string("order");
  return order == "magic_prime"  ? WindowOrder::kMagicPrime
         : order == "sequential" ? WindowOrder::kSequential
                                 : WindowOrder::kRandom;
}

TokenWindows::TokenWindows(int64_t tokens, int64_t ctx_len, WindowOrder order, uint64_t seed,
                           const std::string& where)
    : tokens_(tokens), ctx_len_(ctx_len), order_(order), seed_(seed) {
  if (ctx_len < 1) throw Error(where + ": ctx_len must be at least 1");
  if (tokens < ctx_len + 1)
    throw Error(where + ": holds " + std::to_string(tokens) +
                " tokens but one sample needs ctx_len + 1 = " + std::to_string(ctx_len + 1));
  if (order == WindowOrder::kMagicPrime) {
    prime_ = magic_prime(tokens, ctx_len);
    if (prime_ == 0)
      throw Error(where + ": " + std::to_string(tokens) +
                  " tokens are too few for order = \"magic_prime\" with "
                  "ctx_len " +
                  std::to_string(ctx_len) + "; use order = \"random\"");
    // int(p * (sqrt(5) - 1) / 2), as RWKV-LM computes it.
    golden_ = static_cast<int64_t>(static_cast<double>(prime_) * (std::sqrt(5.0) - 1.0) / 2.0);
    size_ = prime_;
  } else {
    size_ = (tokens - 1) / ctx_len;
  }
}

int64_t TokenWindows::offset(int64_t index) const {
  switch (order_) {
    case WindowOrder::kSequential:
      return index * ctx_len_;
    case WindowOrder::kRandom:
      return static_cast<int64_t>(mix64(mix64(seed_) ^ static_cast<uint64_t>(index)) %
                                  static_cast<uint64_t>(tokens_ - ctx_len_));
    case WindowOrder::kMagicPrime: {
      const Uint128 ii = static_cast<uint64_t>(index) + 1;
      const Uint128 p = static_cast<uint64_t>(prime_);
      const Uint128 cube = (ii * ii % p) * ii % p;
      return static_cast<int64_t>(static_cast<Uint128>(golden_) * cube % p) * ctx_len_;
    }
  }
  return 0;
}

std::string TokenWindows::describe() const {
  return std::to_string(size_) + " windows of " + std::to_string(ctx_len_ + 1) + " tokens in " +
         kOrderNames[static_cast<int>(order_)] + " order";
}

namespace {

template <class T>
void check_ids_of(const uint8_t* data, int64_t count, int64_t vocab_size,
                  const std::string& where) {
  const uint64_t limit = vocab_size > 0 ? static_cast<uint64_t>(vocab_size) : uint64_t{1} << 63;
  // Blocks without a branch per id; the first bad id is looked for only in a block that has one.
  constexpr int64_t kBlock = 4096;
  for (int64_t begin = 0; begin < count; begin += kBlock) {
    const int64_t end = std::min(count, begin + kBlock);
    bool bad = false;
    for (int64_t i = begin; i < end; ++i) {
      T v;
      std::memcpy(&v, data + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
      bad |= static_cast<uint64_t>(static_cast<int64_t>(v)) >= limit;  // negatives wrap to huge
    }
    if (!bad) continue;
    for (int64_t i = begin; i < end; ++i) {
      T v;
      std::memcpy(&v, data + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
      if (static_cast<uint64_t>(static_cast<int64_t>(v)) >= limit)
        throw Error(where + ": token id " + std::to_string(static_cast<int64_t>(v)) +
                    " at element " + std::to_string(i) + " is outside the model's vocabulary [0, " +
                    std::to_string(vocab_size) + ")");
    }
  }
}

}  // namespace

void check_token_ids(const uint8_t* data, int64_t count, int element_size, bool is_signed,
                     int64_t vocab_size, const std::string& where) {
  switch (element_size * (is_signed ? -1 : 1)) {
    case 1:
      return check_ids_of<uint8_t>(data, count, vocab_size, where);
    case -1:
      return check_ids_of<int8_t>(data, count, vocab_size, where);
    case 2:
      return check_ids_of<uint16_t>(data, count, vocab_size, where);
    case -2:
      return check_ids_of<int16_t>(data, count, vocab_size, where);
    case 4:
      return check_ids_of<uint32_t>(data, count, vocab_size, where);
    case -4:
      return check_ids_of<int32_t>(data, count, vocab_size, where);
    case -8:
      return check_ids_of<int64_t>(data, count, vocab_size, where);
    default:
      throw Error(where + ": token ids of " + std::to_string(element_size) +
                  " bytes are not supported");
  }
}

Sample tokens_to_sample(const std::function<int64_t(int64_t)>& token_at, int64_t begin,
                        int64_t length, int64_t vocab_size, const std::string& where) {
  Sample sample;
  sample.input_ids.reserve(static_cast<size_t>(std::max<int64_t>(0, length - 1)));
  sample.targets.reserve(sample.input_ids.capacity());
  for (int64_t k = 0; k < length; ++k) {
    const int64_t id = token_at(begin + k);
    if (id < 0 || (vocab_size > 0 && id >= vocab_size))
      throw Error(where + ": token id " + std::to_string(id) + " at element " +
                  std::to_string(begin + k) + " is outside the model's vocabulary [0, " +
                  std::to_string(vocab_size) + ")");
    if (k + 1 < length) sample.input_ids.push_back(static_cast<int32_t>(id));
    if (k > 0) sample.targets.push_back(static_cast<int32_t>(id));
  }
  return sample;
}

}  // namespace peftkit::datasets

// token_windows.hpp: samples drawn from one long token stream (numpy 1-D arrays, binidx in
// "stream" mode): window i is ctx_len + 1 tokens starting at offset(i), in one of three orders.
//   random       offsets drawn from (seed, i), anywhere in the stream
//   magic_prime  RWKV-LM's walk: offset ((floor(p (sqrt5 - 1) / 2) * (i + 1)^3) mod p) * ctx_len,
//                p the largest prime = 2 (mod 3) below tokens / ctx_len - 1: every window once
//   sequential   offset i * ctx_len
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "peftkit/dataset.hpp"

namespace peftkit::datasets {

enum class WindowOrder { kRandom, kMagicPrime, kSequential };

// The recipe option shared by stream formats: order = "random" | "magic_prime" | "sequential".
void add_window_order_option(OptionSchema& schema);
WindowOrder window_order(const Options& options);

class TokenWindows {
 public:
  // where: the file, for messages. Throws when the stream is shorter than one window.
  TokenWindows(int64_t tokens, int64_t ctx_len, WindowOrder order, uint64_t seed,
               const std::string& where);
  int64_t size() const { return size_; }
  int64_t offset(int64_t index) const;
  std::string describe() const;  // "99 windows of 11 tokens in sequential order"

 private:
  int64_t tokens_, ctx_len_;
  WindowOrder order_;
  uint64_t seed_;
  int64_t size_ = 0, prime_ = 0, golden_ = 0;
};

// Scans `count` little-endian token ids of `element_size` bytes (1, 2, 4 or 8; signed or not) at
// `data`, all of them, once at open; throws naming `where` and the index of the first id outside
// [0, vocab_size) (vocab_size 0: only negative ids are refused). A memory-mapped scan runs at
// disk or page-cache speed, so a bad id is found before training, not when its window is drawn.
void check_token_ids(const uint8_t* data, int64_t count, int element_size, bool is_signed,
                     int64_t vocab_size, const std::string& where);

// Tokens [begin, begin + length) as a sample: inputs are all but the last, targets all but the
// first. Every id is checked against the vocabulary; an error names the file and the position.
Sample tokens_to_sample(const std::function<int64_t(int64_t)>& token_at, int64_t begin,
                        int64_t length, int64_t vocab_size, const std::string& where);

}  // namespace peftkit::datasets

// tokenizer.hpp: text to token ids, as dataset plugins see it.
//
// The host owns the tokenizer (the RWKV World tokenizer for World models) and passes it to dataset
// plugins that read text; token-id formats (binidx, numpy) do not need one.
//
//   std::vector<int32_t> ids = tokenizer.encode("User: hi\n\nAssistant:");
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace peftkit {

class Tokenizer {
 public:
  virtual ~Tokenizer();
  // Encodes raw bytes (UTF-8 text is just bytes); never fails, every byte has a token.
  virtual std::vector<int32_t> encode(std::string_view bytes) const = 0;
  // The bytes of the tokens, which may end inside a UTF-8 character.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // Ids are in [0, vocab_size()).
  virtual int64_t vocab_size() const = 0;
};

}  // namespace peftkit

// world_tokenizer.hpp: the RWKV World tokenizer (spec rwkv-model §5): greedy longest match over
// bytes with the vocabulary rwkv_vocab_v20230424.txt. Ids 1..256 are the single bytes, so every
// byte string is encodable; id 0 is the end-of-document token and decodes to nothing.
//
//   auto tokenizer = WorldTokenizer::load(find_world_vocab());
//   std::vector<int32_t> ids = tokenizer->encode("Hello world!\n\n");  // {33155, 40213, 34, 261}
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "peftkit/tokenizer.hpp"

namespace peftkit::tokenizer {

class WorldTokenizer final : public Tokenizer {
 public:
  // Parses the vocabulary file; a line that does not parse is an error naming file:line.
  static std::unique_ptr<WorldTokenizer> load(const std::filesystem::path& vocab_file);

  std::vector<int32_t> encode(std::string_view bytes) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  // The bytes of one token.
  const std::string& token(int32_t id) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;
  };
  int32_t child(int32_t node, uint8_t byte) const;
  std::vector<std::string> tokens_;  // index = id; tokens_[0] is empty (end of document)
  std::vector<Node> nodes_;          // nodes_[0] is the root
};

// The vocabulary file: PEFTKIT_VOCAB if set, else share/peftkit/rwkv_vocab_v20230424.txt next to
// the binary (build tree and installed layout). Throws peftkit::Error saying how to get it.
std::filesystem::path find_world_vocab();

}  // namespace peftkit::tokenizer

// The World tokenizer's vocabulary file: loaded, then used to encode and decode a fixed text.
#include "fuzz_input.hpp"
#include "tokenizer/world_tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = peftkit::fuzz::write_input("vocab.txt", data, size);
  return peftkit::fuzz::expect_ok_or_error([&] {
    auto tokenizer = peftkit::tokenizer::WorldTokenizer::load(path);
    (void)tokenizer->decode(
        tokenizer->encode("User: hello\n\nAssistant: \xe4\xbd\xa0\xe5\xa5\xbd"));
  });
}

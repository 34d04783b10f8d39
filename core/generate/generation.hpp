// generation.hpp: continuing a text in RNN mode, token by token, with RWKV's sampler; shared by
// `peftkit generate`, `chat` and the sample generations of `compare`.
//
//   ModelState state = model.initial_state(1);
//   std::string text = continue_text(model, tokenizer, state, tokenizer.encode(prompt), settings,
//                                    [](const std::string& piece) { std::cout << piece <<
//                                    std::flush; });
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "generate/sampler.hpp"
#include "model/rwkv_model.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::generate {

struct GenerationSettings {
  SamplerSettings sampling;
  uint64_t seed = 0;
  int64_t max_tokens = 200;
  bool stop_at_eos = true;          // stop at the end-of-text token 0 (false: never draw it)
  bool stop_at_blank_line = false;  // stop once the text holds "\n\n"
};

// Reads `prompt` into `state`, then draws up to max_tokens tokens (the sampler's penalties start
// afresh). Each piece of complete UTF-8 text goes to `on_text` as it comes. Every drawn token is
// read into the state, so a conversation continues from it; an end-of-text token ends the text
// unread. Returns the generated text. Token ids are checked against the model's vocabulary.
std::string continue_text(model::RwkvModel& model, const tokenizer::WorldTokenizer& tokenizer,
                          model::ModelState& state, const std::vector<int32_t>& prompt,
                          const GenerationSettings& settings,
                          const std::function<void(const std::string&)>& on_text = {});

// Length of the longest prefix of `bytes` that is complete UTF-8 (a character may be split
// across tokens, so the rest waits for the next token).
size_t complete_utf8_prefix(const std::string& bytes);

}  // namespace peftkit::generate

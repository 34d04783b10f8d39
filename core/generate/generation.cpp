#include "generate/generation.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <limits>

#include "peftkit/error.hpp"

namespace peftkit::generate {

size_t complete_utf8_prefix(const std::string& bytes) {
  size_t i = 0, complete = 0;
  while (i < bytes.size()) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t length = c < 0x80           ? 1
                          : (c >> 5) == 0x6  ? 2
                          : (c >> 4) == 0xE  ? 3
                          : (c >> 3) == 0x1E ? 4
                                             : 1;
    if (i + length > bytes.size()) break;
    i += length;
    complete = i;
  }
  return complete;
}

std::string continue_text(model::RwkvModel& model, const tokenizer::WorldTokenizer& tokenizer,
                          model::ModelState& state, const std::vector<int32_t>& prompt,
                          const GenerationSettings& settings,
                          const std::function<void(const std::string&)>& on_text) {
  at::NoGradGuard no_grad;
  if (prompt.empty()) throw Error("the prompt is empty");
  for (int32_t id : prompt)
    if (id < 0 || id >= model.config().vocab)
      throw Error("the prompt's token " + std::to_string(id) +
                  " is outside the model's vocabulary of " + std::to_string(model.config().vocab));
  Sampler sampler(settings.sampling, settings.seed);
  at::Tensor last = model.forward(
      at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end())).view({1, -1}), &state)[0][-1];
  std::string pending, text;
  auto emit = [&](size_t ready) {
    const std::string piece = pending.substr(0, ready);
    pending.erase(0, ready);
    text += piece;
    if (on_text && !piece.empty()) on_text(piece);
  };
  for (int64_t n = 0; n < settings.max_tokens; ++n) {
    if (!settings.stop_at_eos) last[0] = -std::numeric_limits<float>::infinity();
    const int32_t token = sampler.sample(last);
    if (token == 0) break;  // end of text
    sampler.accept(token);
    last = model.forward(at::full({1, 1}, static_cast<int64_t>(token), at::kLong), &state)[0][-1];
    pending += tokenizer.token(token);
    emit(complete_utf8_prefix(pending));
    if (settings.stop_at_blank_line && text.find("\n\n") != std::string::npos) break;
  }
  emit(pending.size());
  return text;
}

}  // namespace peftkit::generate

// lambada.hpp: the LAMBADA last-word task as RWKV-LM checks it.
//
// Each line of the file is {"text": "..."}; the target is the last word with its leading space
// (the text after the last ' '), the context everything before that space. A document is read as
// [0] + encode(context) + encode(target), the end-of-text token 0 first as RWKV's demos do, and
// only the target's tokens count. Per document, its log-probability is the sum over its target
// tokens, and it is correct when every target token is the argmax of its logits. Over N documents:
//   accuracy   = correct documents / N
//   perplexity = exp(-(sum of the documents' log-probabilities) / N)   (per document, not per
//   token)
#pragma once

#include <filesystem>
#include <memory>

#include "eval/evaluator.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/tokenizer.hpp"

namespace peftkit::eval {

// The documents as samples (targets counted on the last word only). Throws naming file:line for a
// line that is not {"text": string} or has no space to split at, and for an empty file.
std::unique_ptr<Dataset> open_lambada(const std::filesystem::path& file, const Tokenizer& tokenizer,
                                      int64_t vocab_size);

// Length of the longest document (what the evaluation's ctx_len must hold).
int64_t longest_sample(const Dataset& data);

struct LambadaScore {
  int64_t documents = 0, correct = 0;
  double log_probability = 0;  // summed over documents
  double accuracy() const;
  double perplexity() const;
};
// From an evaluation with per-sample counts.
LambadaScore lambada_score(const EvalResult& result);

}  // namespace peftkit::eval

// evaluator.hpp: a model's loss, perplexity and token accuracy on dataset samples: the one
// evaluation that `peftkit train` (eval_loss in metrics.jsonl), `peftkit eval` and `peftkit
// compare` all report.
//
// The loss is the mean negative log-likelihood over the targets that count (the targets training
// counts: padding, masked prompts and chat turns of other roles are left out); the perplexity is
// exp(loss); the accuracy is the share of counted targets that are the argmax of their logits.
// Samples go in order, micro_bsz at a time; samples longer than chunk_ctx run in segments of
// chunk_ctx tokens that carry the state, so any length fits in bounded memory.
//
//   EvalSettings settings{.micro_bsz = 8, .ctx_len = 1024, .chunk_ctx = 512};
//   EvalResult r = evaluate(model, dataset, {0, dataset.size()}, settings);
//   std::cout << r.loss() << " " << r.perplexity() << " " << r.accuracy();
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/rwkv_model.hpp"
#include "peftkit/dataset.hpp"

namespace peftkit::eval {

struct EvalSettings {
  int64_t micro_bsz = 8;
  int64_t ctx_len = 1024;  // samples are cut here (as in training)
  int64_t chunk_ctx = 0;   // segment length; 0: the whole sample at once
};

// Samples [begin, end) of a dataset.
struct SampleRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// What one sample (or all of them) scored.
struct EvalCounts {
  double nll_sum = 0;   // summed negative log-likelihood of the counted targets (nats)
  int64_t tokens = 0;   // counted targets
  int64_t correct = 0;  // counted targets that are their logits' argmax
};

struct EvalResult {
  EvalCounts total;
  int64_t documents = 0;  // samples with at least one counted target
  int64_t samples = 0;
  double seconds = 0;
  std::vector<EvalCounts> per_sample;  // in range order, when asked for

  double loss() const;        // nll_sum / tokens (NaN without counted targets)
  double perplexity() const;  // exp(loss)
  double accuracy() const;    // correct / tokens
  double tokens_per_second() const;
};

// Progress after each batch: samples done, samples in all.
using EvalProgress = std::function<void(int64_t, int64_t)>;

// Runs without autograd and with the model out of training mode (dropout off), restoring the mode.
EvalResult evaluate(model::RwkvModel& model, const Dataset& data, SampleRange range,
                    const EvalSettings& settings, bool keep_per_sample = false,
                    const EvalProgress& progress = {});

}  // namespace peftkit::eval

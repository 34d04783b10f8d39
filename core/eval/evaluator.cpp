#include "eval/evaluator.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "train/batch.hpp"

namespace peftkit::eval {
namespace {

constexpr int64_t kRowsPerChunk = 1024;  // fp32 logits of at most this many positions exist at once

class EvalModeScope {
 public:
  explicit EvalModeScope(model::RwkvModel& model) : model_(model), was_training_(model.training()) {
    model_.set_training(false);
  }
  ~EvalModeScope() { model_.set_training(was_training_); }

 private:
  model::RwkvModel& model_;
  bool was_training_;
};

}  // namespace

double EvalResult::loss() const {
  return total.tokens > 0 ? total.nll_sum / static_cast<double>(total.tokens)
                          : std::numeric_limits<double>::quiet_NaN();
}
double EvalResult::perplexity() const { return std::exp(loss()); }
double EvalResult::accuracy() const {
  return total.tokens > 0 ? static_cast<double>(total.correct) / static_cast<double>(total.tokens)
                          : std::numeric_limits<double>::quiet_NaN();
}
double EvalResult::tokens_per_second() const {
  return seconds > 0 ? static_cast<double>(total.tokens) / seconds : 0.0;
}

EvalResult evaluate(model::RwkvModel& model, const Dataset& data, SampleRange range,
                    const EvalSettings& settings, bool keep_per_sample,
                    const EvalProgress& progress) {
  at::NoGradGuard no_grad;
  EvalModeScope eval_mode(model);
  const auto started = std::chrono::steady_clock::now();
  const at::Device device = model.options().device;
  EvalResult result;
  for (int64_t first = range.begin; first < range.end; first += settings.micro_bsz) {
    std::vector<Sample> samples;
    for (int64_t i = first; i < std::min(range.end, first + settings.micro_bsz); ++i)
      samples.push_back(data.sample(i));
    const auto [inputs, targets] = train::pad_batch(samples, settings.ctx_len);
    const int64_t batch = inputs.size(0), length = inputs.size(1);
    const int64_t segment = settings.chunk_ctx > 0 ? settings.chunk_ctx : length;
    // Per sample of the batch, summed over its segments (on the host, in float64).
    at::Tensor nll = at::zeros({batch}, at::kDouble), correct = at::zeros({batch}, at::kLong),
               counted = at::zeros({batch}, at::kLong);
    model::ModelState state = model.initial_state(batch);
    for (int64_t start = 0; start < length; start += segment) {
      const int64_t width = std::min(segment, length - start);
      const at::Tensor hidden = model.forward_hidden(inputs.slice(1, start, start + width), &state);
      const at::Tensor labels_all = targets.slice(1, start, start + width).reshape({-1});
      // Only the counted positions go through the head.
      const at::Tensor rows = (labels_all != kIgnoreIndex).nonzero().squeeze(1);
      if (rows.numel() == 0) continue;
      const at::Tensor owner = at::floor_divide(rows, width);  // the sample of each row
      const at::Tensor labels = labels_all.index_select(0, rows).to(device);
      const at::Tensor flat =
          hidden.reshape({-1, hidden.size(-1)}).index_select(0, rows.to(device));
      std::vector<at::Tensor> row_nll, row_correct;
      for (int64_t r = 0; r < flat.size(0); r += kRowsPerChunk) {
        const int64_t end = std::min(flat.size(0), r + kRowsPerChunk);
        const at::Tensor logits = model.head(flat.slice(0, r, end)).to(at::kFloat);
        const at::Tensor label = labels.slice(0, r, end);
        row_nll.push_back(
            (at::logsumexp(logits, -1) - logits.gather(1, label.unsqueeze(1)).squeeze(1))
                .to(at::kDouble));
        row_correct.push_back((logits.argmax(-1) == label).to(at::kLong));
      }
      nll.index_add_(0, owner, at::cat(row_nll).cpu());
      correct.index_add_(0, owner, at::cat(row_correct).cpu());
      counted.index_add_(0, owner, at::ones_like(owner));
    }
    const auto* nll_data = nll.data_ptr<double>();
    const auto* correct_data = correct.data_ptr<int64_t>();
    const auto* counted_data = counted.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const EvalCounts sample{nll_data[b], counted_data[b], correct_data[b]};
      result.total.nll_sum += sample.nll_sum;
      result.total.tokens += sample.tokens;
      result.total.correct += sample.correct;
      if (sample.tokens > 0) ++result.documents;
      if (keep_per_sample) result.per_sample.push_back(sample);
    }
    result.samples += batch;
    if (progress) progress(result.samples, range.size());
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace peftkit::eval

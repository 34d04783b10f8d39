#include "train/loss.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "loss/softmax_loss.hpp"
#include "peftkit/dataset.hpp"

namespace peftkit::train {
namespace {

// Rows of logits a chunk of the unfused loss (its reference path makes one fp32 copy at a time).
constexpr int64_t kRowsPerChunk = 1024;

// Per chunk of rows: each row's negative log-likelihood, and the loss's gradient in the logits'
// dtype (kernels/loss: one CUDA kernel each on the device).
at::Tensor nll_per_row(const at::Tensor& logits, const at::Tensor& labels) {
  return kernels::softmax_nll(logits, labels, kIgnoreIndex);
}
at::Tensor logits_gradient(const at::Tensor& logits, const at::Tensor& labels,
                           const at::Tensor& ce_scale, const at::Tensor& wrap_scale) {
  return kernels::softmax_nll_l2wrap_gradient(logits, labels, kIgnoreIndex, ce_scale, wrap_scale);
}

// The sum of the chunks' per-row losses, in float64 on `device`.
at::Tensor total_of(const std::vector<at::Tensor>& per_row, const at::Device& device) {
  if (per_row.empty()) return at::zeros({}, at::TensorOptions(device).dtype(at::kDouble));
  return at::cat(per_row).to(at::kDouble).sum();
}

// The targets that count, as a 0-dim int64 tensor on the labels' device.
at::Tensor counted(const at::Tensor& labels) { return (labels != kIgnoreIndex).sum(); }

// The mean over the counted targets (0 when none count) of a summed loss.
at::Tensor mean_over(const at::Tensor& total, const at::Tensor& count) {
  return (total / count.clamp_min(1).to(total.scalar_type())).to(at::kFloat);
}

// The scales of logits_gradient for an incoming gradient `upstream` (0-dim) in a whole batch of
// `count` counted targets and `positions` positions.
std::pair<at::Tensor, at::Tensor> gradient_scales(const at::Tensor& upstream,
                                                  const at::Tensor& count, int64_t positions) {
  const at::Tensor g = upstream.to(at::kFloat);
  return {g / count.clamp_min(1).to(at::kFloat),
          g * (kL2WrapFactor / static_cast<double>(positions))};
}

class CrossEntropyL2Wrap : public torch::autograd::Function<CrossEntropyL2Wrap> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& targets, const at::Tensor& whole_counted,
                            int64_t whole_positions) {
    const int64_t V = logits.size(-1);
    const at::Tensor rows = logits.detach().reshape({-1, V});
    const at::Tensor labels = targets.reshape({-1}).to(rows.device());
    std::vector<at::Tensor> nll;
    for (int64_t begin = 0; begin < rows.size(0); begin += kRowsPerChunk) {
      const int64_t end = std::min(rows.size(0), begin + kRowsPerChunk);
      nll.push_back(nll_per_row(rows.slice(0, begin, end), labels.slice(0, begin, end)));
    }
    ctx->save_for_backward({logits, labels, whole_counted});
    ctx->saved_data["positions"] = whole_positions;
    return mean_over(total_of(nll, rows.device()), whole_counted);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    const int64_t V = logits.size(-1);
    const at::Tensor rows = logits.reshape({-1, V});
    const at::Tensor& labels = saved[1];
    const auto [ce_scale, wrap_scale] =
        gradient_scales(grads[0], saved[2], ctx->saved_data["positions"].toInt());
    at::Tensor grad = at::empty_like(rows);
    for (int64_t begin = 0; begin < rows.size(0); begin += kRowsPerChunk) {
      const int64_t end = std::min(rows.size(0), begin + kRowsPerChunk);
      grad.slice(0, begin, end)
          .copy_(logits_gradient(rows.slice(0, begin, end), labels.slice(0, begin, end), ce_scale,
                                 wrap_scale));
    }
    return {grad.view(logits.sizes()), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Rows per chunk of the fused head: 256 x 65536 bf16 logits are 32 MiB (their gradient as much).
constexpr int64_t kFusedRowsPerChunk = 256;

// Per chunk of rows: the logits of hidden_chunk W^T, in their dtype.
at::Tensor chunk_logits(const at::Tensor& hidden_rows, const at::Tensor& weight, int64_t begin,
                        int64_t end) {
  return at::matmul(hidden_rows.slice(0, begin, end), weight.t());
}

class HeadCrossEntropyL2Wrap : public torch::autograd::Function<HeadCrossEntropyL2Wrap> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& weight, const at::Tensor& targets,
                            const at::Tensor& whole_counted, int64_t whole_positions) {
    const at::Tensor rows = hidden.detach().reshape({-1, hidden.size(-1)});
    const at::Tensor w = weight.detach();
    const at::Tensor labels = targets.reshape({-1}).to(rows.device());
    std::vector<at::Tensor> nll;
    for (int64_t begin = 0; begin < rows.size(0); begin += kFusedRowsPerChunk) {
      const int64_t end = std::min(rows.size(0), begin + kFusedRowsPerChunk);
      nll.push_back(nll_per_row(chunk_logits(rows, w, begin, end), labels.slice(0, begin, end)));
    }
    ctx->save_for_backward({hidden, weight, labels, whole_counted});
    ctx->saved_data["positions"] = whole_positions;
    return mean_over(total_of(nll, rows.device()), whole_counted);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor rows = saved[0].reshape({-1, saved[0].size(-1)});
    const at::Tensor& w = saved[1];
    const at::Tensor& labels = saved[2];
    const auto [ce_scale, wrap_scale] =
        gradient_scales(grads[0], saved[3], ctx->saved_data["positions"].toInt());
    const bool want_hidden = ctx->needs_input_grad(0), want_weight = ctx->needs_input_grad(1);
    at::Tensor grad_rows = want_hidden ? at::empty_like(rows) : at::Tensor();
    at::Tensor grad_weight =
        want_weight ? at::zeros(w.sizes(), w.options().dtype(at::kFloat)) : at::Tensor();
    for (int64_t begin = 0; begin < rows.size(0); begin += kFusedRowsPerChunk) {
      const int64_t end = std::min(rows.size(0), begin + kFusedRowsPerChunk);
      const at::Tensor g_cast = logits_gradient(chunk_logits(rows, w, begin, end),
                                                labels.slice(0, begin, end), ce_scale, wrap_scale);
      if (want_hidden) grad_rows.slice(0, begin, end).copy_(at::matmul(g_cast, w));
      if (want_weight)
        grad_weight.add_(at::matmul(g_cast.t(), rows.slice(0, begin, end)).to(at::kFloat));
    }
    return {want_hidden ? grad_rows.view(saved[0].sizes()) : at::Tensor(),
            want_weight ? grad_weight.to(w.scalar_type()) : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

}  // namespace

WholeBatch whole_batch(const at::Tensor& targets, const at::Device& device) {
  return {counted(targets.to(device)), targets.numel()};
}

at::Tensor head_cross_entropy_l2wrap(const at::Tensor& hidden, const at::Tensor& head_weight,
                                     const at::Tensor& targets, const WholeBatch* whole) {
  TORCH_CHECK(
      hidden.dim() == 3 && targets.dim() == 2 && hidden.size(0) == targets.size(0) &&
          hidden.size(1) == targets.size(1) && head_weight.dim() == 2 &&
          head_weight.size(1) == hidden.size(2),
      "head_cross_entropy_l2wrap: hidden [B, T, C], head [V, C] and targets [B, T] expected, got ",
      hidden.sizes(), ", ", head_weight.sizes(), " and ", targets.sizes());
  const WholeBatch self = whole ? *whole : whole_batch(targets, hidden.device());
  return HeadCrossEntropyL2Wrap::apply(hidden, head_weight.to(hidden.scalar_type()), targets,
                                       self.counted, self.positions);
}

at::Tensor cross_entropy_l2wrap(const at::Tensor& logits, const at::Tensor& targets,
                                const WholeBatch* whole) {
  TORCH_CHECK(logits.dim() == 3 && targets.dim() == 2 && logits.size(0) == targets.size(0) &&
                  logits.size(1) == targets.size(1),
              "cross_entropy_l2wrap: logits [B, T, V] and targets [B, T] expected, got ",
              logits.sizes(), " and ", targets.sizes());
  const WholeBatch self = whole ? *whole : whole_batch(targets, logits.device());
  return CrossEntropyL2Wrap::apply(logits, targets, self.counted, self.positions);
}

}  // namespace peftkit::train

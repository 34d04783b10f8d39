// The loss's per-row pieces: the fp32 tensor-op reference, and the CUDA kernels' dispatch.
#include "loss/softmax_loss.hpp"

#include <ATen/ATen.h>

#include <limits>

#ifdef PEFTKIT_LOSS_CUDA
#include "binding.hpp"
#include "cuda_place_of.hpp"
#include "loss/softmax_loss_cuda.hpp"
#endif

namespace peftkit::kernels {
namespace {

void check_rows(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0),
              "softmax loss: logits [n, V] and labels [n] expected, got ", logits.sizes(), " and ",
              labels.sizes());
  TORCH_CHECK(logits.size(1) > 0 && logits.size(1) <= std::numeric_limits<int32_t>::max(),
              "softmax loss: 1 to 2^31 - 1 logits a row expected, got ", logits.size(1));
}

// A new fp32 tensor of the logits (never the caller's own), overwritten in place below.
at::Tensor fp32_copy(const at::Tensor& logits) {
  return logits.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

// Overwrites fp32 rows with exp(row - max(row)), the softmax's numerator, and returns each row's
// largest value and its first index.
std::tuple<at::Tensor, at::Tensor> exp_below_row_max_(at::Tensor& rows) {
  auto top = rows.max(-1);
  rows.sub_(std::get<0>(top).unsqueeze(1)).exp_();
  return top;
}

#ifdef PEFTKIT_LOSS_CUDA
using binding::cuda_type;
using binding::output;

// The kernels read bf16 and fp32 logits as they are; other dtypes take the reference.
bool runs_on_cuda(const at::Tensor& logits) {
  return logits.is_cuda() && binding::cuda_input_type(logits) == logits.scalar_type();
}
void check(const std::string& status) { TORCH_CHECK(status.empty(), "softmax loss: ", status); }
at::Tensor device_scalar(const at::Tensor& scale, const at::Tensor& logits) {
  return scale.to(logits.device(), at::kFloat).contiguous();
}
#endif

}  // namespace

at::Tensor softmax_nll_reference(const at::Tensor& logits, const at::Tensor& labels,
                                 int64_t ignore_index) {
  check_rows(logits, labels);
  const at::Tensor mask = labels != ignore_index;
  const at::Tensor safe = at::where(mask, labels, at::zeros_like(labels));
  at::Tensor rows = fp32_copy(logits);
  const at::Tensor picked = rows.gather(1, safe.unsqueeze(1)).squeeze(1);
  const at::Tensor top = std::get<0>(exp_below_row_max_(rows));
  return (rows.sum(-1).log_().add_(top) - picked) * mask;  // log-sum-exp - picked
}

at::Tensor softmax_nll_l2wrap_gradient_reference(const at::Tensor& logits, const at::Tensor& labels,
                                                 int64_t ignore_index, const at::Tensor& ce_scale,
                                                 const at::Tensor& wrap_scale) {
  check_rows(logits, labels);
  const at::Tensor mask = labels != ignore_index;
  const at::Tensor row_scale = mask.to(at::kFloat) * ce_scale;
  at::Tensor g = fp32_copy(logits);
  const auto [max_value, max_index] = exp_below_row_max_(g);
  g.mul_((row_scale / g.sum(-1)).unsqueeze(1));  // softmax times the row's scale
  const at::Tensor safe = at::where(mask, labels, at::zeros_like(labels));
  g.scatter_add_(1, safe.unsqueeze(1), row_scale.neg().unsqueeze(1));
  g.scatter_add_(1, max_index.unsqueeze(1),
                 (max_value * mask.to(at::kFloat) * wrap_scale).unsqueeze(1));
  return g.to(logits.scalar_type());
}

at::Tensor softmax_nll(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index) {
#ifdef PEFTKIT_LOSS_CUDA
  if (runs_on_cuda(logits)) {
    check_rows(logits, labels);
    const at::Tensor rows = logits.contiguous(),
                     ids = labels.to(logits.device(), at::kLong).contiguous();
    at::Tensor nll = output({rows.size(0)}, rows.options().dtype(at::kFloat));
    check(cuda::softmax_nll_forward(cuda::place_of(rows), cuda_type(rows), rows.size(0),
                                    rows.size(1), rows.data_ptr(), ids.data_ptr<int64_t>(),
                                    ignore_index, nll.data_ptr<float>()));
    return nll;
  }
#endif
  return softmax_nll_reference(logits, labels, ignore_index);
}

at::Tensor softmax_nll_l2wrap_gradient(const at::Tensor& logits, const at::Tensor& labels,
                                       int64_t ignore_index, const at::Tensor& ce_scale,
                                       const at::Tensor& wrap_scale) {
#ifdef PEFTKIT_LOSS_CUDA
  if (runs_on_cuda(logits)) {
    check_rows(logits, labels);
    const at::Tensor rows = logits.contiguous(),
                     ids = labels.to(logits.device(), at::kLong).contiguous();
    const at::Tensor ce = device_scalar(ce_scale, rows), wrap = device_scalar(wrap_scale, rows);
    at::Tensor grad = output(rows.sizes(), rows.options());
    check(cuda::softmax_nll_l2wrap_backward(cuda::place_of(rows), cuda_type(rows), rows.size(0),
                                            rows.size(1), rows.data_ptr(), ids.data_ptr<int64_t>(),
                                            ignore_index, ce.data_ptr<float>(),
                                            wrap.data_ptr<float>(), grad.data_ptr()));
    return grad;
  }
#endif
  return softmax_nll_l2wrap_gradient_reference(logits, labels, ignore_index, ce_scale, wrap_scale);
}

}  // namespace peftkit::kernels

// softmax_loss.hpp: the per-row pieces of the training loss (cross-entropy with RWKV's L2Wrap,
// core/train/loss.cpp assembles them): one CUDA kernel each for bf16/fp32 logits on the device
// (softmax_loss_cuda.cu), reading the logits once (twice for the gradient) where tensor ops would
// make an fp32 copy and pass over it six to eight times; the fp32 tensor-op formula elsewhere and
// as the reference.
//
// logits [n, V] in any float dtype, labels [n] int64; a row whose label is `ignore_index` does not
// count. The softmax is computed in fp32 whatever the dtype.
//   softmax_nll                  fp32 [n]: logsumexp(row) - row[label], 0 for a row that does not
//                                count (NaN for a label outside [0, V) on CUDA; the reference
//                                refuses it)
//   softmax_nll_l2wrap_gradient  [n, V] in the logits' dtype: for a row that counts,
//                                ce_scale (softmax(row) - onehot(label)) plus wrap_scale max(row)
//                                at the row's first arg-max; zeros for a row that does not. The
//                                scales are 0-dim fp32 tensors on the logits' device (read there:
//                                nothing waits for the device).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace peftkit::kernels {

at::Tensor softmax_nll(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index);
at::Tensor softmax_nll_l2wrap_gradient(const at::Tensor& logits, const at::Tensor& labels,
                                       int64_t ignore_index, const at::Tensor& ce_scale,
                                       const at::Tensor& wrap_scale);

at::Tensor softmax_nll_reference(const at::Tensor& logits, const at::Tensor& labels,
                                 int64_t ignore_index);
at::Tensor softmax_nll_l2wrap_gradient_reference(const at::Tensor& logits, const at::Tensor& labels,
                                                 int64_t ignore_index, const at::Tensor& ce_scale,
                                                 const at::Tensor& wrap_scale);

}  // namespace peftkit::kernels

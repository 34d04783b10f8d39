// loss.hpp: cross-entropy with RWKV's L2Wrap, computed in row chunks with the softmax in fp32
// whatever the dtype of the [B, T, V] logits: on CUDA by one kernel a chunk that reads the logits
// in their dtype (kernels/loss), elsewhere with at most one chunk of fp32 logits at a time.
//
// Forward: the mean cross-entropy over positions whose target is not kIgnoreIndex (-100).
// Backward: the cross-entropy gradient, plus for every position n whose target counts the L2Wrap
// term 1e-4 * max_j(logit_nj) / (B*T) added at the arg-max logit, times the incoming gradient
// (spec rwkv-model §1.7: equivalent to the extra loss 1e-4/(2 B T) * sum_n max_j(logit_nj)^2,
// which keeps logits from drifting up). Two deliberate differences from RWKV-PEFT: it forgets the
// incoming gradient, and it applies L2Wrap to padding and masked positions too, so a batch with
// no target would still move the weights; here such positions get no gradient.
//
//   at::Tensor loss = cross_entropy_l2wrap(logits, targets);   // targets [B, T] int64
//   loss.backward();
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace peftkit::train {

// The loss of a piece of a longer batch (a segment of its positions) scaled as part of the whole:
// the cross-entropy sum divided by the whole's counted targets, L2Wrap by the whole's positions,
// so that the pieces' losses and gradients add up to the whole's.
struct WholeBatch {
  at::Tensor counted;  // 0-dim int64 on the device: the whole's targets that count
  int64_t positions;   // B * T of the whole
};
// A batch's WholeBatch (targets [B, T], moved to `device`).
WholeBatch whole_batch(const at::Tensor& targets, const at::Device& device);

// Returns the loss, a 0-dim fp32 tensor with autograd to `logits`; with no target that counts (all
// ignored) the loss is 0 and so is its gradient. Nothing here waits for the device (no host
// copies), so the loss and its backward can be captured in a CUDA graph. `whole`: the batch these
// logits are a piece of (null: they are the whole batch).
at::Tensor cross_entropy_l2wrap(const at::Tensor& logits, const at::Tensor& targets,
                                const WholeBatch* whole = nullptr);

// The same loss of logits = hidden head_weightᵀ, fused with the head: the [B, T, V] logits never
// exist, only one chunk of rows at a time, recomputed in the backward. hidden [B, T, C] and
// head_weight [V, C] (same dtype) get gradients when they require them.
at::Tensor head_cross_entropy_l2wrap(const at::Tensor& hidden, const at::Tensor& head_weight,
                                     const at::Tensor& targets, const WholeBatch* whole = nullptr);

inline constexpr double kL2WrapFactor = 1e-4;

}  // namespace peftkit::train

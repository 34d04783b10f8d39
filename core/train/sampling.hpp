// sampling.hpp: which samples form each step's batch. The order is a pure function of (seed,
// epoch, slot): each epoch draws a fresh permutation of the training samples, and an epoch that
// needs more samples than there are moves on to another permutation (round). A resumed run
// therefore draws exactly the batches an uninterrupted one would.
//
//   SampleOrder order(range, seed);
//   auto [inputs, targets] = order.batch(dataset, epoch, first_slot, micro_bsz, ctx_len);
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "eval/evaluator.hpp"
#include "peftkit/dataset.hpp"

namespace peftkit::train {

class SampleOrder {
 public:
  SampleOrder(eval::SampleRange range, uint64_t seed) : range_(range), seed_(seed) {}

  // The dataset index of slot `slot` of `epoch`.
  int64_t index(int64_t epoch, int64_t slot);
  // The padded host batch [count, ctx_len] of the `count` samples from `first_slot` of `epoch`.
  std::pair<at::Tensor, at::Tensor> batch(const Dataset& dataset, int64_t epoch, int64_t first_slot,
                                          int64_t count, int64_t ctx_len);

 private:
  eval::SampleRange range_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1, cached_round_ = -1;  // the permutation below is theirs
  std::vector<int64_t> permutation_;
};

}  // namespace peftkit::train

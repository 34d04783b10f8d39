// batch.hpp: samples as one right-padded host batch, the form training and evaluation both feed
// the model.
//
//   auto [inputs, targets] = pad_batch(samples, ctx_len);   // [B, T] int64 each
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

#include "peftkit/dataset.hpp"

namespace peftkit::train {

// T is the longest sample's length, at most ctx_len (at least 1). Past a sample's end the input is
// 0 and the target kIgnoreIndex; longer samples are cut at ctx_len. Host tensors: the model checks
// token ids there, and a graphed step copies them in.
std::pair<at::Tensor, at::Tensor> pad_batch(const std::vector<Sample>& samples, int64_t ctx_len);

}  // namespace peftkit::train

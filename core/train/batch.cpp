#include "train/batch.hpp"

#include <ATen/ATen.h>

#include <algorithm>

namespace peftkit::train {

std::pair<at::Tensor, at::Tensor> pad_batch(const std::vector<Sample>& samples, int64_t ctx_len) {
  const auto count = static_cast<int64_t>(samples.size());
  int64_t length = 1;
  for (const auto& s : samples)
    length = std::max<int64_t>(length, static_cast<int64_t>(s.input_ids.size()));
  length = std::min(length, ctx_len);
  std::vector<int64_t> inputs(static_cast<size_t>(count * length), 0);
  std::vector<int64_t> targets(static_cast<size_t>(count * length), kIgnoreIndex);
  for (int64_t b = 0; b < count; ++b) {
    const auto& s = samples[b];
    const size_t n = std::min<size_t>(static_cast<size_t>(length), s.input_ids.size());
    std::copy_n(s.input_ids.begin(), n, inputs.begin() + b * length);
    std::copy_n(s.targets.begin(), n, targets.begin() + b * length);
  }
  return {at::tensor(inputs).view({count, length}), at::tensor(targets).view({count, length})};
}

}  // namespace peftkit::train

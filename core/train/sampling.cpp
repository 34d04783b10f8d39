#include "train/sampling.hpp"

#include <random>

#include "peftkit/random.hpp"
#include "train/batch.hpp"

namespace peftkit::train {

int64_t SampleOrder::index(int64_t epoch, int64_t slot) {
  const int64_t n = range_.size();
  const int64_t round = slot / n;
  if (epoch != cached_epoch_ || round != cached_round_) {
    permutation_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) permutation_[i] = i;
    std::mt19937_64 random(mix64(
        seed_ ^ mix64(static_cast<uint64_t>(epoch) * 1000003ull + static_cast<uint64_t>(round))));
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(permutation_[i], permutation_[random() % static_cast<uint64_t>(i + 1)]);
    cached_epoch_ = epoch;
    cached_round_ = round;
  }
  return range_.begin + permutation_[slot % n];
}

std::pair<at::Tensor, at::Tensor> SampleOrder::batch(const Dataset& dataset, int64_t epoch,
                                                     int64_t first_slot, int64_t count,
                                                     int64_t ctx_len) {
  std::vector<Sample> samples;
  for (int64_t b = 0; b < count; ++b)
    samples.push_back(dataset.sample(index(epoch, first_slot + b)));
  return pad_batch(samples, ctx_len);
}

}  // namespace peftkit::train

#include "train/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace peftkit::train {
namespace {

double cos_decay(double from, double to, int64_t step, int64_t steps) {
  if (steps <= 0 || step >= steps) return to;
  return to + 0.5 * (from - to) *
                  (1.0 + std::cos(std::numbers::pi * static_cast<double>(step) /
                                  static_cast<double>(steps)));
}

}  // namespace

double learning_rate(const ScheduleSettings& s, int64_t step) {
  if (s.kind == "wsd") {
    if (step < s.warmup_steps)
      return s.lr_init * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
    return cos_decay(s.lr_init, s.lr_final, step - s.warmup_steps, s.total_steps - s.warmup_steps);
  }
  double lr =
      s.lr_final == s.lr_init ? s.lr_init : cos_decay(s.lr_init, s.lr_final, step, s.total_steps);
  if (step < s.warmup_steps)
    lr *= 0.01 + 0.99 * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  return lr;
}

}  // namespace peftkit::train

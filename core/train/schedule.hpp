// schedule.hpp: learning rate per optimizer step (spec rwkv-peft-reference §1.6).
//
//   cos: lr_final + (lr_init - lr_final) * (1 + cos(pi * s / S)) / 2, times the warmup factor
//        0.01 + 0.99 * s / warmup_steps while s < warmup_steps; constant when lr_final == lr_init.
//   wsd: linear warmup from 0 to lr_init over warmup_steps, then the same cosine from lr_init to
//        lr_final over the remaining steps. (RWKV-PEFT's wsd ignores lr_final and decays to 0,
//        and forces a 100-step warmup; we honour lr_final and warmup_steps.)
// s counts optimizer steps from the start of epoch 0 (epoch_begin * epoch_steps is added, as
// RWKV-PEFT V1 does, so a continued run resumes the curve); S = epoch_steps * (epoch_begin +
// epoch_count).
#pragma once

#include <cstdint>
#include <string>

namespace peftkit::train {

struct ScheduleSettings {
  std::string kind = "cos";  // "cos" or "wsd"
  double lr_init = 6e-4;
  double lr_final = 1e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;  // S
};

double learning_rate(const ScheduleSettings& settings, int64_t step);

}  // namespace peftkit::train

// trainer.hpp: `peftkit train` — one training run from a validated recipe.
//
// Optimizer steps are numbered from 0 over the whole run (epoch e, step k is e * epoch_steps + k);
// the batch of a step is a pure function of (seed, epoch, step), which is what makes a resumed
// run draw exactly the batches an uninterrupted one would.
//
//   Trainer trainer(recipe, registry, {.resume = true});
//   return trainer.run();   // exit code
#pragma once

#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"

namespace peftkit::train {

struct TrainFlags {
  bool resume = false;  // --resume: continue from the latest checkpoint, which must exist
  // The command that continues this run, printed when it is interrupted; empty: built from the
  // recipe's path alone.
  std::string resume_command;
};

// Exit codes of `peftkit train` beyond 0 (done) and 1 (an input error).
inline constexpr int kExitInterrupted = 130;
inline constexpr int kExitTooManyBadSteps = 4;

class Trainer {
 public:
  Trainer(const host::Recipe& recipe, const host::PluginRegistry& plugins, TrainFlags flags);
  ~Trainer();
  int run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peftkit::train

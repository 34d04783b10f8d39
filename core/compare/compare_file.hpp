// compare_file.hpp (host-internal): a `peftkit compare` file — one base model, one dataset with
// held-out eval data, one training budget, shared [train] settings, fixed prompts, and the runs:
//
//   [compare]    output = "out/compare"   device = "auto"   threads = 0
//   [budget]     steps = 40               # or tokens = 200000 (positions fed: micro_bsz x
//                evaluations = 4          #  accumulate_grad_batches x ctx_len per step)
//   [generation] prompts = ["User: Hi\n\nAssistant:"]   max_tokens = 48
//   [model] / [data] / [train]            # as in a recipe ([data] needs eval_file or
//   eval_fraction)
//   [[run]]      name = "state"
//   [run.peft]   method = "state"         # [run.peft.state], [run.quant], [run.train] overrides
//
// Each run becomes a training recipe validated exactly as a recipe file is, every error naming
// this file's line, before anything trains.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "host/recipe.hpp"

namespace peftkit::compare {

struct CompareRun {
  std::string name;
  host::Recipe recipe;  // [output] dir = <output>/runs/<name>; one epoch of the budget's steps
  int64_t steps = 0;
};

struct CompareFile {
  std::filesystem::path file, output_dir;
  host::Recipe
      base;  // [model], [data] and the shared [train], no PEFT method: the evaluation's settings
  std::vector<CompareRun> runs;
  std::vector<std::string> prompts;
  int64_t max_tokens = 0;
  int64_t budget_steps = 0, budget_tokens = 0;  // one of them is 0
};

CompareFile load_compare_file(const std::filesystem::path& file,
                              const host::PluginRegistry& plugins);

// The folder of a run's training output.
std::filesystem::path run_folder(const CompareFile& compare, const std::string& run_name);

}  // namespace peftkit::compare

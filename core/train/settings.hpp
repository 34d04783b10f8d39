// settings.hpp: what `peftkit train` reads from a recipe, read once into types. The recipe's
// Options stay the place errors point at (file:line); the trainer reads values from here.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "host/recipe.hpp"
#include "train/optimizer.hpp"
#include "train/schedule.hpp"

namespace peftkit::train {

struct TrainSettings {
  // Files.
  std::filesystem::path model_path;      // [model] path, resolved
  std::filesystem::path out_dir;         // [output] dir, resolved
  std::filesystem::path checkpoint_dir;  // out_dir / "checkpoints"
  std::filesystem::path quant_cache;     // [quant] cache_file, resolved; empty: none
  std::string quant_method;              // [quant] method ("none" when unquantized)
  // [data] path and eval_file, resolved, with their keys ({"path", "/data/train.jsonl"}).
  std::vector<std::pair<std::string, std::filesystem::path>> data_files;

  // Where and how it runs.
  std::string device;                          // [run] device as written ("auto", "cuda:1", ...)
  int64_t threads = 0;                         // [run] threads (0: LibTorch's default)
  std::chrono::seconds collective_timeout{0};  // [run] collective_timeout_s
  bool shard_optimizer = false;                // [run] shard_optimizer
  std::string backend;                         // [run] backend: auto, nccl or gloo
  std::string precision;                       // [train] precision as written ("auto", "bf16", ...)
  std::string kernel;                          // [train] kernel: auto, chunked or reference
  bool grad_cp = false, cuda_graphs = false, embedding_on_host = false;
  bool grad_cp_keep_wkv = false;  // under grad_cp, keep x070's WKV forward (no recomputation)

  // The trajectory.
  int64_t ctx_len = 0, chunk_ctx = 0, micro_bsz = 0, accumulate = 0;
  int64_t epoch_steps = 0, epoch_count = 0, epoch_begin = 0, epoch_save = 0;
  uint64_t seed = 0;
  double grad_clip = 0;
  ScheduleSettings schedule;  // total_steps covers epochs 0 .. epoch_begin + epoch_count
  AdamSettings adam;
  std::vector<std::string> train_parts;  // [peft] train_parts

  // Bookkeeping.
  int64_t keep_checkpoints = 0, max_bad_steps = 0, eval_every = 0;
  bool eval_at_start = true;
  bool resume_auto = false;  // [train] resume = "auto"

  // Optimizer steps this invocation's epochs hold.
  int64_t total_steps() const { return epoch_steps * epoch_count; }
  // The adapter file saved at the end of epoch e.
  std::filesystem::path adapter_file(int64_t epoch) const {
    return out_dir / ("rwkv-" + std::to_string(epoch) + ".pth");
  }
};

TrainSettings train_settings(const host::Recipe& recipe);

// The error for a training step that ran out of memory: the step, the device, the size the
// allocator was asked for (from its message) and what would lower the peak, naming only the
// settings not already in effect.
std::string out_of_memory_message(const TrainSettings& s, int64_t step, const std::string& device,
                                  const std::string& allocator_message);

}  // namespace peftkit::train

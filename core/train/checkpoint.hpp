// checkpoint.hpp: the resumable checkpoints of a training run (checkpoints/step-NNNNNNNNN.ckpt):
// the trained tensors, Adam's state, the run's counters and the CPU generator, with a fingerprint
// of the settings that decide the trajectory, so that a run only continues its own checkpoints.
//
//   RunProgress progress;
//   save_checkpoint(dir, trained, adam.state_dict(), progress, fingerprint, /*keep=*/2);
//   if (load_newest_checkpoint(dir, trained, adam, progress, fingerprint)) ...  // resumed
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "train/optimizer.hpp"

namespace peftkit::train {

// A run's counters over every invocation; checkpoints carry them.
struct RunProgress {
  int64_t step = 0;  // optimizer steps done
  int64_t bad_steps_in_a_row = 0, skipped_steps = 0, tokens_seen = 0;
  double epoch_loss_sum = 0;
  int64_t epoch_loss_count = 0;
  double train_seconds = 0, wall_seconds = 0;  // in optimizer steps, and in all
  int64_t peak_rss = 0, peak_gpu_allocated = 0, peak_gpu_reserved = 0;
};

// The checkpoints in a folder, oldest first (names sort by step).
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& folder);

// Creates the folder and removes the temporary files of writes that were killed midway.
void prepare_checkpoint_folder(const std::filesystem::path& folder);

// Writes the checkpoint of `progress.step` atomically and keeps only the newest `keep`.
// `adam_state` is Adam::state_dict() of every trained tensor (gathered from the ranks that own them
// when the optimizer is sharded).
void save_checkpoint(const std::filesystem::path& folder,
                     const std::vector<OptimizedTensor>& trained, const TensorMap& adam_state,
                     const RunProgress& progress, const std::string& fingerprint, int64_t keep);

// Loads the newest intact checkpoint (damaged ones are named, set aside as .damaged and skipped)
// into the trained tensors, Adam, the counters and the CPU generator. False when there is none;
// throws when none is intact or the newest belongs to a run with other settings.
bool load_newest_checkpoint(const std::filesystem::path& folder,
                            const std::vector<OptimizedTensor>& trained, Adam& adam,
                            RunProgress& progress, const std::string& fingerprint);

}  // namespace peftkit::train

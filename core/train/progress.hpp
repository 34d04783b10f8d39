// progress.hpp: what a training run reports as it goes: the progress line, RWKV-PEFT's
// train_log.txt epoch lines, and summary.json at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "train/checkpoint.hpp"

namespace peftkit::train {

// Local time, strftime-formatted.
std::string now_text(const char* format);
// "h:mm:ss".
std::string duration_text(double seconds);
// The peak resident set of this process, in bytes.
int64_t peak_resident_bytes();

struct ProgressLine {
  int64_t epoch = 0, epoch_count = 0, step = 0, total_steps = 0;
  double loss = 0, smoothed_loss = 0, lr = 0, tokens_per_s = 0, eta_seconds = 0;
  double peak_gpu_gib = -1;  // < 0: not on a GPU
  // "epoch 1/2 step 5/10 loss 5.2 (avg 5.3) lr 1.00e-03 900 tok/s ETA 0:00:07".
  std::string text() const;
};

// A train_log.txt line as RWKV-PEFT writes it: epoch, mean loss, perplexity, lr, time, epoch index.
std::string train_log_line(int64_t epoch_number, double mean_loss, double lr, int64_t epoch_index);

// What summary.json says besides the counters (`peftkit compare` reads it).
struct RunSummary {
  std::vector<std::string> methods;
  int64_t trainable_parameters = 0;
  std::filesystem::path adapter;  // the last adapter file
  std::string device, precision;
  bool cuda = false;
};
void write_summary(const std::filesystem::path& out_dir, const RunProgress& progress,
                   const RunSummary& summary);

}  // namespace peftkit::train

#include "train/progress.hpp"

#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "peftkit/tensor_io.hpp"

namespace peftkit::train {
namespace fs = std::filesystem;

std::string now_text(const char* format) {
  const std::time_t t = std::time(nullptr);
  std::tm local{};
  localtime_r(&t, &local);
  char buffer[64];
  std::strftime(buffer, sizeof buffer, format, &local);
  return buffer;
}

std::string duration_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buffer;
}

int64_t peak_resident_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

std::string ProgressLine::text() const {
  char line[256];
  std::snprintf(line, sizeof line,
                "epoch %lld/%lld step %lld/%lld loss %.4f (avg %.4f) lr %.2e %.0f tok/s ETA %s%s",
                static_cast<long long>(epoch + 1), static_cast<long long>(epoch_count),
                static_cast<long long>(step), static_cast<long long>(total_steps), loss,
                smoothed_loss, lr, tokens_per_s, duration_text(eta_seconds).c_str(),
                peak_gpu_gib >= 0
                    ? (" peak GPU " + std::to_string(peak_gpu_gib).substr(0, 5) + " GiB").c_str()
                    : "");
  return line;
}

std::string train_log_line(int64_t epoch_number, double mean_loss, double lr, int64_t epoch_index) {
  std::ostringstream line;
  line << epoch_number << " " << std::fixed << std::setprecision(6) << mean_loss << " "
       << std::setprecision(4) << std::exp(mean_loss) << " " << std::setprecision(8) << lr << " "
       << now_text("%Y-%m-%d %H:%M:%S") << " " << epoch_index << "\n";
  return line.str();
}

void write_summary(const fs::path& out_dir, const RunProgress& p, const RunSummary& s) {
  std::error_code ec;
  const auto adapter_bytes = fs::file_size(s.adapter, ec);
  auto on_gpu = [&](int64_t bytes) {
    return s.cuda ? nlohmann::json(bytes) : nlohmann::json(nullptr);
  };
  const nlohmann::json summary = {
      {"steps", p.step},
      {"skipped_steps", p.skipped_steps},
      {"tokens", p.tokens_seen},
      {"methods", s.methods},
      {"trainable_parameters", s.trainable_parameters},
      {"adapter_file", s.adapter.filename().string()},
      {"adapter_bytes", ec ? nlohmann::json(nullptr) : nlohmann::json(adapter_bytes)},
      {"train_seconds", p.train_seconds},
      {"wall_seconds", p.wall_seconds},
      {"tokens_per_s",
       p.train_seconds > 0 ? static_cast<double>(p.tokens_seen) / p.train_seconds : 0.0},
      {"device", s.device},
      {"precision", s.precision},
      {"peak_rss_bytes", p.peak_rss},
      {"peak_gpu_allocated_bytes", on_gpu(p.peak_gpu_allocated)},
      {"peak_gpu_reserved_bytes", on_gpu(p.peak_gpu_reserved)}};
  write_text_file(out_dir / "summary.json", summary.dump(2) + "\n");
}

}  // namespace peftkit::train

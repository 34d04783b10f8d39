#include "train/checkpoint.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cstdio>
#include <iterator>

#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::train {
namespace fs = std::filesystem;
namespace {

at::Tensor text_tensor(const std::string& text) {
  return at::tensor(std::vector<uint8_t>(text.begin(), text.end()), at::kByte);
}

std::string tensor_text(const at::Tensor& t) {
  const at::Tensor bytes = t.contiguous();
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                     static_cast<size_t>(bytes.numel()));
}

// The newest checkpoint whose every record matches its CRC-32, read; damaged ones are set aside
// (kept, never deleted) so that later saves and pruning never count them again.
std::pair<fs::path, TensorMap> newest_intact(const std::vector<fs::path>& all,
                                             const fs::path& folder) {
  std::string damaged;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      return {*it, read_pth(*it, Checksums::kVerify)};
    } catch (const Error& e) {
      const fs::path aside = it->string() + ".damaged";
      std::error_code ec;
      fs::rename(*it, aside, ec);
      log::warn(std::string("cannot use checkpoint ") + e.what() +
                (ec ? "" : "; kept as " + aside.string()) +
                (std::next(it) != all.rend()
                     ? "; falling back to " + std::next(it)->filename().string()
                     : ""));
      damaged += std::string("\n  ") + e.what();
    }
  }
  throw Error("no intact checkpoint in " + folder.string() + " to resume from:" + damaged);
}

}  // namespace

std::vector<fs::path> list_checkpoints(const fs::path& folder) {
  std::vector<fs::path> all;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().extension() == ".ckpt") all.push_back(entry.path());
  std::sort(all.begin(), all.end());
  return all;
}

void prepare_checkpoint_folder(const fs::path& folder) {
  fs::create_directories(folder);
  // Temporary files of a write that was killed midway are never a checkpoint.
  io::remove_stale_temporaries(folder);
}

void save_checkpoint(const fs::path& folder, const std::vector<OptimizedTensor>& trained,
                     const TensorMap& adam_state, const RunProgress& p,
                     const std::string& fingerprint, int64_t keep) {
  TensorMap state = adam_state;
  for (const auto& t : trained) state["param." + t.name] = t.param.detach();
  state["trainer.step"] = at::scalar_tensor(p.step, at::kLong);
  state["trainer.bad_steps_in_a_row"] = at::scalar_tensor(p.bad_steps_in_a_row, at::kLong);
  state["trainer.skipped_steps"] = at::scalar_tensor(p.skipped_steps, at::kLong);
  state["trainer.tokens_seen"] = at::scalar_tensor(p.tokens_seen, at::kLong);
  state["trainer.epoch_loss_sum"] = at::scalar_tensor(p.epoch_loss_sum, at::kDouble);
  state["trainer.epoch_loss_count"] = at::scalar_tensor(p.epoch_loss_count, at::kLong);
  state["trainer.train_seconds"] = at::scalar_tensor(p.train_seconds, at::kDouble);
  state["trainer.wall_seconds"] = at::scalar_tensor(p.wall_seconds, at::kDouble);
  state["trainer.peak_memory"] =
      at::tensor(std::vector<int64_t>{p.peak_rss, p.peak_gpu_allocated, p.peak_gpu_reserved});
  state["trainer.rng"] = at::detail::getDefaultCPUGenerator().get_state();
  state["trainer.fingerprint"] = text_tensor(fingerprint);
  char name[64];
  std::snprintf(name, sizeof name, "step-%09lld.ckpt", static_cast<long long>(p.step));
  const fs::path path = folder / name;
  write_pth(path, state);  // atomic: temporary file, fsync, rename
  log::info("checkpoint " + path.string());
  const std::vector<fs::path> all = list_checkpoints(folder);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove(all[i]);
}

bool load_newest_checkpoint(const fs::path& folder, const std::vector<OptimizedTensor>& trained,
                            Adam& adam, RunProgress& p, const std::string& fingerprint) {
  const std::vector<fs::path> all = list_checkpoints(folder);
  if (all.empty()) return false;
  const std::pair<fs::path, TensorMap> found = newest_intact(all, folder);
  const fs::path& path = found.first;
  const TensorMap& state = found.second;
  auto get = [&](const std::string& name) -> const at::Tensor& {
    auto it = state.find(name);
    if (it == state.end())
      throw Error(path.string() + ": not a peftkit checkpoint (no '" + name + "')");
    return it->second;
  };
  const std::string saved = tensor_text(get("trainer.fingerprint"));
  if (saved != fingerprint)
    throw Error(path.string() + ": the checkpoint belongs to a run with different settings (" +
                saved + "); this recipe has (" + fingerprint +
                "). Use another [output] dir or restore the settings");
  at::NoGradGuard no_grad;
  for (const auto& t : trained) {
    const at::Tensor& value = get("param." + t.name);
    if (value.sizes() != t.param.sizes())
      throw Error(path.string() + ": '" + t.name + "' has shape " + c10::str(value.sizes()) +
                  ", expected " + c10::str(t.param.sizes()));
    t.param.copy_(value);
  }
  adam.load_state_dict(state);
  p.step = get("trainer.step").item<int64_t>();
  p.bad_steps_in_a_row = get("trainer.bad_steps_in_a_row").item<int64_t>();
  p.skipped_steps = get("trainer.skipped_steps").item<int64_t>();
  p.tokens_seen = get("trainer.tokens_seen").item<int64_t>();
  p.epoch_loss_sum = get("trainer.epoch_loss_sum").item<double>();
  p.epoch_loss_count = get("trainer.epoch_loss_count").item<int64_t>();
  // Absent from checkpoints of older peftkit versions: the totals then count from here.
  if (state.count("trainer.train_seconds"))
    p.train_seconds = state.at("trainer.train_seconds").item<double>();
  if (state.count("trainer.wall_seconds"))
    p.wall_seconds = state.at("trainer.wall_seconds").item<double>();
  if (auto it = state.find("trainer.peak_memory"); it != state.end() && it->second.numel() == 3) {
    const at::Tensor peaks = it->second.to(at::kLong);
    p.peak_rss = peaks[0].item<int64_t>();
    p.peak_gpu_allocated = peaks[1].item<int64_t>();
    p.peak_gpu_reserved = peaks[2].item<int64_t>();
  }
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(get("trainer.rng").clone());
  log::info("resumed from " + path.string() + " at step " + std::to_string(p.step));
  return true;
}

}  // namespace peftkit::train

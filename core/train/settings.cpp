#include "train/settings.hpp"

#include <algorithm>
#include <regex>

namespace peftkit::train {

TrainSettings train_settings(const host::Recipe& recipe) {
  const Options& train = recipe.train;
  TrainSettings s;
  s.model_path = recipe.resolve_path(recipe.model.get_string("path"));
  s.out_dir = recipe.resolve_path(recipe.output.get_string("dir"));
  s.checkpoint_dir = s.out_dir / "checkpoints";
  if (const std::string& cache = recipe.quant.get_string("cache_file"); !cache.empty())
    s.quant_cache = recipe.resolve_path(cache);
  s.quant_method = recipe.quant.get_string("method");
  for (const char* key : {"path", "eval_file"})
    if (const std::string& value = recipe.data.get_string(key); !value.empty())
      s.data_files.emplace_back(key, recipe.resolve_path(value));

  s.device = recipe.run.get_string("device");
  s.threads = recipe.run.get_int("threads");
  s.collective_timeout = std::chrono::seconds(recipe.run.get_int("collective_timeout_s"));
  s.shard_optimizer = recipe.run.get_bool("shard_optimizer");
  s.backend = recipe.run.get_string("backend");
  s.precision = train.get_string("precision");
  s.kernel = train.get_string("kernel");
  s.grad_cp = train.get_bool("grad_cp");
  s.grad_cp_keep_wkv = train.get_bool("grad_cp_keep_wkv");
  s.cuda_graphs = train.get_bool("cuda_graphs");
  s.embedding_on_host = train.get_bool("embedding_on_host");

  s.ctx_len = train.get_int("ctx_len");
  s.chunk_ctx = train.get_int("chunk_ctx");
  s.micro_bsz = train.get_int("micro_bsz");
  s.accumulate = train.get_int("accumulate_grad_batches");
  s.epoch_steps = train.get_int("epoch_steps");
  s.epoch_count = train.get_int("epoch_count");
  s.epoch_begin = train.get_int("epoch_begin");
  s.epoch_save = train.get_int("epoch_save");
  s.seed = static_cast<uint64_t>(train.get_int("seed"));
  s.grad_clip = train.get_float("grad_clip");
  s.schedule = {train.get_string("lr_schedule"), train.get_float("lr_init"),
                train.get_float("lr_final"), train.get_int("warmup_steps"),
                s.epoch_steps * (s.epoch_begin + s.epoch_count)};
  s.adam = {train.get_float("beta1"), train.get_float("beta2"), train.get_float("adam_eps"),
            train.get_float("weight_decay")};
  s.train_parts = recipe.peft.get_string_list("train_parts");

  s.keep_checkpoints = train.get_int("keep_checkpoints");
  s.max_bad_steps = train.get_int("max_bad_steps");
  s.eval_every = recipe.data.get_int("eval_every");
  s.eval_at_start = recipe.data.get_bool("eval_at_start");
  s.resume_auto = train.get_string("resume") == "auto";
  return s;
}

std::string out_of_memory_message(const TrainSettings& s, int64_t step, const std::string& device,
                                  const std::string& allocator_message) {
  std::string text = "step " + std::to_string(step) + " ran out of memory on " + device;
  static const std::regex requested("Tried to allocate [0-9.]+ [KMGT]?i?B");
  if (std::smatch m; std::regex_search(allocator_message, m, requested))
    text += " (" + m.str() + ")";
  std::vector<std::string> tries;
  if (s.micro_bsz > 1)
    tries.push_back("a smaller [train] micro_bsz (now " + std::to_string(s.micro_bsz) +
                    "; accumulate_grad_batches keeps the batch)");
  if (!s.grad_cp) tries.push_back("[train] grad_cp = true (recomputes each block's activations)");
  if (s.grad_cp_keep_wkv)
    tries.push_back("[train] grad_cp_keep_wkv = false (recomputes the WKV forward too)");
  if (s.chunk_ctx == 0 || s.chunk_ctx > 512)
    tries.push_back("[train] chunk_ctx = " + std::to_string(std::min<int64_t>(512, s.ctx_len / 2)) +
                    " (trains the " + std::to_string(s.ctx_len) +
                    "-token samples in segments that carry the state)");
  if (s.quant_method == "none")
    tries.push_back("a quantized base ([quant] method = \"nf4\" or \"int8\")");
  text += "; to lower the peak try ";
  if (tries.empty()) return text + "a smaller model or a device with more memory";
  for (size_t i = 0; i < tries.size(); ++i)
    text += (i == 0 ? "" : i + 1 == tries.size() ? ", or " : ", ") + tries[i];
  return text;
}

}  // namespace peftkit::train

#include "train/trainer.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/autograd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "host/device.hpp"
#include "io/mapped_file.hpp"
#include "model/rwkv7_model.hpp"
#include "host/quantization.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/random.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"
#include "tokenizer/world_tokenizer.hpp"
#include "cuda_place_of.hpp"
#include "eval/data_split.hpp"
#include "eval/evaluator.hpp"
#include "train/batch.hpp"
#include "train/graphed_step.hpp"
#include "train/loss.hpp"
#include "train/optimizer.hpp"
#include "train/schedule.hpp"

namespace peftkit {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Set by SIGINT/SIGTERM; the loop finishes the current step, checkpoints and exits.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int signal) { g_stop_signal = signal; }

class SignalScope {
 public:
  SignalScope() {
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~SignalScope() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

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

at::Tensor text_tensor(const std::string& text) {
  return at::tensor(std::vector<uint8_t>(text.begin(), text.end()), at::kByte);
}
std::string tensor_text(const at::Tensor& t) {
  at::Tensor bytes = t.contiguous();
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel());
}

// The positions of a host batch that count in the loss.
int64_t counted_targets(const at::Tensor& targets) { return (targets != kIgnoreIndex).sum().item<int64_t>(); }

// The peak resident set of this process, in bytes.
int64_t peak_resident_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace

// The resumable checkpoints in a folder, oldest first (names sort by step).
std::vector<fs::path> list_checkpoints(const fs::path& folder) {
  std::vector<fs::path> all;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().extension() == ".ckpt") all.push_back(entry.path());
  std::sort(all.begin(), all.end());
  return all;
}

struct Trainer::Impl {
  const host::Recipe& recipe;
  const host::PluginRegistry& plugins;
  TrainFlags flags;

  fs::path out_dir, checkpoint_dir;
  at::Device device = at::kCPU;
  std::unique_ptr<Rwkv7Model> model;
  std::unique_ptr<WorldTokenizer> tokenizer;
  std::shared_ptr<Dataset> dataset, eval_dataset;
  SampleRange train_range, eval_range;
  std::vector<std::shared_ptr<PeftMethod>> methods;
  std::vector<OptimizedTensor> trained;
  std::map<std::string, at::ScalarType> base_dtypes;  // dtype of each tensor in the base file
  std::unique_ptr<Adam> adam;
  ScheduleSettings schedule;

  int64_t ctx_len = 0, chunk_ctx = 0, micro_bsz = 0, accumulate = 0, epoch_steps = 0, epoch_count = 0, epoch_begin = 0,
          epoch_save = 0, keep_checkpoints = 0, max_bad_steps = 0, eval_every = 0;
  uint64_t seed = 0;
  double grad_clip = 0;
  std::string precision;  // [train] precision resolved for the device: bf16, fp32 or tf32

  // Run state that checkpoints carry.
  int64_t step = 0;  // optimizer steps done
  int64_t bad_steps_in_a_row = 0, skipped_steps = 0, tokens_seen = 0;
  // Over every invocation of the run: seconds in optimizer steps, seconds in all, peak memory.
  double train_seconds = 0, wall_seconds = 0;
  int64_t peak_rss = 0, peak_gpu_allocated = 0, peak_gpu_reserved = 0;
  double epoch_loss_sum = 0;
  int64_t epoch_loss_count = 0;

  // Permutation cache for the sample order of one (epoch, round).
  int64_t cached_epoch = -1, cached_round = -1;
  std::vector<int64_t> permutation;

  Impl(const host::Recipe& r, const host::PluginRegistry& p, TrainFlags f) : recipe(r), plugins(p), flags(f) {}

  void setup();
  // Throws naming the [output] dir when a file the run would write (or prune) is one of its inputs.
  void refuse_writing_over_inputs() const;
  void select_trainable();
  void open_data();
  bool load_checkpoint();
  void save_checkpoint();
  void save_trained(int64_t epoch_number);
  int64_t sample_index(int64_t epoch, int64_t slot);
  // The training batch of `count` samples from slot `first_slot` of `epoch` (host tensors).
  std::pair<at::Tensor, at::Tensor> batch(int64_t epoch, int64_t first_slot, int64_t count);
  EvalResult evaluate();
  // An evaluation's numbers as they go into a metrics.jsonl line, and into the log.
  void report_evaluation(nlohmann::json& line);
  void write_summary(double seconds) const;
  // Cross-entropy + L2Wrap, fused with the head unless the head is quantized; from `state` (null:
  // the initial state), which the forward advances; scaled as a piece of `whole` when given.
  at::Tensor loss_of(const at::Tensor& inputs, const at::Tensor& targets, Rwkv7State* state = nullptr,
                     const WholeBatch* whole = nullptr);
  // Forward and backward of one micro-batch (the loss divided by `accumulate` for the backward);
  // returns its loss. Longer than chunk_ctx: through segments that carry the state.
  at::Tensor micro_step(const at::Tensor& inputs, const at::Tensor& targets);
  at::Tensor segmented_micro_step(const at::Tensor& inputs, const at::Tensor& targets);
  // The segment k of a [B, T] batch.
  at::Tensor segment(const at::Tensor& x, int64_t k) const {
    return chunk_ctx > 0 ? x.slice(1, k * chunk_ctx, std::min(x.size(1), (k + 1) * chunk_ctx)) : x;
  }
  int64_t segments(const at::Tensor& x) const {
    return chunk_ctx > 0 ? (x.size(1) + chunk_ctx - 1) / chunk_ctx : 1;
  }
  std::string fingerprint() const;
  int run();
};

Trainer::Trainer(const host::Recipe& recipe, const host::PluginRegistry& plugins, TrainFlags flags)
    : impl_(std::make_unique<Impl>(recipe, plugins, flags)) {}
Trainer::~Trainer() = default;
int Trainer::run() { return impl_->run(); }

void Trainer::Impl::setup() {
  const Options& train = recipe.train;
  ctx_len = train.get_int("ctx_len");
  chunk_ctx = train.get_int("chunk_ctx");
  micro_bsz = train.get_int("micro_bsz");
  accumulate = train.get_int("accumulate_grad_batches");
  epoch_steps = train.get_int("epoch_steps");
  epoch_count = train.get_int("epoch_count");
  epoch_begin = train.get_int("epoch_begin");
  epoch_save = train.get_int("epoch_save");
  keep_checkpoints = train.get_int("keep_checkpoints");
  max_bad_steps = train.get_int("max_bad_steps");
  grad_clip = train.get_float("grad_clip");
  seed = static_cast<uint64_t>(train.get_int("seed"));
  eval_every = recipe.data.get_int("eval_every");

  out_dir = recipe.resolve_path(recipe.output.get_string("dir"));
  checkpoint_dir = out_dir / "checkpoints";
  refuse_writing_over_inputs();
  fs::create_directories(checkpoint_dir);
  // Temporary files of a write that was killed midway are never a checkpoint; remove them.
  for (const auto& entry : fs::directory_iterator(checkpoint_dir))
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(entry.path());
  log::add_file(out_dir / "peftkit.log");
  const std::string resolved_recipe = host::format_recipe(recipe);
  io::write_file_atomically(out_dir / "recipe.toml", [&](std::FILE* out) {
    io::write_all(out, resolved_recipe.data(), resolved_recipe.size(), out_dir / "recipe.toml");
  });

  try {
    device = host::resolve_device(recipe.run.get_string("device"));
  } catch (const Error& e) {
    throw recipe.run.error("device", e.what());
  }
  if (const int64_t threads = recipe.run.get_int("threads"); threads > 0) at::set_num_threads(static_cast<int>(threads));
  at::manual_seed(seed);

  precision = host::resolve_precision(train.get_string("precision"), device);
  // tf32 differs from fp32 only in CUDA matmuls; fp32 turns TF32 off explicitly.
  at::globalContext().setAllowTF32CuBLAS(precision == "tf32");
  const at::ScalarType dtype = precision == "bf16" ? at::kBFloat16 : at::kFloat;
  const fs::path model_path = recipe.resolve_path(recipe.model.get_string("path"));
  TensorMap base = read_tensor_file(model_path).tensors;
  for (const auto& [name, t] : base) base_dtypes[name] = t.scalar_type();
  const host::QuantizedBase quantization = host::quantized_base(recipe, plugins, model_path);
  ModelOptions model_options{dtype, device};
  quantization.apply(model_options);
  const std::string& kernel = train.get_string("kernel");
  if (kernel == "chunked" && !device.is_cuda())
    throw train.error("kernel", "\"chunked\" runs the CUDA kernels, but training runs on " + device.str() +
                                    " (use \"auto\" or \"reference\")");
  model_options.reference_kernels = kernel == "reference";
  model = std::make_unique<Rwkv7Model>(base, model_options, model_path.string());
  if (quantization.quantizer) {
    quantization.save_cache(*model);
    char size[64];
    std::snprintf(size, sizeof size, "%.2f MiB", static_cast<double>(model->linear_weight_bytes()) / (1 << 20));
    log::info("quantized the frozen linear weights with " + quantization.method + ": " + size);
  }
  model->set_gradient_checkpointing(train.get_bool("grad_cp"));
  log::info("model " + model_path.string() + ": RWKV-7 " + model->config().describe() + ", " + precision + " on " +
            device.str());

  try {
    tokenizer = WorldTokenizer::load(find_world_vocab());
  } catch (const Error& e) {
    log::warn(std::string("no tokenizer: ") + e.what());
  }
  open_data();
  select_trainable();

  schedule = {train.get_string("lr_schedule"), train.get_float("lr_init"), train.get_float("lr_final"),
              train.get_int("warmup_steps"), epoch_steps * (epoch_begin + epoch_count)};
  adam = std::make_unique<Adam>(trained, AdamSettings{train.get_float("beta1"), train.get_float("beta2"),
                                                      train.get_float("adam_eps"), train.get_float("weight_decay")});
}

void Trainer::Impl::refuse_writing_over_inputs() const {
  // Every file the run reads, and every file it may write (or delete, in the checkpoint folder).
  std::vector<std::pair<std::string, fs::path>> inputs = {{"the recipe", recipe.file},
                                                          {"[model] path", recipe.resolve_path(recipe.model.get_string("path"))}};
  for (const char* key : {"path", "eval_file"}) {
    const std::string& value = recipe.data.get_string(key);
    if (value.empty()) continue;
    const fs::path path = recipe.resolve_path(value);
    for (const char* extension : {"", ".bin", ".idx"})
      inputs.push_back({std::string("[data] ") + key, path.string() + extension});
  }
  std::vector<fs::path> outputs;
  for (const char* name : {"recipe.toml", "peftkit.log", "train_log.txt", "metrics.jsonl", "summary.json"}) outputs.push_back(out_dir / name);
  for (int64_t e = epoch_begin; e < epoch_begin + epoch_count; ++e)
    outputs.push_back(out_dir / ("rwkv-" + std::to_string(e) + ".pth"));
  if (const std::string& cache = recipe.quant.get_string("cache_file"); !cache.empty())
    outputs.push_back(recipe.resolve_path(cache));
  std::error_code ec;
  for (const auto& [what, input] : inputs) {
    if (!fs::exists(input, ec)) continue;
    if (fs::equivalent(input.parent_path().empty() ? "." : input.parent_path(), checkpoint_dir, ec))
      throw recipe.output.error("dir", what + " " + input.string() + " lies in the run's checkpoint folder, which "
                                       "the run prunes; move it or choose another [output] dir");
    for (const auto& output : outputs)
      if (fs::exists(output, ec) && fs::equivalent(input, output, ec))
        throw recipe.output.error("dir", "the run would write " + output.string() + ", which is " + what +
                                             "; training never writes over its inputs: move the file or choose "
                                             "another [output] dir");
  }
}

void Trainer::Impl::open_data() {
  DataSplit split = open_data_split(recipe, plugins, model->config().vocab, tokenizer.get());
  dataset = split.train;
  eval_dataset = split.eval;
  train_range = split.train_range;
  eval_range = split.eval_range;
  if (eval_every > 0 && !eval_dataset)
    throw recipe.data.error("eval_every", "needs eval_file or eval_fraction");
  log::info("data " + dataset->describe() + "; training on " + std::to_string(train_range.size()) + " samples" +
            (eval_dataset ? ", evaluating on " + std::to_string(eval_range.size()) : std::string()));
}

void Trainer::Impl::select_trainable() {
  const auto& parts = recipe.peft.get_string_list("train_parts");
  for (const auto& table : recipe.peft_methods) {
    auto plugin = plugins.get<PeftPlugin>(table.plugin);
    auto method = host::keep_loaded(plugin->create(table.options), plugin);
    method->attach(*model);
    // [peft.<method>] lr_scale: state tuning wants ~100x LoRA's learning rate in a mixed run.
    const double method_scale = table.options.get_float(host::kMethodLrScaleKey);
    for (auto& t : method->trainable_tensors())
      trained.push_back({t.name, t.tensor, t.lr_scale * method_scale, t.weight_decay});
    methods.push_back(method);
  }
  // No method and no train_parts: a full fine-tune, as RWKV-PEFT's --peft none.
  const bool full = recipe.peft_methods.empty() && parts.empty();
  for (auto& t : model->make_trainable([&](const std::string& name) {
         if (full) return true;
         for (const auto& part : parts)
           if (name.find(part) != std::string::npos) return true;
         return false;
       }))
    trained.push_back({t.name, t.tensor, t.lr_scale, t.weight_decay});
  if (!parts.empty() && trained.empty())
    throw recipe.peft.error("train_parts", "matches no tensor of the model");
  int64_t count = 0;
  for (const auto& t : trained) count += t.param.numel();
  std::ostringstream message;
  message << "trainable parameters: " << count << " in " << trained.size() << " tensors"
          << (full ? " (full fine-tune)" : "");
  log::info(message.str());
  std::cout << message.str() << std::endl;
}

std::string Trainer::Impl::fingerprint() const {
  // What decides the trajectory; a checkpoint from a run that differed here cannot be continued.
  std::ostringstream out;
  out << "model=" << recipe.model.get_string("path") << ";data=" << recipe.data.get_string("format") << ":"
      << recipe.data.get_string("path") << ";peft=" << format_option_value(recipe.peft.get("method"))
      << ";parts=" << format_option_value(recipe.peft.get("train_parts"))
      << ";quant=" << format_option_value(recipe.quant.get("method"));
  for (const char* key : {"ctx_len", "micro_bsz", "accumulate_grad_batches", "epoch_steps", "seed"})
    out << ";" << key << "=" << format_option_value(recipe.train.get(key));
  // As resolved: "auto" must not resume in another precision on another device.
  out << ";precision=" << format_option_value(OptionValue(precision));
  return out.str();
}

int64_t Trainer::Impl::sample_index(int64_t epoch, int64_t slot) {
  // Each epoch draws a fresh permutation of the training samples; an epoch that needs more
  // samples than there are moves on to another permutation (round).
  const int64_t n = train_range.size();
  const int64_t round = slot / n;
  if (epoch != cached_epoch || round != cached_round) {
    permutation.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) permutation[i] = i;
    std::mt19937_64 random(mix64(seed ^ mix64(static_cast<uint64_t>(epoch) * 1000003ull + static_cast<uint64_t>(round))));
    for (int64_t i = n - 1; i > 0; --i) std::swap(permutation[i], permutation[random() % static_cast<uint64_t>(i + 1)]);
    cached_epoch = epoch;
    cached_round = round;
  }
  return train_range.begin + permutation[slot % n];
}

std::pair<at::Tensor, at::Tensor> Trainer::Impl::batch(int64_t epoch, int64_t first_slot, int64_t count) {
  std::vector<Sample> samples;
  for (int64_t b = 0; b < count; ++b) samples.push_back(dataset->sample(sample_index(epoch, first_slot + b)));
  return pad_batch(samples, ctx_len);
}

at::Tensor Trainer::Impl::loss_of(const at::Tensor& inputs, const at::Tensor& targets, Rwkv7State* state,
                                  const WholeBatch* whole) {
  const at::Tensor head = model->trainable_head_weight();
  if (!head.defined()) return cross_entropy_l2wrap(model->forward(inputs, state), targets, whole);
  return head_cross_entropy_l2wrap(model->forward_hidden(inputs, state), head, targets, whole);
}

at::Tensor Trainer::Impl::micro_step(const at::Tensor& inputs, const at::Tensor& targets) {
  if (segments(inputs) > 1) return segmented_micro_step(inputs, targets);
  const at::Tensor loss = loss_of(inputs, targets);
  (loss / static_cast<double>(accumulate)).backward();
  return loss.detach();
}

namespace {

// The tensors of a state, in a fixed order.
std::vector<at::Tensor*> state_tensors(Rwkv7State& state) {
  std::vector<at::Tensor*> out;
  for (auto* kind : {&state.att_shift, &state.wkv, &state.ffn_shift})
    for (auto& t : *kind) out.push_back(&t);
  return out;
}

}  // namespace

// Exact backpropagation through a sample longer than chunk_ctx, with the activations of one
// segment at a time: a pass without autograd keeps only the state entering each segment; then,
// last segment first, each segment runs again with autograd from its entry state, and its backward
// takes the gradient of its exit state from the segment after it (the kernels' final-state
// gradient) and hands its entry state's gradient to the segment before. The pieces' losses are
// scaled as parts of the whole batch, so loss and gradients are those of the unsegmented batch.
// (RWKV-PEFT's infctx cuts the gradient at every segment boundary.)
at::Tensor Trainer::Impl::segmented_micro_step(const at::Tensor& inputs, const at::Tensor& targets) {
  const int64_t count = segments(inputs);
  const WholeBatch whole = whole_batch(targets, device);
  // The second pass must draw the random numbers (dropout) of the first; a graph capture cannot
  // read the generator, and the trainer captures only steps that draw none.
  at::Generator generator = at::globalContext().defaultGenerator(device);
  const bool replay_rng = !kernels::cuda::capturing_graph(whole.counted);
  std::vector<Rwkv7State> entries(static_cast<size_t>(count));
  std::vector<at::Tensor> rng(static_cast<size_t>(count));
  {
    at::NoGradGuard no_grad;
    Rwkv7State state = model->initial_state(inputs.size(0));
    for (int64_t k = 0; k < count; ++k) {
      entries[k] = state;  // the forward replaces the state's tensors, never writes into them
      if (replay_rng) rng[k] = generator.get_state();
      if (k + 1 < count) model->forward_hidden(segment(inputs, k), &state);
    }
  }
  at::Tensor total = at::zeros({}, whole.counted.options().dtype(at::kFloat));
  at::Tensor rng_after;
  std::vector<at::Tensor> exit_grads;  // of the state leaving segment k, from segment k + 1
  for (int64_t k = count - 1; k >= 0; --k) {
    if (replay_rng) generator.set_state(rng[k]);
    // Segment 0 starts from the initial state itself (with autograd to a trained one).
    Rwkv7State state = k == 0 ? model->initial_state(inputs.size(0)) : entries[k];
    std::vector<at::Tensor> entry_leaves;
    if (k > 0) {
      for (at::Tensor* t : state_tensors(state)) {
        *t = t->detach().requires_grad_(true);
        entry_leaves.push_back(*t);
      }
    }
    const at::Tensor loss = loss_of(segment(inputs, k), segment(targets, k), &state, &whole);
    if (k == count - 1 && replay_rng) rng_after = generator.get_state();
    std::vector<at::Tensor> roots{loss / static_cast<double>(accumulate)}, root_grads{at::ones_like(loss)};
    const std::vector<at::Tensor*> exits = state_tensors(state);
    for (size_t i = 0; i < exit_grads.size(); ++i)
      if (exit_grads[i].defined() && exits[i]->requires_grad()) {
        roots.push_back(*exits[i]);
        root_grads.push_back(exit_grads[i]);
      }
    torch::autograd::backward(roots, root_grads);
    exit_grads.clear();
    for (const at::Tensor& leaf : entry_leaves) exit_grads.push_back(leaf.grad());
    total += loss.detach();
  }
  if (replay_rng) generator.set_state(rng_after);
  return total;
}

EvalResult Trainer::Impl::evaluate() {
  return peftkit::evaluate(*model, *eval_dataset, {eval_range.begin, eval_range.end}, {micro_bsz, ctx_len, chunk_ctx});
}

void Trainer::Impl::report_evaluation(nlohmann::json& line) {
  const EvalResult result = evaluate();
  auto number = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  line["eval_loss"] = number(result.loss());
  line["eval_ppl"] = number(result.perplexity());
  line["eval_accuracy"] = number(result.accuracy());
  line["eval_tokens"] = result.total.tokens;
  log::info("step " + std::to_string(step) + ": eval loss " + std::to_string(result.loss()) + ", perplexity " +
            std::to_string(result.perplexity()) + ", token accuracy " + std::to_string(result.accuracy()));
}

void Trainer::Impl::write_summary(double seconds) const {
  int64_t parameters = 0;
  for (const auto& t : trained) parameters += t.param.numel();
  nlohmann::json methods = nlohmann::json::array();
  for (const auto& table : recipe.peft_methods) methods.push_back(table.plugin);
  const fs::path adapter = out_dir / ("rwkv-" + std::to_string(epoch_begin + epoch_count - 1) + ".pth");
  std::error_code ec;
  const auto adapter_bytes = fs::file_size(adapter, ec);
  const nlohmann::json summary = {
      {"steps", step},
      {"skipped_steps", skipped_steps},
      {"tokens", tokens_seen},
      {"methods", methods},
      {"trainable_parameters", parameters},
      {"adapter_file", adapter.filename().string()},
      {"adapter_bytes", ec ? nlohmann::json(nullptr) : nlohmann::json(adapter_bytes)},
      {"train_seconds", train_seconds},
      {"wall_seconds", seconds},
      {"tokens_per_s", train_seconds > 0 ? static_cast<double>(tokens_seen) / train_seconds : 0.0},
      {"device", device.str()},
      {"precision", precision},
      {"peak_rss_bytes", peak_rss},
      {"peak_gpu_allocated_bytes", device.is_cuda() ? nlohmann::json(peak_gpu_allocated) : nlohmann::json(nullptr)},
      {"peak_gpu_reserved_bytes", device.is_cuda() ? nlohmann::json(peak_gpu_reserved) : nlohmann::json(nullptr)}};
  write_text_file(out_dir / "summary.json", summary.dump(2) + "\n");
}

void Trainer::Impl::save_trained(int64_t epoch_number) {
  TensorMap out;
  const TensorMap weights = model->weights();
  for (const auto& t : trained)
    if (weights.count(t.name)) out[t.name] = weights.at(t.name).detach().to(base_dtypes.at(t.name));
  for (const auto& method : methods)
    for (const auto& [name, tensor] : method->state_dict()) out[name] = tensor;
  const fs::path path = out_dir / ("rwkv-" + std::to_string(epoch_number) + ".pth");
  write_pth(path, out);
  log::info("saved " + path.string() + " (" + std::to_string(out.size()) + " tensors)");
}

void Trainer::Impl::save_checkpoint() {
  TensorMap state = adam->state_dict();
  for (const auto& t : trained) state["param." + t.name] = t.param.detach();
  state["trainer.step"] = at::scalar_tensor(step, at::kLong);
  state["trainer.bad_steps_in_a_row"] = at::scalar_tensor(bad_steps_in_a_row, at::kLong);
  state["trainer.skipped_steps"] = at::scalar_tensor(skipped_steps, at::kLong);
  state["trainer.tokens_seen"] = at::scalar_tensor(tokens_seen, at::kLong);
  state["trainer.epoch_loss_sum"] = at::scalar_tensor(epoch_loss_sum, at::kDouble);
  state["trainer.epoch_loss_count"] = at::scalar_tensor(epoch_loss_count, at::kLong);
  state["trainer.train_seconds"] = at::scalar_tensor(train_seconds, at::kDouble);
  state["trainer.wall_seconds"] = at::scalar_tensor(wall_seconds, at::kDouble);
  state["trainer.peak_memory"] = at::tensor(std::vector<int64_t>{peak_rss, peak_gpu_allocated, peak_gpu_reserved});
  state["trainer.rng"] = at::detail::getDefaultCPUGenerator().get_state();
  state["trainer.fingerprint"] = text_tensor(fingerprint());
  char name[64];
  std::snprintf(name, sizeof name, "step-%09lld.ckpt", static_cast<long long>(step));
  const fs::path path = checkpoint_dir / name;
  write_pth(path, state);  // atomic: temporary file, fsync, rename
  log::info("checkpoint " + path.string());
  // Keep the newest keep_checkpoints.
  const std::vector<fs::path> all = list_checkpoints(checkpoint_dir);
  for (size_t i = 0; i + static_cast<size_t>(keep_checkpoints) < all.size(); ++i) fs::remove(all[i]);
}

bool Trainer::Impl::load_checkpoint() {
  const std::vector<fs::path> all = list_checkpoints(checkpoint_dir);
  if (all.empty()) return false;
  // The newest checkpoint whose every record matches its CRC-32; damaged ones are named and skipped.
  fs::path path;
  TensorMap state;
  std::string damaged;
  for (auto it = all.rbegin(); it != all.rend() && path.empty(); ++it) {
    try {
      state = read_pth(*it, Checksums::kVerify);
      path = *it;
    } catch (const Error& e) {
      // Set aside (kept, never deleted) so that later saves and pruning never count it again.
      const fs::path aside = it->string() + ".damaged";
      std::error_code ec;
      fs::rename(*it, aside, ec);
      log::warn(std::string("cannot use checkpoint ") + e.what() + (ec ? "" : "; kept as " + aside.string()) +
                (std::next(it) != all.rend() ? "; falling back to " + std::next(it)->filename().string() : ""));
      damaged += std::string("\n  ") + e.what();
    }
  }
  if (path.empty())
    throw Error("no intact checkpoint in " + checkpoint_dir.string() + " to resume from:" + damaged);
  auto get = [&](const std::string& name) -> const at::Tensor& {
    auto it = state.find(name);
    if (it == state.end()) throw Error(path.string() + ": not a peftkit checkpoint (no '" + name + "')");
    return it->second;
  };
  const std::string saved = tensor_text(get("trainer.fingerprint"));
  if (saved != fingerprint())
    throw Error(path.string() + ": the checkpoint belongs to a run with different settings (" + saved +
                "); this recipe has (" + fingerprint() + "). Use another [output] dir or restore the settings");
  at::NoGradGuard no_grad;
  for (const auto& t : trained) {
    const at::Tensor& value = get("param." + t.name);
    if (value.sizes() != t.param.sizes())
      throw Error(path.string() + ": '" + t.name + "' has shape " + c10::str(value.sizes()) + ", expected " +
                  c10::str(t.param.sizes()));
    t.param.copy_(value);
  }
  adam->load_state_dict(state);
  step = get("trainer.step").item<int64_t>();
  bad_steps_in_a_row = get("trainer.bad_steps_in_a_row").item<int64_t>();
  skipped_steps = get("trainer.skipped_steps").item<int64_t>();
  tokens_seen = get("trainer.tokens_seen").item<int64_t>();
  epoch_loss_sum = get("trainer.epoch_loss_sum").item<double>();
  epoch_loss_count = get("trainer.epoch_loss_count").item<int64_t>();
  // Absent from checkpoints of older peftkit versions: the totals then count from here.
  if (state.count("trainer.train_seconds")) train_seconds = state.at("trainer.train_seconds").item<double>();
  if (state.count("trainer.wall_seconds")) wall_seconds = state.at("trainer.wall_seconds").item<double>();
  if (auto it = state.find("trainer.peak_memory"); it != state.end() && it->second.numel() == 3) {
    const at::Tensor peaks = it->second.to(at::kLong);
    peak_rss = peaks[0].item<int64_t>();
    peak_gpu_allocated = peaks[1].item<int64_t>();
    peak_gpu_reserved = peaks[2].item<int64_t>();
  }
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(get("trainer.rng").clone());
  // After a hard kill the metrics may run past the checkpoint; those steps will be redone.
  const fs::path metrics_path = out_dir / "metrics.jsonl";
  if (fs::exists(metrics_path)) {
    std::ifstream in(metrics_path);
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      auto parsed = nlohmann::json::parse(line, nullptr, false);
      if (!parsed.is_discarded() && parsed.value("step", int64_t{0}) <= step) kept += line + "\n";
    }
    in.close();
    io::write_file_atomically(metrics_path,
                              [&](std::FILE* out) { io::write_all(out, kept.data(), kept.size(), metrics_path); });
  }
  log::info("resumed from " + path.string() + " at step " + std::to_string(step));
  return true;
}

int Trainer::Impl::run() {
  setup();
  const bool auto_resume = recipe.train.get_string("resume") == "auto";
  bool resumed = false;
  if (flags.resume || auto_resume) {
    resumed = load_checkpoint();
    if (!resumed && flags.resume)
      throw Error("--resume: no checkpoint in " + checkpoint_dir.string() + " to resume from");
  } else {
    if (!list_checkpoints(checkpoint_dir).empty())
        throw Error(checkpoint_dir.string() + " already holds checkpoints of an earlier run: continue it with "
                    "--resume (or [train] resume = \"auto\"), or choose another [output] dir");
  }
  io::AppendFile train_log(out_dir / "train_log.txt");
  train_log.append("NEW RUN " + now_text("%Y-%m-%d-%H-%M-%S") + "\n" + host::format_recipe(recipe) + "\n");
  // Metrics without a checkpoint are of a run killed before its first one; this run redoes them.
  if (!resumed) fs::remove(out_dir / "metrics.jsonl");
  io::AppendFile metrics(out_dir / "metrics.jsonl");
  const bool terminal = ::isatty(STDERR_FILENO);
  const int64_t total_steps = epoch_steps * epoch_count;
  const int64_t report_every = std::max<int64_t>(1, total_steps / 20);
  SignalScope signals;
  model->set_training(true);
  // On a GPU everything runs on a side stream: CUDA graphs cannot capture the default one.
  std::optional<c10::cuda::CUDAStreamGuard> side_stream;
  if (device.is_cuda()) side_stream.emplace(c10::cuda::getStreamFromPool(false, device.index()));
  GraphedStep graphed_step(
      [&](const at::Tensor& inputs, const at::Tensor& targets) { return micro_step(inputs, targets); },
      device, recipe.train.get_bool("cuda_graphs"));
  const auto started = Clock::now();
  const double wall_before = wall_seconds;
  // Every run's metrics start from the model as it was before training.
  if (eval_dataset && step == 0 && recipe.data.get_bool("eval_at_start")) {
    nlohmann::json line = {{"step", 0}, {"epoch", epoch_begin}, {"tokens", 0}};
    report_evaluation(line);
    metrics.append(line.dump() + "\n");
  }
  const int64_t first_step = step;
  int64_t applied_steps = 0;  // optimizer updates made by this invocation
  double smoothed = std::nan("");
  int exit_code = 0;

  while (step < total_steps) {
    const int64_t epoch = step / epoch_steps, in_epoch = step % epoch_steps;
    const double lr = learning_rate(schedule, step + epoch_begin * epoch_steps);
    const auto step_started = Clock::now();
    adam->zero_grad();
    double loss_sum = 0;
    int64_t step_tokens = 0;
    const int64_t replays_before = graphed_step.replays();
    for (int64_t micro = 0; micro < accumulate; ++micro) {
      auto [inputs, targets] = batch(epoch, (in_epoch * accumulate + micro) * micro_bsz, micro_bsz);
      loss_sum += graphed_step.run(inputs, targets).item<double>();
      step_tokens += counted_targets(targets);
    }
    const double loss_value = loss_sum / static_cast<double>(accumulate);
    // A step whose batches have no target that counts (prompts longer than ctx_len, empty
    // documents) has nothing to learn from: it updates nothing.
    const bool no_targets = step_tokens == 0;
    const double grad_norm = no_targets ? 0.0 : adam->clip_grad_norm(grad_clip);
    const bool bad = !no_targets && (!std::isfinite(loss_value) || !std::isfinite(grad_norm));
    if (no_targets) {
      ++skipped_steps;
      log::warn("step " + std::to_string(step + 1) + ": no target token counts in its batches (every position is "
                "padding or masked); step skipped, nothing updated");
    } else if (bad) {
      ++bad_steps_in_a_row;
      ++skipped_steps;
      log::warn("step " + std::to_string(step + 1) + ": non-finite loss or gradient (loss " + std::to_string(loss_value) +
                ", gradient norm " + std::to_string(grad_norm) + "); step skipped");
    } else {
      adam->step(lr);
      ++applied_steps;
      bad_steps_in_a_row = 0;
      epoch_loss_sum += loss_value;
      ++epoch_loss_count;
      smoothed = std::isnan(smoothed) ? loss_value : 0.95 * smoothed + 0.05 * loss_value;
    }
    ++step;
    tokens_seen += step_tokens;
    const double step_seconds = std::chrono::duration<double>(Clock::now() - step_started).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
    const double rate = static_cast<double>(step_tokens) / std::max(step_seconds, 1e-9);
    const double eta = elapsed / static_cast<double>(step - first_step) * static_cast<double>(total_steps - step);

    train_seconds += step_seconds;
    wall_seconds = wall_before + elapsed;
    peak_rss = std::max(peak_rss, peak_resident_bytes());
    if (device.is_cuda()) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
      peak_gpu_allocated = std::max<int64_t>(peak_gpu_allocated, stats.allocated_bytes[0].peak);
      peak_gpu_reserved = std::max<int64_t>(peak_gpu_reserved, stats.reserved_bytes[0].peak);
    }
    const double peak_gib = static_cast<double>(peak_gpu_allocated) / (1 << 30);
    nlohmann::json line = {{"step", step}, {"epoch", epoch_begin + epoch}, {"loss", bad || no_targets ? nullptr : nlohmann::json(loss_value)},
                           {"lr", lr}, {"grad_norm", std::isfinite(grad_norm) ? nlohmann::json(grad_norm) : nullptr},
                           {"tokens", tokens_seen}, {"tokens_per_s", rate}, {"skipped", bad || no_targets}};
    if (device.is_cuda()) {
      line["peak_gpu_gib"] = peak_gib;
      line["cuda_graph"] = graphed_step.replays() > replays_before;
    }
    const bool epoch_end = step % epoch_steps == 0;
    if (eval_dataset && ((eval_every > 0 && step % eval_every == 0) || epoch_end)) report_evaluation(line);
    metrics.append(line.dump() + "\n");

    char progress[256];
    std::snprintf(progress, sizeof progress, "epoch %lld/%lld step %lld/%lld loss %.4f (avg %.4f) lr %.2e %.0f tok/s ETA %s%s",
                  static_cast<long long>(epoch + 1), static_cast<long long>(epoch_count),
                  static_cast<long long>(step), static_cast<long long>(total_steps), loss_value, smoothed, lr, rate,
                  duration_text(eta).c_str(),
                  device.is_cuda() ? (" peak GPU " + std::to_string(peak_gib).substr(0, 5) + " GiB").c_str() : "");
    if (terminal) {
      std::fprintf(stderr, "\r%s\033[K", progress);
      std::fflush(stderr);
    } else if (step % report_every == 0 || step == total_steps) {
      log::info(progress);
    }

    if (epoch_end) {
      if (terminal) std::fprintf(stderr, "\n");
      const double mean = epoch_loss_count ? epoch_loss_sum / static_cast<double>(epoch_loss_count) : std::nan("");
      std::ostringstream log_line;
      log_line << (epoch_begin + epoch) << " " << std::fixed << std::setprecision(6) << mean << " "
               << std::setprecision(4) << std::exp(mean) << " " << std::setprecision(8) << lr << " "
               << now_text("%Y-%m-%d %H:%M:%S") << " " << epoch << "\n";
      train_log.append(log_line.str());
      epoch_loss_sum = 0;
      epoch_loss_count = 0;
      // RWKV-PEFT saves at epochs 0, epoch_save, 2 * epoch_save, ... and at the last one.
      if ((epoch_save > 0 && epoch % epoch_save == 0) || epoch == epoch_count - 1) {
        save_trained(epoch_begin + epoch);
        save_checkpoint();
      }
    }
    if (bad_steps_in_a_row >= max_bad_steps) {
      save_checkpoint();
      std::cerr << "\nstopped: " << bad_steps_in_a_row << " steps in a row had a non-finite loss or gradient "
                << "([train] max_bad_steps = " << max_bad_steps << "). Lower lr_init, check the data, or use "
                << "precision = \"fp32\"; the last good state is checkpointed in " << checkpoint_dir.string() << "\n";
      exit_code = kExitTooManyBadSteps;
      break;
    }
    if (g_stop_signal) {
      save_checkpoint();
      std::cerr << "\ninterrupted by signal " << g_stop_signal << " after step " << step << "; checkpoint written to "
                << checkpoint_dir.string() << ". Resume with: "
                << (flags.resume_command.empty() ? "peftkit train " + recipe.file.string() + " --resume"
                                                 : flags.resume_command)
                << "\n";
      exit_code = kExitInterrupted;
      break;
    }
  }
  if (exit_code == 0 && step > first_step && applied_steps == 0) {
    std::cerr << "\nfailed: all " << step - first_step << " steps of this run were skipped (non-finite losses or "
              << "gradients, or batches without a target that counts); nothing was learned. Check the model and "
              << "the data (peftkit inspect), lr_init and precision\n";
    return kExitTooManyBadSteps;
  }
  if (exit_code == 0) {
    wall_seconds = wall_before + std::chrono::duration<double>(Clock::now() - started).count();
    write_summary(wall_seconds);
    log::info("done: " + std::to_string(step) + " steps, " + std::to_string(tokens_seen) + " tokens, " +
              std::to_string(skipped_steps) + " skipped, in " +
              duration_text(std::chrono::duration<double>(Clock::now() - started).count()) +
              (graphed_step.replays() > 0 ? "; " + std::to_string(graphed_step.replays()) +
                                                " micro-steps replayed as CUDA graphs"
                                          : std::string()));
  }
  return exit_code;
}

}  // namespace peftkit

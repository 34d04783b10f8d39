#include "train/trainer.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <sys/resource.h>
#include <torch/csrc/autograd/autograd.h>
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
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "cuda_place_of.hpp"
#include "dist/group.hpp"
#include "eval/data_split.hpp"
#include "eval/evaluator.hpp"
#include "host/adapters.hpp"
#include "host/device.hpp"
#include "host/quantization.hpp"
#include "host/stop_signals.hpp"
#include "io/mapped_file.hpp"
#include "model/rwkv_model.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/random.hpp"
#include "peftkit/tensor_io.hpp"
#include "tokenizer/world_tokenizer.hpp"
#include "train/batch.hpp"
#include "train/checkpoint.hpp"
#include "train/graphed_step.hpp"
#include "train/loss.hpp"
#include "train/optimizer.hpp"
#include "train/progress.hpp"
#include "train/sampling.hpp"
#include "train/schedule.hpp"
#include "train/settings.hpp"

namespace peftkit::train {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Set by SIGINT/SIGTERM; the loop finishes the current step, checkpoints and exits.
volatile std::sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int signal) { g_stop_signal = signal; }

// The positions of a host batch that count in the loss.
int64_t counted_targets(const at::Tensor& targets) {
  return (targets != kIgnoreIndex).sum().item<int64_t>();
}

}  // namespace

struct Trainer::Impl {
  const host::Recipe& recipe;
  const host::PluginRegistry& plugins;
  TrainFlags flags;

  const TrainSettings settings;  // the recipe, read once
  // Data parallelism: this process's place among the run's (rank 0 of 1 alone), and the others.
  // Every rank computes the same steps on its share of each batch; rank 0 alone writes files.
  const dist::Place place = dist::place_from_environment();
  std::unique_ptr<dist::Group> group;
  at::Device device = at::kCPU;
  std::string precision;  // [train] precision resolved for the device: bf16, fp32 or tf32
  std::unique_ptr<model::RwkvModel> model;
  std::unique_ptr<tokenizer::WorldTokenizer> tokenizer;
  std::shared_ptr<Dataset> dataset, eval_dataset;
  eval::SampleRange train_range, eval_range;
  std::optional<SampleOrder> order;
  std::vector<std::shared_ptr<PeftMethod>> methods;
  std::vector<OptimizedTensor> trained;
  std::map<std::string, at::ScalarType> base_dtypes;  // dtype of each tensor in the base file
  std::unique_ptr<Adam> adam;
  RunProgress progress;  // what checkpoints carry

  Impl(const host::Recipe& r, const host::PluginRegistry& p, TrainFlags f)
      : recipe(r), plugins(p), flags(f), settings(train_settings(r)) {}

  // The micro-batches of one optimizer step, over all ranks: which samples form step s depends on
  // this, never on the world size, so a run continues on another number of processes.
  int64_t micro_batches_per_step() const { return settings.accumulate * place.world_size; }
  void join_group();
  // Makes every rank start from rank 0's trainable tensors (random and SVD initialisations).
  void share_initial_tensors();

  void setup();
  // Throws naming the [output] dir when a file the run would write (or prune) is one of its inputs.
  void refuse_writing_over_inputs() const;
  void select_trainable();
  void open_data();
  // Every rank takes part (a sharded optimizer's state is gathered); rank 0 writes.
  void save_checkpoint() {
    const TensorMap adam_state = gathered_adam_state();
    if (!place.main()) return;
    peftkit::train::save_checkpoint(settings.checkpoint_dir, trained, adam_state, progress,
                                    fingerprint(), settings.keep_checkpoints);
  }
  // [run] shard_optimizer: the rank that owns each trained tensor's Adam state (empty: unsharded).
  std::vector<int> owner_of;
  void shard_optimizer();
  TensorMap gathered_adam_state();
  // After a sharded step: every rank receives the tensors their owners updated.
  void share_updated_tensors();
  void save_trained(int64_t epoch_number);
  eval::EvalResult evaluate();
  // An evaluation's numbers as they go into a metrics.jsonl line, and into the log.
  void report_evaluation(nlohmann::json& line);
  // Cross-entropy + L2Wrap, fused with the head unless the head is quantized; from `state` (null:
  // the initial state), which the forward advances; scaled as a piece of `whole` when given.
  at::Tensor loss_of(const at::Tensor& inputs, const at::Tensor& targets,
                     model::ModelState* state = nullptr, const WholeBatch* whole = nullptr);
  // Forward and backward of one micro-batch (the loss divided by the step's micro-batches, over all
  // ranks, for the backward);
  // returns its loss. Longer than chunk_ctx: through segments that carry the state.
  at::Tensor micro_step(const at::Tensor& inputs, const at::Tensor& targets);
  at::Tensor segmented_micro_step(const at::Tensor& inputs, const at::Tensor& targets);
  // The segment k of a [B, T] batch.
  at::Tensor segment(const at::Tensor& x, int64_t k) const {
    return settings.chunk_ctx > 0 ? x.slice(1, k * settings.chunk_ctx,
                                            std::min(x.size(1), (k + 1) * settings.chunk_ctx))
                                  : x;
  }
  int64_t segments(const at::Tensor& x) const {
    return settings.chunk_ctx > 0 ? (x.size(1) + settings.chunk_ctx - 1) / settings.chunk_ctx : 1;
  }
  std::string fingerprint() const;

  // Resumes from the newest checkpoint when asked (refusing one of other settings, or an
  // unrequested earlier run's), and trims or clears metrics.jsonl to match.
  void start_or_resume();
  struct StepResult {
    double loss = 0, lr = 0, grad_norm = 0, seconds = 0;
    int64_t tokens = 0;  // targets that counted
    bool skipped = false, graphed = false;
    int stop_signal = 0;  // with other ranks: a stop any of them was asked for during the step
  };
  // One optimizer step: its micro-batches, clipping, the update (or the reason to skip it), and
  // the counters.
  StepResult train_step(GraphedStep& graphed_step);
  nlohmann::json metrics_line(const StepResult& r, int64_t epoch) const;
  // train_log.txt's epoch line, and the adapter and checkpoint of the epochs that save.
  void end_epoch(int64_t epoch, double lr);
  // Rank 0's logs (the other ranks write no files).
  std::optional<io::AppendFile> train_log, metrics;
  int run();
};

Trainer::Trainer(const host::Recipe& recipe, const host::PluginRegistry& plugins, TrainFlags flags)
    : impl_(std::make_unique<Impl>(recipe, plugins, flags)) {}
Trainer::~Trainer() = default;
int Trainer::run() { return impl_->run(); }

void Trainer::Impl::join_group() {
  if (!place.distributed()) return;
  // The other ranks' messages would repeat rank 0's; their warnings and errors still show.
  if (!place.main() && log::level() < log::Level::kWarn) log::set_level(log::Level::kWarn);
  dist::Backend backend = device.is_cuda() ? dist::Backend::kNccl : dist::Backend::kGloo;
  if (settings.backend == "gloo") backend = dist::Backend::kGloo;
  if (settings.backend == "nccl") {
    if (!device.is_cuda())
      throw recipe.run.error("backend", "\"nccl\" exchanges GPU tensors, but training runs on " +
                                            device.str() + " (use \"auto\" or \"gloo\")");
    backend = dist::Backend::kNccl;
  }
  if (backend == dist::Backend::kNccl && !dist::nccl_built())
    throw recipe.run.error("backend",
                           "this peftkit was built without NCCL (nccl.h not found); "
                           "use \"gloo\"");
  if (device.is_cuda()) c10::cuda::set_device(device.index());
  group = std::make_unique<dist::Group>(place, backend, settings.collective_timeout);
  log::info("joined the run as " + place.describe() + " (" + dist::backend_name(backend) + ", " +
            device.str() + ")");
}

void Trainer::Impl::share_initial_tensors() {
  if (!group) return;
  std::vector<at::Tensor> tensors;
  for (const auto& t : trained) tensors.push_back(t.param.detach());
  at::NoGradGuard no_grad;
  group->broadcast(tensors, 0, "the initial trainable tensors");
}

void Trainer::Impl::setup() {
  const fs::path& out_dir = settings.out_dir;
  refuse_writing_over_inputs();
  try {
    device = host::resolve_device(settings.device);
  } catch (const Error& e) {
    throw recipe.run.error("device", e.what());
  }
  // One GPU per process: LOCAL_RANK picks it unless the recipe names one.
  if (device.is_cuda() && place.distributed() && settings.device.find(':') == std::string::npos) {
    const int gpus = static_cast<int>(c10::cuda::device_count());
    if (place.local_rank >= gpus)
      throw recipe.run.error(
          "device",
          "\"" + settings.device + "\" gives each process its own GPU, but " + place.describe() +
              " would need cuda:" + std::to_string(place.local_rank) + " and this host has " +
              std::to_string(gpus) +
              ": run at most that many processes per host, or name one device (\"cuda:0\", "
              "\"cpu\") for all of them");
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(place.local_rank));
  }
  if (device.is_cuda()) host::trim_gpu_memory_overheads(device);
  join_group();
  if (place.main()) {
    prepare_checkpoint_folder(settings.checkpoint_dir);
    io::remove_stale_temporaries(out_dir);  // of epoch files and metrics whose write was killed
    log::add_file(out_dir / "peftkit.log");
    const std::string resolved_recipe = host::format_recipe(recipe);
    io::write_file_atomically(out_dir / "recipe.toml", [&](std::FILE* out) {
      io::write_all(out, resolved_recipe.data(), resolved_recipe.size(), out_dir / "recipe.toml");
    });
  }
  if (settings.threads > 0) {
    // More threads than cores only adds stacks and switching: capped, and said.
    const int64_t cores = std::max<unsigned>(1, std::thread::hardware_concurrency());
    if (settings.threads > cores)
      log::warn("[run] threads = " + std::to_string(settings.threads) + " is more than the " +
                std::to_string(cores) + " cores here; using " + std::to_string(cores));
    at::set_num_threads(static_cast<int>(std::min(settings.threads, cores)));
  } else if (place.local_world_size > 1)  // the host's cores shared among its processes
    at::set_num_threads(std::max(1, at::get_num_threads() / place.local_world_size));
  at::manual_seed(settings.seed);

  precision = host::resolve_precision(settings.precision, device);
  // tf32 differs from fp32 only in CUDA matmuls; fp32 turns TF32 off explicitly.
  at::globalContext().setAllowTF32CuBLAS(precision == "tf32");
  const at::ScalarType dtype = precision == "bf16" ? at::kBFloat16 : at::kFloat;
  const fs::path& model_path = settings.model_path;
  TensorMap base = read_tensor_file(model_path).tensors;
  for (const auto& [name, t] : base) base_dtypes[name] = t.scalar_type();
  const host::QuantizedBase quantization = host::quantized_base(recipe, plugins, model_path);
  model::ModelOptions model_options{dtype, device};
  quantization.apply(model_options);
  if (settings.kernel == "chunked" && !device.is_cuda())
    throw recipe.train.error("kernel", "\"chunked\" runs the CUDA kernels, but training runs on " +
                                           device.str() + " (use \"auto\" or \"reference\")");
  model_options.reference_kernels = settings.kernel == "reference";
  model_options.embedding_on_host = settings.embedding_on_host;
  model = std::make_unique<model::RwkvModel>(base, model_options, model_path.string());
  if (quantization.quantizer) {
    quantization.save_cache(*model);
    char size[64];
    std::snprintf(size, sizeof size, "%.2f MiB",
                  static_cast<double>(model->linear_weight_bytes()) / (1 << 20));
    log::info("quantized the frozen linear weights with " + quantization.method + ": " + size);
  }
  model->set_gradient_checkpointing(settings.grad_cp, settings.grad_cp_keep_wkv);
  log::info("model " + model_path.string() + ": " + model->config().describe() + ", " + precision +
            " on " + device.str());

  try {
    tokenizer = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
  } catch (const Error& e) {
    log::warn(std::string("no tokenizer: ") + e.what());
  }
  open_data();
  select_trainable();
  share_initial_tensors();
  shard_optimizer();
}

void Trainer::Impl::shard_optimizer() {
  if (!settings.shard_optimizer || !group || place.world_size == 1) {
    adam = std::make_unique<Adam>(trained, settings.adam);
    return;
  }
  // Largest tensors first, each to the rank holding the fewest elements so far: balanced shares,
  // the same on every rank.
  std::vector<size_t> by_size(trained.size());
  for (size_t i = 0; i < by_size.size(); ++i) by_size[i] = i;
  std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) {
    return trained[a].param.numel() > trained[b].param.numel();
  });
  std::vector<int64_t> load(static_cast<size_t>(place.world_size), 0);
  owner_of.assign(trained.size(), 0);
  for (size_t i : by_size) {
    const auto lightest = std::min_element(load.begin(), load.end()) - load.begin();
    owner_of[i] = static_cast<int>(lightest);
    load[static_cast<size_t>(lightest)] += trained[i].param.numel();
  }
  std::vector<bool> owned(trained.size());
  for (size_t i = 0; i < trained.size(); ++i) owned[i] = owner_of[i] == place.rank;
  adam = std::make_unique<Adam>(trained, settings.adam, owned);
  log::info("optimizer state sharded over " + std::to_string(place.world_size) +
            " ranks: this one holds " + std::to_string(load[static_cast<size_t>(place.rank)]) +
            " of each moment's elements");
}

TensorMap Trainer::Impl::gathered_adam_state() {
  TensorMap state = adam->state_dict();
  if (owner_of.empty()) return state;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < trained.size(); ++i) {
    const std::string& name = trained[i].name;
    at::Tensor m = adam->owns(i) ? state.at("adam.m." + name) : at::empty_like(trained[i].param);
    at::Tensor v = adam->owns(i) ? state.at("adam.v." + name) : at::empty_like(trained[i].param);
    group->broadcast({m, v}, owner_of[i], "the optimizer state of " + name);
    state["adam.m." + name] = m;
    state["adam.v." + name] = v;
  }
  return state;
}

void Trainer::Impl::share_updated_tensors() {
  at::NoGradGuard no_grad;
  for (int owner = 0; owner < place.world_size; ++owner) {
    std::vector<at::Tensor> tensors;
    for (size_t i = 0; i < trained.size(); ++i)
      if (owner_of[i] == owner) tensors.push_back(trained[i].param.detach());
    group->broadcast(tensors, owner, "the tensors rank " + std::to_string(owner) + " updated");
  }
}

void Trainer::Impl::refuse_writing_over_inputs() const {
  // Every file the run reads, and every file it may write (or delete, in the checkpoint folder).
  std::vector<std::pair<std::string, fs::path>> inputs = {{"the recipe", recipe.file},
                                                          {"[model] path", settings.model_path}};
  std::error_code ec;
  for (const auto& [key, data] : settings.data_files) {
    const std::string what = "[data] " + key;
    inputs.push_back({what, data});
    // A data set named by a prefix (PREFIX.bin + PREFIX.idx) is read from the files that extend it.
    const fs::path folder = data.parent_path().empty() ? "." : data.parent_path();
    for (const auto& entry : fs::directory_iterator(folder, ec))
      if (entry.path().filename().string().rfind(data.filename().string() + ".", 0) == 0)
        inputs.push_back({what, entry.path()});
  }
  std::vector<fs::path> outputs;
  for (const char* name :
       {"recipe.toml", "peftkit.log", "train_log.txt", "metrics.jsonl", "summary.json"})
    outputs.push_back(settings.out_dir / name);
  for (int64_t e = settings.epoch_begin; e < settings.epoch_begin + settings.epoch_count; ++e)
    outputs.push_back(settings.adapter_file(e));
  if (!settings.quant_cache.empty()) outputs.push_back(settings.quant_cache);
  for (const auto& [what, input] : inputs) {
    if (!fs::exists(input, ec)) continue;
    if (fs::equivalent(input.parent_path().empty() ? "." : input.parent_path(),
                       settings.checkpoint_dir, ec))
      throw recipe.output.error("dir",
                                what + " " + input.string() +
                                    " lies in the run's checkpoint folder, which the run prunes; "
                                    "move it or choose another [output] dir");
    for (const auto& output : outputs)
      if (fs::exists(output, ec) && fs::equivalent(input, output, ec))
        throw recipe.output.error("dir",
                                  "the run would write " + output.string() + ", which is " + what +
                                      "; training never writes over its inputs: move the file or "
                                      "choose another [output] dir");
  }
}

void Trainer::Impl::open_data() {
  eval::DataSplit split =
      eval::open_data_split(recipe, plugins, model->config().vocab, tokenizer.get());
  dataset = split.train;
  eval_dataset = split.eval;
  train_range = split.train_range;
  eval_range = split.eval_range;
  if (settings.eval_every > 0 && !eval_dataset)
    throw recipe.data.error("eval_every", "needs eval_file or eval_fraction");
  order.emplace(train_range, settings.seed);
  log::info(
      "data " + dataset->describe() + "; training on " + std::to_string(train_range.size()) +
      " samples" +
      (eval_dataset ? ", evaluating on " + std::to_string(eval_range.size()) : std::string()));
}

void Trainer::Impl::select_trainable() {
  const std::vector<std::string>& parts = settings.train_parts;
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
  out << "model=" << recipe.model.get_string("path") << ";data=" << recipe.data.get_string("format")
      << ":" << recipe.data.get_string("path")
      << ";peft=" << format_option_value(recipe.peft.get("method"))
      << ";parts=" << format_option_value(recipe.peft.get("train_parts"))
      << ";quant=" << format_option_value(recipe.quant.get("method"));
  for (const char* key : {"ctx_len", "micro_bsz"})
    out << ";" << key << "=" << format_option_value(recipe.train.get(key));
  // Over all ranks: one process with 2 accumulated micro-batches continues as two with 1.
  out << ";accumulate_grad_batches=" << micro_batches_per_step();
  for (const char* key : {"epoch_steps", "seed"})
    out << ";" << key << "=" << format_option_value(recipe.train.get(key));
  // As resolved: "auto" must not resume in another precision on another device.
  out << ";precision=" << format_option_value(OptionValue(precision));
  return out.str();
}

at::Tensor Trainer::Impl::loss_of(const at::Tensor& inputs, const at::Tensor& targets,
                                  model::ModelState* state, const WholeBatch* whole) {
  const at::Tensor head = model->trainable_head_weight();
  if (!head.defined()) return cross_entropy_l2wrap(model->forward(inputs, state), targets, whole);
  return head_cross_entropy_l2wrap(model->forward_hidden(inputs, state), head, targets, whole);
}

at::Tensor Trainer::Impl::micro_step(const at::Tensor& inputs, const at::Tensor& targets) {
  if (segments(inputs) > 1) return segmented_micro_step(inputs, targets);
  const at::Tensor loss = loss_of(inputs, targets);
  (loss / static_cast<double>(micro_batches_per_step())).backward();
  return loss.detach();
}

namespace {

// The tensors of a state, in a fixed order.
std::vector<at::Tensor*> state_tensors(model::ModelState& state) {
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
at::Tensor Trainer::Impl::segmented_micro_step(const at::Tensor& inputs,
                                               const at::Tensor& targets) {
  const int64_t count = segments(inputs);
  const WholeBatch whole = whole_batch(targets, device);
  // The second pass must draw the random numbers (dropout) of the first; a graph capture cannot
  // read the generator, and the trainer captures only steps that draw none.
  at::Generator generator = at::globalContext().defaultGenerator(device);
  const bool replay_rng = !kernels::cuda::capturing_graph(whole.counted);
  std::vector<model::ModelState> entries(static_cast<size_t>(count));
  std::vector<at::Tensor> rng(static_cast<size_t>(count));
  {
    at::NoGradGuard no_grad;
    model::ModelState state = model->initial_state(inputs.size(0));
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
    model::ModelState state = k == 0 ? model->initial_state(inputs.size(0)) : entries[k];
    std::vector<at::Tensor> entry_leaves;
    if (k > 0) {
      for (at::Tensor* t : state_tensors(state)) {
        *t = t->detach().requires_grad_(true);
        entry_leaves.push_back(*t);
      }
    }
    const at::Tensor loss = loss_of(segment(inputs, k), segment(targets, k), &state, &whole);
    if (k == count - 1 && replay_rng) rng_after = generator.get_state();
    std::vector<at::Tensor> roots{loss / static_cast<double>(micro_batches_per_step())},
        root_grads{at::ones_like(loss)};
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

eval::EvalResult Trainer::Impl::evaluate() {
  return peftkit::eval::evaluate(*model, *eval_dataset, {eval_range.begin, eval_range.end},
                                 {settings.micro_bsz, settings.ctx_len, settings.chunk_ctx});
}

void Trainer::Impl::report_evaluation(nlohmann::json& line) {
  const eval::EvalResult result = evaluate();
  auto number = [](double x) {
    return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
  };
  line["eval_loss"] = number(result.loss());
  line["eval_ppl"] = number(result.perplexity());
  line["eval_accuracy"] = number(result.accuracy());
  line["eval_tokens"] = result.total.tokens;
  log::info("step " + std::to_string(progress.step) + ": eval loss " +
            std::to_string(result.loss()) + ", perplexity " + std::to_string(result.perplexity()) +
            ", token accuracy " + std::to_string(result.accuracy()));
}

void Trainer::Impl::save_trained(int64_t epoch_number) {
  if (!place.main()) return;
  TensorMap out;
  const TensorMap weights = model->weights();
  for (const auto& t : trained)
    if (weights.count(t.name)) out[t.name] = weights.at(t.name).detach().to(base_dtypes.at(t.name));
  for (const auto& method : methods)
    for (const auto& [name, tensor] : method->state_dict()) out[name] = tensor;
  const fs::path path = settings.adapter_file(epoch_number);
  write_pth(path, out, host::adapter_record(recipe.peft_methods, methods));  // self-describing
  log::info("saved " + path.string() + " (" + std::to_string(out.size()) + " tensors)");
}

void Trainer::Impl::start_or_resume() {
  bool resumed = false;
  if (flags.resume || settings.resume_auto) {
    resumed =
        load_newest_checkpoint(settings.checkpoint_dir, trained, *adam, progress, fingerprint());
    if (!resumed && flags.resume)
      throw Error("--resume: no checkpoint in " + settings.checkpoint_dir.string() +
                  " to resume from");
  } else if (!list_checkpoints(settings.checkpoint_dir).empty()) {
    throw Error(settings.checkpoint_dir.string() +
                " already holds checkpoints of an earlier run: continue it with --resume (or "
                "[train] resume = "
                "\"auto\"), or choose another [output] dir");
  }
  const fs::path metrics_path = settings.out_dir / "metrics.jsonl";
  if (!place.main()) return;
  if (!resumed) {
    // Metrics without a checkpoint are of a run killed before its first one; this run redoes them.
    fs::remove(metrics_path);
  } else if (fs::exists(metrics_path)) {
    // After a hard kill the metrics may run past the checkpoint; those steps will be redone.
    std::ifstream in(metrics_path);
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      auto parsed = nlohmann::json::parse(line, nullptr, false);
      if (!parsed.is_discarded() && parsed.value("step", int64_t{0}) <= progress.step)
        kept += line + "\n";
    }
    in.close();
    io::write_file_atomically(metrics_path, [&](std::FILE* out) {
      io::write_all(out, kept.data(), kept.size(), metrics_path);
    });
  }
}

Trainer::Impl::StepResult Trainer::Impl::train_step(GraphedStep& graphed_step) {
  const int64_t epoch = progress.step / settings.epoch_steps,
                in_epoch = progress.step % settings.epoch_steps;
  StepResult r;
  r.lr =
      learning_rate(settings.schedule, progress.step + settings.epoch_begin * settings.epoch_steps);
  const auto started = Clock::now();
  adam->zero_grad();
  double loss_sum = 0;
  const int64_t replays_before = graphed_step.replays();
  // Rank k takes micro-batches k, k + W, k + 2W, ... of the step's micro_batches_per_step().
  for (int64_t micro = place.rank; micro < micro_batches_per_step(); micro += place.world_size) {
    const int64_t first_slot = (in_epoch * micro_batches_per_step() + micro) * settings.micro_bsz;
    auto [inputs, targets] =
        order->batch(*dataset, epoch, first_slot, settings.micro_bsz, settings.ctx_len);
    loss_sum += graphed_step.run(inputs, targets).item<double>();
    r.tokens += counted_targets(targets);
  }
  r.graphed = graphed_step.replays() > replays_before;
  if (group) {
    // The step's numbers over all ranks, and whether any was asked to stop: all decide alike.
    // On the device: NCCL exchanges device tensors only.
    at::Tensor totals =
        at::tensor({loss_sum, static_cast<double>(r.tokens), static_cast<double>(g_stop_signal)},
                   at::kDouble)
            .to(device);
    std::vector<at::Tensor> gradients;
    for (auto& t : trained) {
      if (!t.param.grad().defined()) t.param.mutable_grad() = at::zeros_like(t.param);
      gradients.push_back(t.param.grad());
    }
    group->sum(gradients, "the gradients of step " + std::to_string(progress.step + 1));
    group->sum({totals}, "the losses of step " + std::to_string(progress.step + 1));
    const at::Tensor totals_on_host = totals.cpu();
    loss_sum = totals_on_host[0].item<double>();
    r.tokens = static_cast<int64_t>(totals_on_host[1].item<double>());
    r.stop_signal = static_cast<int>(totals_on_host[2].item<double>() > 0 ? SIGINT : 0);
  }
  r.loss = loss_sum / static_cast<double>(micro_batches_per_step());
  // A step whose batches have no target that counts (prompts longer than ctx_len, empty
  // documents) has nothing to learn from: it updates nothing.
  const bool no_targets = r.tokens == 0;
  r.grad_norm = no_targets ? 0.0 : adam->clip_grad_norm(settings.grad_clip);
  const bool bad = !no_targets && (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm));
  r.skipped = no_targets || bad;
  if (no_targets) {
    ++progress.skipped_steps;
    log::warn("step " + std::to_string(progress.step + 1) +
              ": no target token counts in its batches (every position is padding or masked); step "
              "skipped, "
              "nothing updated");
  } else if (bad) {
    ++progress.bad_steps_in_a_row;
    ++progress.skipped_steps;
    log::warn("step " + std::to_string(progress.step + 1) + ": non-finite loss or gradient (loss " +
              std::to_string(r.loss) + ", gradient norm " + std::to_string(r.grad_norm) +
              "); step skipped");
  } else {
    adam->step(r.lr);
    if (!owner_of.empty()) share_updated_tensors();
    progress.bad_steps_in_a_row = 0;
    progress.epoch_loss_sum += r.loss;
    ++progress.epoch_loss_count;
  }
  ++progress.step;
  progress.tokens_seen += r.tokens;
  r.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  progress.train_seconds += r.seconds;
  progress.peak_rss = std::max(progress.peak_rss, peak_resident_bytes());
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    progress.peak_gpu_allocated =
        std::max<int64_t>(progress.peak_gpu_allocated, stats.allocated_bytes[0].peak);
    progress.peak_gpu_reserved =
        std::max<int64_t>(progress.peak_gpu_reserved, stats.reserved_bytes[0].peak);
  }
  return r;
}

nlohmann::json Trainer::Impl::metrics_line(const StepResult& r, int64_t epoch) const {
  nlohmann::json line = {
      {"step", progress.step},
      {"epoch", settings.epoch_begin + epoch},
      {"loss", r.skipped ? nullptr : nlohmann::json(r.loss)},
      {"lr", r.lr},
      {"grad_norm", std::isfinite(r.grad_norm) ? nlohmann::json(r.grad_norm) : nullptr},
      {"tokens", progress.tokens_seen},
      {"tokens_per_s", static_cast<double>(r.tokens) / std::max(r.seconds, 1e-9)},
      {"skipped", r.skipped}};
  if (device.is_cuda()) {
    line["peak_gpu_gib"] = static_cast<double>(progress.peak_gpu_allocated) / (1 << 30);
    line["peak_gpu_reserved_gib"] = static_cast<double>(progress.peak_gpu_reserved) / (1 << 30);
    // What the whole device has in use now (the CUDA context, libraries' workspaces and other
    // processes included): the part of nvidia-smi's number the allocator does not see.
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
      line["gpu_device_used_gib"] = static_cast<double>(total_bytes - free_bytes) / (1 << 30);
    line["cuda_graph"] = r.graphed;
  }
  return line;
}

void Trainer::Impl::end_epoch(int64_t epoch, double lr) {
  const double mean = progress.epoch_loss_count
                          ? progress.epoch_loss_sum / static_cast<double>(progress.epoch_loss_count)
                          : std::nan("");
  if (train_log) train_log->append(train_log_line(settings.epoch_begin + epoch, mean, lr, epoch));
  progress.epoch_loss_sum = 0;
  progress.epoch_loss_count = 0;
  // RWKV-PEFT saves at epochs 0, epoch_save, 2 * epoch_save, ... and at the last one.
  if ((settings.epoch_save > 0 && epoch % settings.epoch_save == 0) ||
      epoch == settings.epoch_count - 1) {
    save_trained(settings.epoch_begin + epoch);
    save_checkpoint();
  }
}

int Trainer::Impl::run() {
  setup();
  start_or_resume();
  if (place.main()) {
    train_log.emplace(settings.out_dir / "train_log.txt");
    train_log->append("NEW RUN " + now_text("%Y-%m-%d-%H-%M-%S") + "\n" +
                      host::format_recipe(recipe) + "\n");
    metrics.emplace(settings.out_dir / "metrics.jsonl");
  }
  const bool terminal = ::isatty(STDERR_FILENO) && place.main();
  const int64_t total_steps = settings.total_steps();
  const int64_t report_every = std::max<int64_t>(1, total_steps / 20);
  g_stop_signal = 0;
  const host::StopSignalHandler stop_signals(on_stop_signal);
  model->set_training(true);
  // On a GPU everything runs on a side stream: CUDA graphs cannot capture the default one.
  std::optional<c10::cuda::CUDAStreamGuard> side_stream;
  if (device.is_cuda()) side_stream.emplace(c10::cuda::getStreamFromPool(false, device.index()));
  GraphedStep graphed_step([&](const at::Tensor& inputs,
                               const at::Tensor& targets) { return micro_step(inputs, targets); },
                           device, settings.cuda_graphs);
  const auto started = Clock::now();
  const double wall_before = progress.wall_seconds;
  // Every run's metrics start from the model as it was before training.
  // Rank 0 evaluates while the others go on to the next exchange and wait for it there.
  if (eval_dataset && place.main() && progress.step == 0 && settings.eval_at_start) {
    nlohmann::json line = {{"step", 0}, {"epoch", settings.epoch_begin}, {"tokens", 0}};
    report_evaluation(line);
    metrics->append(line.dump() + "\n");
  }
  const int64_t first_step = progress.step;
  int64_t applied_steps = 0;  // optimizer updates made by this invocation
  double smoothed = std::nan("");

  while (progress.step < total_steps) {
    const int64_t epoch = progress.step / settings.epoch_steps;
    StepResult r;
    try {
      r = train_step(graphed_step);
    } catch (const c10::OutOfMemoryError& e) {
      throw Error(out_of_memory_message(settings, progress.step + 1, device.str(), e.what()));
    } catch (const std::bad_alloc&) {
      throw Error(out_of_memory_message(settings, progress.step + 1, device.str(), ""));
    }
    if (!r.skipped) {
      ++applied_steps;
      smoothed = std::isnan(smoothed) ? r.loss : 0.95 * smoothed + 0.05 * r.loss;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
    progress.wall_seconds = wall_before + elapsed;

    nlohmann::json line = metrics_line(r, epoch);
    const bool epoch_end = progress.step % settings.epoch_steps == 0;
    if (eval_dataset && place.main() &&
        ((settings.eval_every > 0 && progress.step % settings.eval_every == 0) || epoch_end))
      report_evaluation(line);
    if (metrics) metrics->append(line.dump() + "\n");

    const ProgressLine shown{
        epoch,
        settings.epoch_count,
        progress.step,
        total_steps,
        r.loss,
        smoothed,
        r.lr,
        static_cast<double>(r.tokens) / std::max(r.seconds, 1e-9),
        elapsed / static_cast<double>(progress.step - first_step) *
            static_cast<double>(total_steps - progress.step),
        device.is_cuda() ? static_cast<double>(progress.peak_gpu_allocated) / (1 << 30) : -1};
    if (terminal) {
      std::fprintf(stderr, "\r%s\033[K", shown.text().c_str());
      std::fflush(stderr);
    } else if (progress.step % report_every == 0 || progress.step == total_steps) {
      log::info(shown.text());
    }
    if (epoch_end) {
      if (terminal) std::fprintf(stderr, "\n");
      end_epoch(epoch, r.lr);
    }
    if (progress.bad_steps_in_a_row >= settings.max_bad_steps) {
      save_checkpoint();
      if (place.main())
        std::cerr << "\nstopped: " << progress.bad_steps_in_a_row
                  << " steps in a row had a non-finite loss or gradient ([train] max_bad_steps = "
                  << settings.max_bad_steps
                  << "). Lower lr_init, check the data, or use precision = \"fp32\"; the "
                  << "last good state is checkpointed in " << settings.checkpoint_dir.string()
                  << "\n";
      return kExitTooManyBadSteps;
    }
    const int stop_signal = group ? r.stop_signal : static_cast<int>(g_stop_signal);
    if (stop_signal) {
      // An interrupted run exits 130 even when its last checkpoint cannot be written (a full
      // disk, a read-only folder): the user asked it to stop, and the error says what was kept.
      std::string not_saved;
      try {
        save_checkpoint();
      } catch (const Error& e) {
        not_saved = e.what();
      }
      const std::string resume_command = flags.resume_command.empty()
                                             ? "peftkit train " + recipe.file.string() + " --resume"
                                             : flags.resume_command;
      if (place.main() && not_saved.empty())
        std::cerr << "\ninterrupted by signal " << stop_signal << " after step " << progress.step
                  << "; checkpoint written to " << settings.checkpoint_dir.string()
                  << ". Resume with: " << resume_command << "\n";
      if (place.main() && !not_saved.empty()) {
        const auto kept = list_checkpoints(settings.checkpoint_dir);
        std::cerr << "\ninterrupted by signal " << stop_signal << " after step " << progress.step
                  << ", but its checkpoint could not be written: " << not_saved << "\n"
                  << (kept.empty()
                          ? "no earlier checkpoint exists; the steps of this run are lost"
                          : "the newest earlier checkpoint is kept: " + kept.back().string() +
                                "; resume from it with: " + resume_command)
                  << "\n";
      }
      return kExitInterrupted;
    }
  }
  if (progress.step > first_step && applied_steps == 0) {
    if (place.main())
      std::cerr << "\nfailed: all " << progress.step - first_step
                << " steps of this run were skipped (non-finite losses or gradients, or batches "
                   "without a target "
                   "that counts); nothing was learned. Check the model and the data (peftkit "
                   "inspect), lr_init and "
                   "precision\n";
    return kExitTooManyBadSteps;
  }
  progress.wall_seconds =
      wall_before + std::chrono::duration<double>(Clock::now() - started).count();
  RunSummary summary;
  for (const auto& table : recipe.peft_methods) summary.methods.push_back(table.plugin);
  for (const auto& t : trained) summary.trainable_parameters += t.param.numel();
  summary.adapter = settings.adapter_file(settings.epoch_begin + settings.epoch_count - 1);
  summary.device = device.str();
  summary.precision = precision;
  summary.cuda = device.is_cuda();
  if (place.main()) write_summary(settings.out_dir, progress, summary);
  log::info(
      "done: " + std::to_string(progress.step) + " steps, " + std::to_string(progress.tokens_seen) +
      " tokens, " + std::to_string(progress.skipped_steps) + " skipped, in " +
      duration_text(std::chrono::duration<double>(Clock::now() - started).count()) +
      (graphed_step.replays() > 0
           ? "; " + std::to_string(graphed_step.replays()) + " micro-steps replayed as CUDA graphs"
           : std::string()));
  return 0;
}

}  // namespace peftkit::train

// The core sections of a recipe. [train] keeps RWKV-PEFT's flag names and meanings so a shell
// script ports line by line (README "Recipe reference" lists the mapping and where we differ).
#include <limits>
#include <map>

#include "host/recipe.hpp"
#include "peftkit/sites.hpp"

namespace peftkit::host {
namespace {

OptionSchema model_schema() {
  return OptionSchema().add_required_string(
      "path", "the base model: an RWKV .pth or .safetensors file (RWKV-PEFT --load_model)");
}

OptionSchema data_schema() {
  return OptionSchema()
      .add_string("format", "jsonl",
                  "dataset plugin that reads `path`; its own keys go in [data.<format>]")
      .add_required_string("path", "training data file (RWKV-PEFT --data_file)")
      .add_string("eval_file", "", "evaluation data in the same format (\"\": none)")
      .add_float("eval_fraction", 0.0,
                 "hold out this fraction of the training samples for evaluation", Bound{0},
                 Bound{1, true})
      .add_int("eval_every", 0, "evaluate every N optimizer steps (0: only at each epoch end)", 0,
               std::numeric_limits<int32_t>::max())
      .add_bool(
          "eval_at_start", true,
          "with eval data, evaluate once before the first step (metrics.jsonl line of step 0)");
}

OptionSchema peft_schema() {
  return OptionSchema()
      .add_string_list("method", {"none"},
                       "PEFT plugin(s): \"none\" (full fine-tune / train_parts only), or one or "
                       "more plugin names such as [\"state\", \"lora\"]; each one's keys go in "
                       "[peft.<method>]")
      .add_string_list("train_parts", {},
                       "also train base tensors whose name contains one of these substrings, "
                       "e.g. [\"ln\", \"emb\", \"head\"] (RWKV-PEFT --train_parts)");
}

OptionSchema quant_schema() {
  return OptionSchema()
      .add_string("method", "none",
                  "quantizer plugin for the frozen base weights, or \"none\"; its keys go in "
                  "[quant.<method>]")
      .add_string_list("targets", default_linear_targets(),
                       "quantized linear sites: suffixes of their names (embeddings and small "
                       "vectors never are)")
      .add_bool("head", false, "also quantize the output head")
      .add_path("cache_file", "",
                "pre-quantized base (safetensors): loaded when it matches the model and settings, "
                "else written");
}

OptionSchema train_schema() {
  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  return OptionSchema()
      .add_int("ctx_len", 1024, "tokens per training sample", 1, 1 << 20)
      .add_int(
          "chunk_ctx", 0,
          "train samples longer than this in segments of this many tokens that carry the state, "
          "with "
          "the exact gradient through it and one segment's activations in memory (RWKV-PEFT "
          "--train_type infctx --chunk_ctx, which cuts the gradient at segment boundaries); 0: off",
          0, 1 << 20)
      .add_int("micro_bsz", 12, "samples per micro-batch", 1, 1 << 16)
      .add_int("epoch_steps", 1000, "optimizer steps per epoch", 1, kMaxInt)
      .add_int("epoch_count", 500, "number of epochs", 1, kMaxInt)
      .add_int("epoch_begin", 0, "number of the first epoch (continues file numbering)", 0, kMaxInt)
      .add_int("epoch_save", 5, "save every N epochs (0: only at the end)", 0, kMaxInt)
      .add_float("lr_init", 6e-4, "learning rate at the start of the schedule", Bound{0, true})
      .add_float("lr_final", 1e-5, "learning rate at the end of the schedule", Bound{0})
      .add_string("lr_schedule", "cos", "learning-rate schedule", {"cos", "wsd"})
      .add_int("warmup_steps", 0, "linear warmup steps (0: none)", 0, kMaxInt)
      .add_float("beta1", 0.9, "Adam beta1", Bound{0}, Bound{1, true})
      .add_float("beta2", 0.99, "Adam beta2", Bound{0}, Bound{1, true})
      .add_float("adam_eps", 1e-8, "Adam epsilon", Bound{0, true})
      .add_float("weight_decay", 0.0, "decoupled weight decay on 2-D weights (0: off)", Bound{0})
      .add_bool("grad_cp", false, "gradient checkpointing per block (RWKV-PEFT: 0/1)")
      .add_bool("grad_cp_keep_wkv", false,
                "under grad_cp, keep each x070 block's WKV forward instead of recomputing it: "
                "faster, about 20 bytes more per activation element and layer on CUDA")
      .add_bool("cuda_graphs", true,
                "on a GPU, capture each batch shape's forward and backward once as a CUDA graph "
                "and replay it "
                "(off by itself when the step draws random numbers, e.g. LoRA dropout)")
      .add_bool("embedding_on_host", true,
                "on a GPU, keep the frozen emb.weight in pinned host memory that the kernels read "
                "in place (saves vocab x C weights of GPU memory; a trained embedding stays on "
                "the GPU)")
      .add_string("kernel", "auto",
                  "WKV7 and fused block ops: auto (CPU kernel on the CPU, chunked CUDA kernels on "
                  "a GPU), chunked "
                  "(the CUDA kernels; an error off the GPU) or reference (tensor ops, WKV7 per "
                  "time step: slow, "
                  "for checking the kernels)",
                  {"auto", "chunked", "reference"})
      .add_string("precision", "auto",
                  "auto: bf16 on a GPU, fp32 on the CPU; bf16: frozen weights and "
                  "activations in bf16 with fp32 master copies; fp32; tf32: fp32 with TF32 matmuls",
                  {"auto", "bf16", "fp32", "tf32"})
      .add_int("accumulate_grad_batches", 1, "micro-batches per optimizer step", 1, 1 << 16)
      .add_float("grad_clip", 1.0, "global gradient-norm clip (0: off)", Bound{0})
      .add_int("seed", 42, "random seed (RWKV-PEFT --random_seed)", 0,
               std::numeric_limits<int64_t>::max())
      .add_string("resume", "off",
                  "\"auto\": continue from the latest checkpoint in the output dir "
                  "when there is one",
                  {"off", "auto"})
      .add_int("keep_checkpoints", 2, "resumable checkpoints to keep", 1, 1000)
      .add_int("max_bad_steps", 5,
               "stop after this many steps in a row with a non-finite loss or "
               "gradient",
               1, 1000000);
}

OptionSchema output_schema() {
  return OptionSchema().add_string(
      "dir", "out", "folder for checkpoints, logs and metrics (RWKV-PEFT --proj_dir)");
}

OptionSchema run_schema() {
  return OptionSchema()
      .add_string("device", "auto", "\"auto\" (CUDA when present), \"cpu\", \"cuda\" or \"cuda:N\"")
      .add_int("threads", 0,
               "CPU threads for tensor math (0: all cores, shared among a host's processes)", 0,
               1024)
      .add_int("devices", 1,
               "data-parallel processes, one per GPU (as `peftkit launch --nproc N`); under a "
               "launcher, its WORLD_SIZE decides",
               1, 1024)
      .add_int("collective_timeout_s", 1800,
               "how long a rank waits for the others (rendezvous, each exchange) before it stops "
               "the run naming the ranks that went silent",
               1, 7 * 24 * 3600)
      .add_string("backend", "auto",
                  "how processes exchange tensors: \"auto\" (NCCL on GPUs, Gloo on the CPU), "
                  "\"nccl\" or \"gloo\" (also on GPU tensors, through host memory)",
                  {"auto", "nccl", "gloo"})
      .add_bool("shard_optimizer", false,
                "split Adam's moments among the processes (ZeRO stage 1): each keeps and updates "
                "its share and sends the others the tensors it updated");
}

}  // namespace

const std::vector<RecipeSection>& recipe_sections() {
  static const OptionSchema model = model_schema(), data = data_schema(), peft = peft_schema(),
                            quant = quant_schema(), train = train_schema(),
                            output = output_schema(), run = run_schema();
  static const std::vector<RecipeSection> sections = {
      {"model", &model, &Recipe::model, ""},    {"data", &data, &Recipe::data, "format"},
      {"peft", &peft, &Recipe::peft, "method"}, {"quant", &quant, &Recipe::quant, "method"},
      {"train", &train, &Recipe::train, ""},    {"output", &output, &Recipe::output, ""},
      {"run", &run, &Recipe::run, ""},
  };
  return sections;
}

const OptionSchema& section_schema(std::string_view section) {
  for (const auto& s : recipe_sections())
    if (s.name == section) return *s.schema;
  throw Error("no recipe section [" + std::string(section) + "]");
}

}  // namespace peftkit::host

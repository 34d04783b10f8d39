// `peftkit train` as a user runs it: determinism, interruption and exact resume, bad steps,
// train_parts, checkpoints. Each test trains the tiny model for a few steps on the CPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "model_fixtures.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

using testing::run_command;

using testing::peftkit_command;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shared_ = new testing::TempDir();
    auto inputs = testing::write_tiny_training_inputs(PEFTKIT_PYTHON, shared_->path());
    ASSERT_EQ(inputs.exit_code, 0) << inputs.output;
    auto x060 = run_command(peftkit_command(
        "init-model --arch x060 --layers 2 --embd 64 --head-size 32 --vocab 1000 --seed 1 --out " +
        (shared_->path() / "model-x060.pth").string()));
    ASSERT_EQ(x060.exit_code, 0) << x060.output;
  }
  static void TearDownTestSuite() { delete shared_; }

  // A recipe in this test's own folder; `extra` is appended.
  std::filesystem::path recipe(const std::string& extra = "", const std::string& train = "") {
    return testing::write_file(
        dir_ / "recipe.toml",
        "[model]\npath = \"" + (shared_->path() / "model.pth").string() +
            "\"\n"
            "[data]\nformat = \"numpy\"\npath = \"" +
            (shared_->path() / "tokens.npy").string() +
            "\"\n"
            "[train]\nctx_len = 32\nmicro_bsz = 2\nepoch_steps = 4\nepoch_count = 3\nepoch_save = "
            "1\n"
            "lr_init = 3e-3\nlr_final = 1e-3\nwarmup_steps = 2\nprecision = \"fp32\"\nseed = 5\n" +
            train + "[run]\nthreads = 1\n[output]\ndir = \"out\"\n" + extra);
  }
  std::vector<nlohmann::json> metrics() {
    return testing::read_metrics(dir_ / "out" / "metrics.jsonl");
  }

  // Runs `peftkit train ARGS...` in a child (output to `log`), sends `signal` once `steps` steps
  // are in metrics.jsonl, and returns the child's exit code (-1 when it did not exit normally).
  int train_until_interrupted(const std::vector<std::string>& args, size_t steps,
                              const std::string& log, int signal = SIGINT) {
    std::vector<std::string> argv_text = {PEFTKIT_BINARY, "train"};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t child = fork();
    if (child < 0) return -1;
    if (child == 0) {
      freopen(log.c_str(), "w", stderr);
      freopen(log.c_str(), "a", stdout);
      execv(argv[0], argv.data());
      _exit(127);
    }
    // Polled every 2 ms: a state-tuning step of the small model takes a few milliseconds, and a
    // coarser poll let the whole run finish before the signal.
    for (int i = 0; i < 15000 && metrics().size() < steps; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    kill(child, signal);
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  // The checkpoints of a run's output folder, oldest first.
  static std::vector<std::filesystem::path> checkpoints_in(const std::filesystem::path& out) {
    std::vector<std::filesystem::path> found;
    for (const auto& entry : std::filesystem::directory_iterator(out / "checkpoints"))
      if (entry.path().extension() == ".ckpt") found.push_back(entry.path());
    std::sort(found.begin(), found.end());
    return found;
  }
  // Every tensor of two saved files, equal bit for bit.
  static void expect_same_files(const std::filesystem::path& got,
                                const std::filesystem::path& want) {
    const TensorMap a = read_pth(got), b = read_pth(want);
    ASSERT_EQ(a.size(), b.size()) << got;
    for (const auto& [name, tensor] : b) {
      ASSERT_TRUE(a.count(name)) << got << " lacks " << name;
      EXPECT_TRUE(a.at(name).equal(tensor)) << got << ": " << name << " differs";
    }
  }
  // `model`: extra arguments choosing the model.
  void expect_chunked_context_trains_like_the_whole(const std::string& model);

  static inline testing::TempDir* shared_ = nullptr;
  testing::TempDir dir_;
};

TEST_F(TrainerTest, SameRecipeAndSeedGiveTheSameLossesBitForBit) {
  auto first = run_command(peftkit_command("train " + recipe().string()));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto a = metrics();
  ASSERT_EQ(a.size(), 12u);
  testing::remove_tree(dir_ / "out");
  ASSERT_EQ(run_command(peftkit_command("train " + recipe().string())).exit_code, 0);
  auto b = metrics();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << i;
  EXPECT_LT(a.back()["loss"].get<double>(), a.front()["loss"].get<double>());  // it learns
  // rwkv-0..2.pth hold the whole model (full fine-tune) in the base dtype; the log has an epoch
  // line each.
  TensorMap saved = read_pth(dir_ / "out" / "rwkv-2.pth");
  EXPECT_EQ(saved.size(), 69u);
  int64_t parameters = 0;
  for (const auto& [name, t] : saved) parameters += t.numel();
  EXPECT_NE(first.output.find("trainable parameters: " + std::to_string(parameters) +
                              " in 69 tensors (full fine-tune)"),
            std::string::npos)
      << first.output;
  EXPECT_EQ(saved.at("emb.weight").scalar_type(), at::kBFloat16);
  const std::string log = testing::read_file(dir_ / "out" / "train_log.txt");
  EXPECT_NE(log.find("NEW RUN "), std::string::npos);
  EXPECT_NE(log.find("\n2 "), std::string::npos) << log;
  EXPECT_EQ(a[4]["step"].get<int>(), 5);
  EXPECT_TRUE(a[4].contains("grad_norm") && a[4].contains("tokens_per_s") && a[4].contains("lr"));
}

TEST_F(TrainerTest, TheReferenceKernelGivesTheSameLosses) {
  ASSERT_EQ(run_command(peftkit_command("train " + recipe().string())).exit_code, 0);
  auto kernel = metrics();
  testing::remove_tree(dir_ / "out");
  auto result =
      run_command(peftkit_command("train " + recipe().string() + " --set train.kernel=reference"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto reference = metrics();
  ASSERT_EQ(reference.size(), kernel.size());
  for (size_t i = 0; i < kernel.size(); ++i)
    EXPECT_NEAR(reference[i]["loss"].get<double>(), kernel[i]["loss"].get<double>(), 1e-4)
        << "step " << i + 1;
}

TEST_F(TrainerTest, TheChunkedKernelIsRefusedOffTheGpuNamingTheKey) {
  auto result = run_command(peftkit_command("train " + recipe().string() +
                                            " --set train.kernel=chunked --set run.device=cpu"));
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("[train] kernel"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("CUDA"), std::string::npos) << result.output;
}

// grad_cp_keep_wkv trains the same steps as plain grad_cp (the kept WKV7 forward is the same
// arithmetic), and is refused where it cannot apply, naming the keys.
TEST_F(TrainerTest, KeepingTheWkvForwardThroughCheckpointsTrainsTheSameSteps) {
  const std::string methods =
      "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n";
  auto train_with = [&](const std::string& settings) {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(peftkit_command("train " + recipe(methods).string() + settings));
    return std::make_pair(result, metrics());
  };
  const auto [plain_run, plain] = train_with(" --set train.grad_cp=true");
  ASSERT_EQ(plain_run.exit_code, 0) << plain_run.output;
  const auto [kept_run, kept] =
      train_with(" --set train.grad_cp=true --set train.grad_cp_keep_wkv=true");
  ASSERT_EQ(kept_run.exit_code, 0) << kept_run.output;
  ASSERT_EQ(kept.size(), plain.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_EQ(kept[i]["loss"].get<double>(), plain[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(kept[i]["grad_norm"].get<double>(), plain[i]["grad_norm"].get<double>());
  }
  const auto [refused, unused] =
      train_with(" --set train.grad_cp=false --set train.grad_cp_keep_wkv=true");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("[train] grad_cp_keep_wkv = true needs grad_cp = true"),
            std::string::npos)
      << refused.output;
}

// GPU only: the frozen embedding read in place from pinned host memory trains exactly like the
// embedding in device memory (LoRA + state, bf16, CUDA graphs), and a trained embedding
// (train_parts) still gets its gradient.
TEST_F(TrainerTest, AnEmbeddingInHostMemoryTrainsLikeOneOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto train_with = [&](const std::string& methods, bool on_host) {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(peftkit_command(
        "train " + recipe(methods).string() +
        " --set run.device=cuda --set train.precision=bf16 --set train.embedding_on_host=" +
        (on_host ? "true" : "false")));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return metrics();
  };
  for (const std::string& methods :
       {std::string("[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n"),
        std::string("[peft]\nmethod = \"state\"\ntrain_parts = [\"emb\"]\n")}) {
    const auto on_device = train_with(methods, false), on_host = train_with(methods, true);
    ASSERT_EQ(on_device.size(), 12u) << methods;
    ASSERT_EQ(on_host.size(), 12u) << methods;
    for (size_t i = 0; i < on_host.size(); ++i) {
      EXPECT_EQ(on_host[i]["loss"].get<double>(), on_device[i]["loss"].get<double>())
          << methods << " step " << i + 1;
      EXPECT_EQ(on_host[i]["grad_norm"].get<double>(), on_device[i]["grad_norm"].get<double>())
          << methods << " step " << i + 1;
    }
  }
}

// GPU only (issue 20): a step that asks for more than the device holds stops with a message that
// names the step, the device, the size asked and the settings that would lower the peak, instead
// of CUDA's raw error. 65536 x 512 tokens of the tiny model: gigabytes per activation in fp32
// without checkpointing, far beyond any card.
TEST_F(TrainerTest, OutOfMemoryOnTheGpuNamesTheStepAndWhatToTry) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto result = run_command(
      peftkit_command("train " + recipe("[peft]\nmethod = \"state\"\n").string() +
                      " --set run.device=cuda --set train.micro_bsz=65536 --set train.ctx_len=512"
                      " --set train.grad_cp=false --set train.cuda_graphs=false"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("step 1 ran out of memory on cuda:0 (Tried to allocate"),
            std::string::npos)
      << result.output;
  for (const char* advice : {"micro_bsz", "grad_cp = true", "chunk_ctx"})
    EXPECT_NE(result.output.find(advice), std::string::npos) << advice << "\n" << result.output;
}

// GPU only: the trainer gives cuBLAS and cuBLASLt 4 MiB workspaces instead of LibTorch's 32 MiB
// on Hopper (0.14 GiB of the 1.6B LoRA step), and a workspace size the user set wins: with 32 MiB
// asked for, the allocator's peak holds at least one workspace's 28 MiB more.
TEST_F(TrainerTest, GemmWorkspacesAreSmallOnTheGpuUnlessTheUserSetTheirSize) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto peak_gib = [&](const std::string& environment) {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(
        environment + peftkit_command("train " + recipe("[peft]\nmethod = \"lora\"\n").string() +
                                      " --set run.device=cuda --set train.precision=bf16"));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    const auto steps = metrics();
    return steps.empty() ? 0.0 : steps.back()["peak_gpu_gib"].get<double>();
  };
  const double small = peak_gib("");
  const double asked = peak_gib("CUBLAS_WORKSPACE_CONFIG=:32768:1 CUBLASLT_WORKSPACE_SIZE=32768 ");
  EXPECT_GE(asked - small, 28.0 / 1024)
      << "peak " << small << " GiB by default, " << asked << " GiB with 32 MiB workspaces";
}

// GPU only: a step replayed from its CUDA graph computes what the eager step computes. LoRA on
// every site plus state tuning, checkpointed blocks, two micro-batches per step, bf16.
TEST_F(TrainerTest, CudaGraphStepsTrainLikeEagerStepsOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const std::string methods =
      "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n";
  const std::string train = "grad_cp = true\naccumulate_grad_batches = 2\n";
  auto train_with = [&](const std::string& graphs, const std::string& extra = "") {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(peftkit_command(
        "train " + recipe(methods, train).string() +
        " --set run.device=cuda --set train.precision=bf16 --set train.cuda_graphs=" + graphs +
        extra));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return std::make_pair(metrics(), result.output);
  };
  const auto [graphed, graphed_output] = train_with("true");
  const auto [eager, eager_output] = train_with("false");
  // The WKV7 forward kept through the checkpoints (captured too) computes the same steps.
  const auto [kept, kept_output] = train_with("true", " --set train.grad_cp_keep_wkv=true");
  ASSERT_EQ(kept.size(), graphed.size());
  for (size_t i = 0; i < kept.size(); ++i) {
    EXPECT_TRUE(kept[i]["cuda_graph"].get<bool>()) << "step " << i + 1;
    EXPECT_EQ(kept[i]["loss"].get<double>(), graphed[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(kept[i]["grad_norm"].get<double>(), graphed[i]["grad_norm"].get<double>())
        << "step " << i + 1;
  }
  ASSERT_EQ(graphed.size(), 12u);
  ASSERT_EQ(eager.size(), 12u);
  for (size_t i = 0; i < graphed.size(); ++i) {
    // Step 1's first micro-batch runs eagerly, its second is captured and replayed; then replays.
    EXPECT_TRUE(graphed[i]["cuda_graph"].get<bool>()) << "step " << i + 1;
    EXPECT_FALSE(eager[i]["cuda_graph"].get<bool>());
    EXPECT_NEAR(graphed[i]["loss"].get<double>(), eager[i]["loss"].get<double>(), 1e-4)
        << "step " << i + 1;
    EXPECT_NEAR(graphed[i]["grad_norm"].get<double>(), eager[i]["grad_norm"].get<double>(),
                1e-3 * eager[i]["grad_norm"].get<double>())
        << "step " << i + 1;
  }
  EXPECT_NE(graphed_output.find("micro-steps replayed as CUDA graphs"), std::string::npos)
      << graphed_output;
  // Dropout would repeat its mask in a replay: graphs switch themselves off.
  testing::remove_tree(dir_ / "out");
  auto dropout = run_command(peftkit_command(
      "train " + recipe(methods + "dropout = 0.1\n", train).string() + " --set run.device=cuda"));
  ASSERT_EQ(dropout.exit_code, 0) << dropout.output;
  for (const auto& line : metrics()) EXPECT_FALSE(line["cuda_graph"].get<bool>());
  EXPECT_NE(dropout.output.find("CUDA graphs off: the step draws random numbers"),
            std::string::npos)
      << dropout.output;
}

// chunk_ctx: samples of 32 tokens trained in segments of 12, 12 and 8 that carry the state give
// the losses, gradient norms and evaluation of unsegmented training (exact backpropagation through
// the state; fp32 on the CPU, so only rounding differs). State tuning + LoRA, so the gradient
// reaches the initial state and every carried tensor; with and without checkpointed blocks; on
// the RWKV-7 model and on an RWKV-6 one.
TEST_F(TrainerTest, ChunkedContextTrainsLikeTheWholeContext) {
  for (const char* model : {"model.pth", "model-x060.pth"}) {
    SCOPED_TRACE(model);
    expect_chunked_context_trains_like_the_whole(" --set model.path=" +
                                                 (shared_->path() / model).string());
  }
}

void TrainerTest::expect_chunked_context_trains_like_the_whole(const std::string& model) {
  const std::string methods =
      "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n";
  auto train_with = [&](const std::string& chunk, bool grad_cp) {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(peftkit_command(
        "train " + recipe(methods).string() + model + " --set train.chunk_ctx=" + chunk +
        " --set train.grad_cp=" + (grad_cp ? "true" : "false") + " --set data.eval_fraction=0.05"));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return metrics();
  };
  const auto whole = train_with("0", false);
  ASSERT_EQ(whole.size(), 13u);  // the evaluation before the first step, and 12 steps
  for (bool grad_cp : {false, true}) {
    const auto segmented = train_with("12", grad_cp);
    ASSERT_EQ(segmented.size(), whole.size());
    EXPECT_NEAR(segmented[0]["eval_loss"].get<double>(), whole[0]["eval_loss"].get<double>(),
                1e-5 * whole[0]["eval_loss"].get<double>());
    for (size_t i = 1; i < whole.size(); ++i) {
      const double loss = whole[i]["loss"].get<double>(),
                   norm = whole[i]["grad_norm"].get<double>();
      EXPECT_NEAR(segmented[i]["loss"].get<double>(), loss, 1e-5 * loss)
          << "step " << i << " grad_cp " << grad_cp;
      EXPECT_NEAR(segmented[i]["grad_norm"].get<double>(), norm, 1e-4 * norm) << "step " << i;
      if (whole[i].contains("eval_loss")) {
        EXPECT_NEAR(segmented[i]["eval_loss"].get<double>(), whole[i]["eval_loss"].get<double>(),
                    1e-5 * loss);
      }
    }
  }
  EXPECT_TRUE(whole.back().contains("eval_loss"));
}

// GPU only: chunk_ctx on the CUDA kernels (final-state gradient in, initial-state gradient out)
// inside captured steps, against the unsegmented batch; fp32 (TF32 off), state tuning + LoRA.
TEST_F(TrainerTest, ChunkedContextOnTheGpuTrainsLikeTheWholeContext) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const std::string methods =
      "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n";
  auto train_with = [&](const std::string& chunk) {
    testing::remove_tree(dir_ / "out");
    auto result =
        run_command(peftkit_command("train " + recipe(methods, "grad_cp = true\n").string() +
                                    " --set run.device=cuda --set train.chunk_ctx=" + chunk));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return metrics();
  };
  const auto whole = train_with("0");
  const auto segmented = train_with("12");
  ASSERT_EQ(whole.size(), 12u);
  ASSERT_EQ(segmented.size(), 12u);
  for (size_t i = 0; i < whole.size(); ++i) {
    const double loss = whole[i]["loss"].get<double>(), norm = whole[i]["grad_norm"].get<double>();
    EXPECT_NEAR(segmented[i]["loss"].get<double>(), loss, 1e-5 * loss) << "step " << i + 1;
    EXPECT_NEAR(segmented[i]["grad_norm"].get<double>(), norm, 1e-4 * norm) << "step " << i + 1;
    EXPECT_EQ(segmented[i]["cuda_graph"].get<bool>(), i >= 1) << "step " << i + 1;
  }
}

// GPU only: an RWKV-6 model with state tuning + LoRA computes the first step's loss and gradient
// on the GPU as on the CPU (fp32, TF32 off), and trains there. The gradient norm differed by 7 %
// until LoRA's A was drawn by the CPU's generator on every device (the CUDA generator draws other
// numbers from the same seed; the loss agreed since B starts at zero). Later steps are not
// compared: Adam turns rounding differences of near-zero gradient components into full-size
// updates.
TEST_F(TrainerTest, AnX060ModelTrainsOnTheGpuAsOnTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const std::string methods =
      "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n";
  auto train_on = [&](const std::string& device) {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(peftkit_command(
        "train " + recipe(methods).string() + " --set model.path=" +
        (shared_->path() / "model-x060.pth").string() + " --set run.device=" + device));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return metrics();
  };
  const auto cpu = train_on("cpu"), gpu = train_on("cuda");
  ASSERT_EQ(cpu.size(), 12u);
  ASSERT_EQ(gpu.size(), cpu.size());
  for (const char* key : {"loss", "grad_norm"}) {
    const double want = cpu[0][key].get<double>();
    EXPECT_NEAR(gpu[0][key].get<double>(), want, 1e-5 * want) << key;
  }
  EXPECT_LT(gpu.back()["loss"].get<double>(), gpu.front()["loss"].get<double>());
}

TEST_F(TrainerTest, InterruptedRunResumesExactly) {
  ASSERT_EQ(run_command(peftkit_command("train " + recipe().string())).exit_code, 0);
  const auto uninterrupted = metrics();
  testing::remove_tree(dir_ / "out");
  // Run in a child process and send SIGINT once a few steps are done.
  const std::string file = recipe().string(), log = (dir_ / "child.log").string();
  EXPECT_EQ(train_until_interrupted({file}, 3, log), 130) << testing::read_file(log);
  const std::string message = testing::read_file(log);
  EXPECT_NE(message.find("Resume with: peftkit train " + file + " --resume"), std::string::npos)
      << message;
  const size_t done = metrics().size();
  ASSERT_LT(done, uninterrupted.size());
  // A fresh start over an interrupted run is refused; --resume continues it.
  auto refused = run_command(peftkit_command("train " + file));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.output.find("already holds checkpoints of an earlier run"), std::string::npos)
      << refused.output;
  auto resumed = run_command(peftkit_command("train " + file + " --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  auto combined = metrics();
  ASSERT_EQ(combined.size(), uninterrupted.size());
  for (size_t i = 0; i < combined.size(); ++i)
    EXPECT_EQ(combined[i]["loss"].get<double>(), uninterrupted[i]["loss"].get<double>())
        << "step " << i + 1;
}

TEST_F(TrainerTest, HardKillLosesOnlyTheStepsAfterTheLastCheckpoint) {
  ASSERT_EQ(run_command(peftkit_command("train " + recipe().string())).exit_code, 0);
  const auto uninterrupted = metrics();
  testing::remove_tree(dir_ / "out");
  const std::string binary = PEFTKIT_BINARY, file = recipe().string();
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    freopen("/dev/null", "w", stderr);
    freopen("/dev/null", "w", stdout);
    execl(binary.c_str(), binary.c_str(), "train", file.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // The first checkpoint is written at step 4 (end of epoch 0); kill after step 5 without warning.
  for (int i = 0; i < 600 && metrics().size() < 5; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  // The kill landed mid-run: otherwise this test would prove nothing.
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the run ended first";
  ASSERT_LT(metrics().size(), uninterrupted.size());
  auto resumed = run_command(peftkit_command("train " + file + " --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  auto combined = metrics();
  ASSERT_EQ(combined.size(), uninterrupted.size());
  for (size_t i = 0; i < combined.size(); ++i) {
    EXPECT_EQ(combined[i]["step"].get<int>(), static_cast<int>(i) + 1);
    EXPECT_EQ(combined[i]["loss"].get<double>(), uninterrupted[i]["loss"].get<double>())
        << "step " << i + 1;
  }
}

// Resume for every method and the settings that carry state across steps: a run stopped by
// SIGTERM (exit 130) after three steps and resumed gives the uninterrupted run's losses and its
// saved files bit for bit.
struct ResumeCase {
  const char* name;
  const char* sections;  // appended to the recipe
  const char* train;     // added to [train]
};
class ResumeEveryMethod : public TrainerTest, public ::testing::WithParamInterface<ResumeCase> {};

TEST_P(ResumeEveryMethod, AStoppedRunResumesToTheSameFilesBitForBit) {
  const ResumeCase& c = GetParam();
  const std::string file = recipe(c.sections, c.train).string();
  auto whole = run_command(peftkit_command("train " + file));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  const auto uninterrupted = metrics();
  testing::remove_tree(dir_ / "uninterrupted");
  std::filesystem::rename(dir_ / "out", dir_ / "uninterrupted");

  const std::string log = (dir_ / "child.log").string();
  EXPECT_EQ(train_until_interrupted({file}, 3, log, SIGTERM), 130) << testing::read_file(log);
  ASSERT_LT(metrics().size(), uninterrupted.size()) << "the run ended before the signal";
  auto resumed = run_command(peftkit_command("train " + file + " --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto combined = metrics();
  ASSERT_EQ(combined.size(), uninterrupted.size());
  for (size_t i = 0; i < combined.size(); ++i)
    EXPECT_EQ(combined[i]["loss"].get<double>(), uninterrupted[i]["loss"].get<double>())
        << "step " << i + 1;
  for (const char* saved : {"rwkv-0.pth", "rwkv-1.pth", "rwkv-2.pth"})
    expect_same_files(dir_ / "out" / saved, dir_ / "uninterrupted" / saved);
}

INSTANTIATE_TEST_SUITE_P(
    Trainer, ResumeEveryMethod,
    ::testing::Values(
        ResumeCase{"state", "[peft]\nmethod = \"state\"\n", ""},
        ResumeCase{"lora", "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n", ""},
        ResumeCase{"pissa", "[peft]\nmethod = \"pissa\"\n[peft.pissa]\nr = 4\nalpha = 4\n", ""},
        ResumeCase{"miss", "[peft]\nmethod = \"miss\"\n[peft.miss]\nr = 16\n", ""},
        ResumeCase{"lora_on_nf4",
                   "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n"
                   "[quant]\nmethod = \"nf4\"\n",
                   ""},
        ResumeCase{"state_chunk_ctx", "[peft]\nmethod = \"state\"\n", "chunk_ctx = 12\n"},
        ResumeCase{"lora_accumulating",
                   "[peft]\nmethod = \"lora\"\n[peft.lora]\nr = 4\nalpha = 8\n",
                   "accumulate_grad_batches = 2\n"}),
    [](const ::testing::TestParamInfo<ResumeCase>& info) { return std::string(info.param.name); });

// SIGKILL at 24 moments — half at random times, half the moment a checkpoint or epoch file is
// being written — each followed by a restart of the same command (resume = "auto"; a 48-step
// run of 24 epochs, each saved and checkpointed). Every restart
// finds a loadable checkpoint (or none yet), no saved epoch is lost, temporary files of killed
// writes are cleaned, and every epoch file equals the uninterrupted run's bit for bit.
TEST_F(TrainerTest, TwentyFourHardKillsLoseNothing) {
  const std::string file =
      recipe("[peft]\nmethod = [\"state\", \"lora\"]\n[peft.lora]\nr = 4\nalpha = 8\n",
             "resume = \"auto\"\nkeep_checkpoints = 2\n")
          .string();
  const std::string settings = " --set train.epoch_steps=2 --set train.epoch_count=24";
  auto whole = run_command(peftkit_command("train " + file + settings));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  const auto uninterrupted = metrics();
  ASSERT_EQ(uninterrupted.size(), 48u);
  testing::remove_tree(dir_ / "uninterrupted");
  std::filesystem::rename(dir_ / "out", dir_ / "uninterrupted");

  auto writing = [&] {  // a temporary file of a write in progress is in the output folders
    for (const auto& folder : {dir_ / "out", dir_ / "out" / "checkpoints"}) {
      std::error_code ec;
      for (const auto& entry : std::filesystem::directory_iterator(folder, ec))
        if (entry.path().filename().string().find(".tmp-") != std::string::npos) return true;
    }
    return false;
  };
  std::mt19937 random(7);
  const std::string binary = PEFTKIT_BINARY;
  const std::string log = (dir_ / "child.log").string();
  int kills = 0, kills_while_writing = 0, attempts = 0, restarts_from_scratch = 0;
  bool finished = false;
  while (!finished && attempts < 200) {
    ++attempts;
    const bool at_a_write = kills % 2 == 1;
    // A whole run takes about a second here, most of it starting up: short delays land in steps.
    const int delay_ms = std::uniform_int_distribution<int>(30, 600)(random);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      freopen(log.c_str(), "w", stderr);
      freopen(log.c_str(), "a", stdout);
      execl(binary.c_str(), binary.c_str(), "train", file.c_str(), "--set", "train.epoch_steps=2",
            "--set", "train.epoch_count=24", static_cast<char*>(nullptr));
      _exit(127);
    }
    const auto start = std::chrono::steady_clock::now();
    int status = 0;
    bool exited = false, killed_while_writing = false;
    while (!(exited = waitpid(child, &status, WNOHANG) == child)) {
      const bool due = at_a_write ? writing()
                                  : std::chrono::steady_clock::now() - start >=
                                        std::chrono::milliseconds(delay_ms);
      if (due && kills < 24) {
        killed_while_writing = at_a_write;
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ASSERT_TRUE(exited);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
      ++kills;
      kills_while_writing += killed_while_writing;
      continue;
    }
    ASSERT_TRUE(WIFEXITED(status)) << testing::read_file(log);
    ASSERT_EQ(WEXITSTATUS(status), 0) << "restart " << attempts << ": " << testing::read_file(log);
    finished = kills >= 24;
    if (!finished) {  // the run ended before 24 kills: train it again from the start
      testing::remove_tree(dir_ / "out");
      ++restarts_from_scratch;
    }
  }
  ASSERT_TRUE(finished) << kills << " kills in " << attempts << " starts";
  std::printf(
      "[ kill loop ] %d SIGKILLs (%d during a write) in %d starts, %d run(s) from scratch\n", kills,
      kills_while_writing, attempts, restarts_from_scratch + 1);
  EXPECT_GE(kills_while_writing, 6) << "kills that landed during a write";
  EXPECT_FALSE(writing()) << "a temporary file of a killed write was left behind";
  const auto combined = metrics();
  ASSERT_EQ(combined.size(), uninterrupted.size());
  for (size_t i = 0; i < combined.size(); ++i) {
    EXPECT_EQ(combined[i]["step"].get<int>(), static_cast<int>(i) + 1);
    EXPECT_EQ(combined[i]["loss"].get<double>(), uninterrupted[i]["loss"].get<double>())
        << "step " << i + 1;
  }
  for (int epoch = 0; epoch < 24; ++epoch) {
    const std::string saved = "rwkv-" + std::to_string(epoch) + ".pth";
    expect_same_files(dir_ / "out" / saved, dir_ / "uninterrupted" / saved);
  }
}

// A full disk: the output folder is a small tmpfs (mounted in a user and mount namespace of the
// test's own, so no privileges are needed) with room for the first epoch's files only. The save
// that does not fit fails naming its file and the system's reason and exits non-zero, no
// temporary file stays, the first epoch's files are intact, and resuming from them elsewhere
// ends where an unconstrained run ends.
TEST_F(TrainerTest, AFullDiskIsAClearErrorAndKeepsWhatWasSaved) {
  const std::string file = recipe().string();
  auto whole = run_command(peftkit_command("train " + file));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  std::filesystem::rename(dir_ / "out", dir_ / "roomy");
  const auto epoch_file = std::filesystem::file_size(dir_ / "roomy" / "rwkv-0.pth");
  const auto checkpoint = std::filesystem::file_size(checkpoints_in(dir_ / "roomy").back());
  const auto room_kib = (epoch_file + checkpoint + epoch_file / 2) / 1024 + 64;

  std::filesystem::create_directories(dir_ / "out");
  const std::string script = "mount -t tmpfs -o size=" + std::to_string(room_kib) +
                             "k tmpfs \"$0/out\" || exit 90; \"$1\" train \"$2\"; code=$?; "
                             "mkdir -p \"$0/kept\" && cp -a \"$0/out/.\" \"$0/kept/\"; exit $code";
  auto full = run_command("unshare --user --map-root-user --mount sh -c '" + script + "' " +
                          dir_.path().string() + " " + PEFTKIT_BINARY + " " + file);
  ASSERT_NE(full.exit_code, 90) << "could not mount a tmpfs in a user namespace: " << full.output;
  EXPECT_EQ(full.exit_code, 1) << full.output;
  EXPECT_NE(full.output.find("No space left on device"), std::string::npos) << full.output;
  std::printf("[ full disk ] %s\n", full.output.substr(full.output.rfind("error")).c_str());
  EXPECT_NE(full.output.find((dir_ / "out").string()), std::string::npos)
      << "the error names the file: " << full.output;
  const auto kept = dir_ / "kept";
  for (const auto& folder : {kept, kept / "checkpoints"})
    for (const auto& entry : std::filesystem::directory_iterator(folder))
      EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  expect_same_files(kept / "rwkv-0.pth", dir_ / "roomy" / "rwkv-0.pth");
  const auto checkpoints = checkpoints_in(kept);
  ASSERT_FALSE(checkpoints.empty());
  EXPECT_EQ(read_pth(checkpoints.back()).at("trainer.step").item<int64_t>(), 4);

  testing::remove_tree(dir_ / "out");
  std::filesystem::rename(kept, dir_ / "out");
  auto resumed = run_command(peftkit_command("train " + file + " --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_files(dir_ / "out" / "rwkv-2.pth", dir_ / "roomy" / "rwkv-2.pth");
}

// The output folder turns read-only mid-run (permissions taken away; as root the child drops to
// nobody so that they apply). Ctrl-C then still exits 130, saying the checkpoint could not be
// written, why, and which earlier one is kept; without Ctrl-C the next epoch's save fails with an
// error naming the file and the reason. The earlier checkpoint stays intact either way.
TEST_F(TrainerTest, AReadOnlyOutputFolderIsAClearErrorAndCtrlCStillExits130) {
  const std::string file = recipe().string();
  std::filesystem::permissions(dir_.path(), std::filesystem::perms::all);
  for (const bool interrupt : {true, false}) {
    SCOPED_TRACE(interrupt ? "Ctrl-C" : "the next save");
    testing::remove_tree(dir_ / "out");
    const std::string log = (dir_ / "child.log").string(), binary = PEFTKIT_BINARY;
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) _exit(126);
      freopen(log.c_str(), "w", stderr);
      freopen(log.c_str(), "a", stdout);
      execl(binary.c_str(), binary.c_str(), "train", file.c_str(), "--set", "train.epoch_count=40",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    // Epoch 0 ends at step 4 with its file and checkpoint; take the folders' write permission
    // away after step 5.
    for (int i = 0; i < 600 && metrics().size() < 5; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const auto read_only = std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec;
    std::filesystem::permissions(dir_ / "out" / "checkpoints", read_only);
    std::filesystem::permissions(dir_ / "out", read_only);
    if (interrupt) kill(child, SIGINT);
    int status = 0;
    waitpid(child, &status, 0);
    std::filesystem::permissions(dir_ / "out", std::filesystem::perms::owner_all);
    std::filesystem::permissions(dir_ / "out" / "checkpoints", std::filesystem::perms::owner_all);
    const std::string output = testing::read_file(log);
    ASSERT_TRUE(WIFEXITED(status)) << output;
    ASSERT_NE(WEXITSTATUS(status), 126) << "could not drop to nobody";
    EXPECT_NE(output.find("Permission denied"), std::string::npos) << output;
    if (interrupt) {
      EXPECT_EQ(WEXITSTATUS(status), 130) << output;
      EXPECT_NE(output.find("its checkpoint could not be written"), std::string::npos) << output;
      EXPECT_NE(output.find("the newest earlier checkpoint is kept: " +
                            (dir_ / "out" / "checkpoints").string()),
                std::string::npos)
          << output;
    } else {
      EXPECT_EQ(WEXITSTATUS(status), 1) << output;
      EXPECT_NE(output.find((dir_ / "out").string() + "/rwkv-"), std::string::npos)
          << "the error names the file: " << output;
    }
    const auto checkpoints = checkpoints_in(dir_ / "out");
    ASSERT_EQ(checkpoints.size(), 1u);
    EXPECT_GE(read_pth(checkpoints.back()).at("trainer.step").item<int64_t>(), 4);
  }
}

// `[run] threads` far above the core count: capped at the cores with a warning, and the run's
// peak resident memory (measured by Python around the child) stays bounded.
TEST_F(TrainerTest, ThreadsFarAboveTheCoresAreCappedInBoundedMemory) {
  const auto script = testing::write_file(
      dir_ / "peak.py",
      "import resource, subprocess, sys\n"
      "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
      "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
      "print(r.stdout + r.stderr)\n");
  auto result =
      run_command(std::string(PEFTKIT_PYTHON) + " " + script.string() + " " + PEFTKIT_BINARY +
                  " train " + recipe().string() + " --set run.threads=1024");
  int code = -1;
  long peak_mib = -1;
  ASSERT_EQ(std::sscanf(result.output.c_str(), "%d %ld", &code, &peak_mib), 2) << result.output;
  EXPECT_EQ(code, 0) << result.output;
  const std::string cores = std::to_string(std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_NE(result.output.find("[run] threads = 1024 is more than the " + cores +
                               " cores here; using " + cores),
            std::string::npos)
      << result.output;
  EXPECT_LT(peak_mib, 1500) << result.output;
  std::printf("[ threads ] 1024 asked, %s used, peak resident memory %ld MiB\n", cores.c_str(),
              peak_mib);
}

// Recipe keys that change numbering or numerics, each checked for its effect:
// epoch_begin numbers the files from it; precision "tf32" on the CPU is fp32 bit for bit (TF32
// touches CUDA matmuls only); weight_decay is decoupled and reaches 2-D weights only: after one
// step, w(wd) = w(0) - lr * wd * w0 for a matrix, and a vector is untouched.
TEST_F(TrainerTest, EpochBeginTf32AndWeightDecayDoWhatTheRecipeSays) {
  auto train = [&](const std::string& settings) {
    testing::remove_tree(dir_ / "out");
    auto result = run_command(peftkit_command("train " + recipe().string() + settings));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return metrics();
  };
  train(" --set train.epoch_begin=5");
  for (int n : {5, 6, 7})
    EXPECT_TRUE(std::filesystem::exists(dir_ / "out" / ("rwkv-" + std::to_string(n) + ".pth")))
        << n;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out" / "rwkv-0.pth"));

  const auto fp32 = train(" --set run.device=cpu"),
             tf32 = train(" --set run.device=cpu --set train.precision=tf32");
  ASSERT_EQ(tf32.size(), fp32.size());
  for (size_t i = 0; i < fp32.size(); ++i)
    EXPECT_EQ(tf32[i]["loss"].get<double>(), fp32[i]["loss"].get<double>()) << "step " << i + 1;

  const std::string one_step =
      " --set train.epoch_steps=1 --set train.epoch_count=1 --set train.warmup_steps=0"
      " --set train.lr_init=1e-3 --set train.lr_final=1e-3";
  auto params_after = [&](const std::string& decay) {
    train(one_step + " --set train.weight_decay=" + decay);
    return read_pth(checkpoints_in(dir_ / "out").back());
  };
  const TensorMap plain = params_after("0"), decayed = params_after("0.5");
  const TensorMap w0 = read_pth(shared_->path() / "model.pth");
  const double lr = 1e-3, wd = 0.5;
  for (const char* name : {"blocks.0.att.key.weight", "blocks.1.att.receptance.weight"}) {
    const at::Tensor start = w0.at(name).to(at::kFloat);
    const at::Tensor shift = decayed.at(std::string("param.") + name) -
                             plain.at(std::string("param.") + name),
                     want = -lr * wd * start;
    EXPECT_LT((shift - want).abs().max().item<double>(), 1e-3 * want.abs().max().item<double>())
        << name;
  }
  for (const char* name : {"blocks.0.ln1.weight", "ln_out.weight"})
    EXPECT_TRUE(
        decayed.at(std::string("param.") + name).equal(plain.at(std::string("param.") + name)))
        << name << ": a vector is not decayed";
}

TEST_F(TrainerTest, ResumeNeedsACheckpointOfTheSameRun) {
  auto result = run_command(peftkit_command("train " + recipe().string() + " --resume"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.output.find("no checkpoint in"), std::string::npos) << result.output;
  ASSERT_EQ(run_command(peftkit_command("train " + recipe().string())).exit_code, 0);
  result = run_command(
      peftkit_command("train " + recipe().string() + " --resume --set train.micro_bsz=3"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.output.find("belongs to a run with different settings"), std::string::npos)
      << result.output;
  // keep_checkpoints = 2: only the newest two remain.
  size_t checkpoints = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ / "out" / "checkpoints"))
    checkpoints += entry.path().extension() == ".ckpt";
  EXPECT_EQ(checkpoints, 2u);
}

TEST_F(TrainerTest, NonFiniteStepsAreSkippedThenTheRunStops) {
  // An absurd learning rate overflows the weights within a few steps.
  auto result = run_command(
      peftkit_command("train " + recipe("", "max_bad_steps = 2\ngrad_clip = 0.0\n").string() +
                      " --set train.lr_init=1e30 --set train.lr_final=1e30"));
  EXPECT_EQ(result.exit_code, 4) << result.output;
  EXPECT_NE(result.output.find("steps in a row had a non-finite loss or gradient"),
            std::string::npos)
      << result.output;
  auto lines = metrics();
  ASSERT_GE(lines.size(), 2u);
  EXPECT_TRUE(lines.back()["skipped"].get<bool>());
}

TEST_F(TrainerTest, TrainPartsTrainAndSaveOnlyTheSelectedTensors) {
  auto result =
      run_command(peftkit_command("train " + recipe("[peft]\ntrain_parts = [\"ln\"]\n").string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  TensorMap saved = read_pth(dir_ / "out" / "rwkv-0.pth");
  EXPECT_EQ(saved.size(),
            4u + 2u * 6u);  // ln0, ln_out, and per layer ln1, ln2, ln_x (weight and bias)
  for (const auto& [name, t] : saved) EXPECT_NE(name.find("ln"), std::string::npos) << name;
  TensorMap base = read_pth(shared_->path() / "model.pth");
  // (A fresh model's output projections are zero, so only ln0 and ln_out get gradients yet.)
  EXPECT_FALSE(at::equal(saved.at("ln_out.weight"), base.at("ln_out.weight")));
  auto none = run_command(
      peftkit_command("train " + recipe("[peft]\ntrain_parts = [\"nothing\"]\n").string()));
  EXPECT_NE(none.output.find("train_parts: matches no tensor of the model"), std::string::npos)
      << none.output;
}

TEST_F(TrainerTest, Bfloat16TrainingKeepsFp32MastersAndLearns) {
  auto result = run_command(peftkit_command(
      "train " + recipe().string() + " --set train.precision=bf16 --set train.grad_cp=true"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto lines = metrics();
  ASSERT_EQ(lines.size(), 12u);
  EXPECT_LT(lines.back()["loss"].get<double>(), lines.front()["loss"].get<double>() - 0.5);
  // The saved model keeps the base file's dtype.
  EXPECT_EQ(read_pth(dir_ / "out" / "rwkv-2.pth").at("head.weight").scalar_type(), at::kBFloat16);
}

// [peft.<method>] lr_scale multiplies that method's learning rate: Adam's first step moves every
// parameter with a gradient by lr (times its scale), so after one step from zero the state (scaled
// 100x) moved 100 times as far as LoRA's B (scaled 1x), and each by exactly its learning rate. (A
// perturbed model: RWKV-LM's init has zero output projections, through which the state gets its
// gradient.)
TEST_F(TrainerTest, PerMethodLearningRateScales) {
  write_pth(dir_ / "perturbed.pth",
            testing::perturbed_model(model::ModelConfig::for_size(2, 64, 1000, 32), 6));
  const std::string methods =
      "[peft]\nmethod = [\"state\", \"lora\"]\n[peft.state]\nlr_scale = 100\n[peft.lora]\nr = "
      "4\nalpha = 8\n";
  auto result = run_command(peftkit_command(
      "train " + recipe(methods).string() +
      " --set model.path=" + (dir_ / "perturbed.pth").string() +
      " --set train.epoch_steps=1 --set train.epoch_count=1 --set train.warmup_steps=0"
      " --set train.lr_init=1e-3 --set train.lr_final=1e-3"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  double state = 0, lora_b = 0;
  for (const auto& [name, t] : read_pth(dir_ / "out" / "rwkv-0.pth")) {
    const double largest = t.abs().max().item<double>();
    if (name.find("time_state") != std::string::npos) state = std::max(state, largest);
    if (name.find("lora_B") != std::string::npos) lora_b = std::max(lora_b, largest);
  }
  EXPECT_NEAR(state, 0.1, 0.1 * 0.01);     // 1e-3 x 100 (bf16 in the file)
  EXPECT_NEAR(lora_b, 1e-3, 1e-3 * 0.01);  // 1e-3 x 1
  // The key is checked like any other: a scale must be positive.
  auto bad = run_command(
      peftkit_command("train " + recipe(methods).string() + " --set peft.state.lr_scale=0"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("[peft.state] lr_scale: expected"), std::string::npos) << bad.output;
}

TEST_F(TrainerTest, EvaluationOnASeparateFile) {
  auto result =
      run_command(peftkit_command("train " + recipe().string() + " --set data.eval_file=" +
                                  (shared_->path() / "tokens.npy").string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto lines = metrics();
  ASSERT_EQ(lines.size(), 13u);
  EXPECT_EQ(lines[0]["step"], 0);  // before the first step
  EXPECT_EQ(lines[0]["tokens"], 0);
  EXPECT_TRUE(lines[0].contains("eval_loss"));
  EXPECT_FALSE(lines[0].contains("loss"));
  EXPECT_TRUE(lines[4].contains("eval_loss"));  // at the end of each epoch
  EXPECT_FALSE(lines[3].contains("eval_loss"));
  auto without =
      run_command(peftkit_command("train " + recipe().string() + " --set data.eval_file=" +
                                  (shared_->path() / "tokens.npy").string() +
                                  " --set data.eval_at_start=false --set output.dir=out-no-start"));
  ASSERT_EQ(without.exit_code, 0) << without.output;
  const auto no_start = testing::read_metrics(dir_ / "out-no-start" / "metrics.jsonl");
  ASSERT_EQ(no_start.size(), 12u);
  EXPECT_EQ(no_start[0]["step"], 1);
  auto both = run_command(peftkit_command(
      "train " + recipe().string() + " --set data.eval_file=x.npy --set data.eval_fraction=0.1"));
  EXPECT_NE(both.output.find("give either eval_file or eval_fraction, not both"), std::string::npos)
      << both.output;
}

TEST_F(TrainerTest, EvaluationReportsLossAndPerplexity) {
  auto result = run_command(peftkit_command(
      "train " + recipe().string() + " --set data.eval_fraction=0.1 --set data.eval_every=2"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto lines = metrics();
  ASSERT_EQ(lines[0]["step"], 0);
  ASSERT_TRUE(lines[0].contains("eval_loss"));
  EXPECT_FALSE(lines[1].contains("eval_loss"));
  ASSERT_TRUE(lines[2].contains("eval_loss"));
  EXPECT_NEAR(lines[2]["eval_ppl"].get<double>(), std::exp(lines[2]["eval_loss"].get<double>()),
              1e-9);
  const double accuracy = lines[2]["eval_accuracy"].get<double>();
  EXPECT_GE(accuracy, 0.0);
  EXPECT_LE(accuracy, 1.0);
  EXPECT_GT(lines[2]["eval_tokens"].get<int64_t>(), 0);
  auto bad =
      run_command(peftkit_command("train " + recipe().string() + " --set data.eval_every=2"));
  EXPECT_NE(bad.output.find("eval_every: needs eval_file or eval_fraction"), std::string::npos)
      << bad.output;
}

// Issue 14 item 7: a batch without a counted target updates nothing and is reported as skipped;
// a data file without any target is refused at open; item 11: a run whose every step was skipped
// does not exit 0.
TEST_F(TrainerTest, BatchesWithoutTargetsUpdateNothingAndAllSkippedIsAFailure) {
  std::string lines = "{\"text\": \"a b c d e f g h\"}\n";
  for (int i = 0; i < 7; ++i) lines += "{\"text\": \"\"}\n";
  const auto data = testing::write_file(dir_ / "mixed.jsonl", lines);
  const std::string jsonl =
      " --set data.format=jsonl --set data.path=" + data.string() + " --set train.micro_bsz=1";
  auto mixed = run_command(
      peftkit_command("train " + recipe("[peft]\ntrain_parts = [\"ln_out\"]\n").string() + jsonl));
  ASSERT_EQ(mixed.exit_code, 0) << mixed.output;
  int64_t tokens = 0, skipped = 0;
  for (const auto& line : metrics()) {
    const bool counted = line["tokens"].get<int64_t>() > tokens;
    tokens = line["tokens"].get<int64_t>();
    EXPECT_EQ(line["skipped"].get<bool>(), !counted) << line.dump();
    EXPECT_EQ(line["loss"].is_null(), !counted) << line.dump();
    skipped += !counted;
  }
  EXPECT_GT(skipped, 0);
  EXPECT_NE(mixed.output.find("no target token counts in its batches"), std::string::npos)
      << mixed.output;

  // Only empty documents: refused before training, nothing written but the folder.
  const auto empty =
      testing::write_file(dir_ / "empty.jsonl", "{\"text\": \"\"}\n{\"text\": \"\"}\n");
  testing::remove_tree(dir_ / "out");
  auto refused = run_command(peftkit_command(
      "train " + recipe().string() + " --set data.format=jsonl --set data.path=" + empty.string()));
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find(empty.string() + ": no line has a token to learn"),
            std::string::npos)
      << refused.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out" / "rwkv-0.pth"));

  // One step that draws an empty document (seed 3 draws index 1 first): nothing learned, exit 4.
  const auto pair =
      testing::write_file(dir_ / "pair.jsonl", "{\"text\": \"a b c d\"}\n{\"text\": \"\"}\n");
  testing::remove_tree(dir_ / "out");
  auto all_skipped = run_command(peftkit_command(
      "train " + recipe().string() + " --set data.format=jsonl --set data.path=" + pair.string() +
      " --set train.micro_bsz=1 --set train.epoch_steps=1 --set train.epoch_count=1 --set "
      "train.seed=3"));
  ASSERT_EQ(metrics().size(), 1u) << all_skipped.output;
  ASSERT_EQ(metrics()[0]["tokens"].get<int64_t>(), 0)
      << "seed 3 drew the non-empty line; pick another seed";
  EXPECT_EQ(all_skipped.exit_code, 4) << all_skipped.output;
  EXPECT_NE(all_skipped.output.find("all 1 steps of this run were skipped"), std::string::npos)
      << all_skipped.output;
}

// Issue 14 item 8: a base model named like an output inside the output folder, or a recipe named
// recipe.toml in its own output folder, used to be overwritten.
TEST_F(TrainerTest, TrainingNeverWritesOverItsInputs) {
  std::filesystem::create_directories(dir_ / "out");
  std::filesystem::copy_file(shared_->path() / "model.pth", dir_ / "out" / "rwkv-0.pth");
  const std::string model_before = testing::read_file(dir_ / "out" / "rwkv-0.pth");
  auto result = run_command(
      peftkit_command("train " + recipe().string() + " --set model.path=out/rwkv-0.pth"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("[output] dir: the run would write " +
                               (dir_ / "out" / "rwkv-0.pth").string() +
                               ", which is [model] path; training never writes over its inputs"),
            std::string::npos)
      << result.output;
  EXPECT_EQ(testing::read_file(dir_ / "out" / "rwkv-0.pth"), model_before);

  // A recipe in its own output folder, named recipe.toml: refused, its comments kept.
  const std::string text = "# my notes\n" + testing::read_file(recipe());
  std::string own = text;
  own.replace(own.find("dir = \"out\""), 11, "dir = \".\"");
  const auto inside = testing::write_file(dir_ / "own" / "recipe.toml", own);
  result = run_command(peftkit_command("train " + inside.string()));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("which is the recipe; training never writes over its inputs"),
            std::string::npos)
      << result.output;
  EXPECT_EQ(testing::read_file(inside), own);
}

// Issue 14 item 10: a damaged newest checkpoint is named and set aside, and the run resumes from
// the newest intact one (a one-bit flip used to load and silently diverge).
TEST_F(TrainerTest, ADamagedCheckpointIsReportedAndTheNewestIntactOneIsUsed) {
  ASSERT_EQ(run_command(peftkit_command("train " + recipe().string())).exit_code, 0);
  const auto uninterrupted = metrics();
  const auto newest = dir_ / "out" / "checkpoints" / "step-000000012.ckpt";
  std::string bytes = testing::read_file(newest);
  bytes[bytes.size() / 2] ^= 0x04;
  testing::write_file(newest, bytes);
  auto resumed = run_command(peftkit_command("train " + recipe().string() + " --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("cannot use checkpoint " + newest.string() + ": entry "),
            std::string::npos)
      << resumed.output;
  EXPECT_NE(resumed.output.find("is damaged"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("falling back to step-000000008.ckpt"), std::string::npos)
      << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  EXPECT_TRUE(std::filesystem::exists(newest.string() + ".damaged"));
  const auto again = metrics();
  ASSERT_EQ(again.size(), uninterrupted.size());
  for (size_t i = 0; i < again.size(); ++i)
    EXPECT_EQ(again[i]["loss"].get<double>(), uninterrupted[i]["loss"].get<double>())
        << "step " << i + 1;
}

// Issue 14 item 11: non-finite weights are reported at load with the tensor's name (a NaN model
// used to train two skipped steps, exit 0 and save NaN weights).
TEST_F(TrainerTest, NonFiniteWeightsAreReportedAtLoad) {
  const auto nan_model = dir_ / "nan.pth";
  auto make = run_command(std::string(PEFTKIT_PYTHON) + " -c \"import torch; m = torch.load('" +
                          (shared_->path() / "model.pth").string() +
                          "', weights_only=True); "
                          "m['blocks.1.att.key.weight'][3, 5] = float('nan'); torch.save(m, '" +
                          nan_model.string() + "')\"");
  ASSERT_EQ(make.exit_code, 0) << make.output;
  auto result = run_command(
      peftkit_command("train " + recipe().string() + " --set model.path=" + nan_model.string()));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find(nan_model.string() +
                               ": tensor 'blocks.1.att.key.weight' holds 1 non-finite value(s)"),
            std::string::npos)
      << result.output;
  auto generate = run_command(
      peftkit_command("generate --model " + nan_model.string() + " --prompt hi --temperature 0"));
  EXPECT_EQ(generate.exit_code, 1) << generate.output;
  EXPECT_NE(generate.output.find("'blocks.1.att.key.weight' holds 1 non-finite value(s)"),
            std::string::npos)
      << generate.output;
}

// Issue 14 item 21: the printed resume command keeps the run's --set overrides.
TEST_F(TrainerTest, TheResumeHintKeepsTheOverrides) {
  const std::string file = recipe().string(), log = (dir_ / "child.log").string();
  ASSERT_EQ(train_until_interrupted(
                {file, "--set", "train.lr_init=2e-3", "--set", "train.warmup_steps=1"}, 2, log),
            130)
      << testing::read_file(log);
  const std::string message = testing::read_file(log);
  const std::string hint =
      "peftkit train " + file + " --set train.lr_init=2e-3 --set train.warmup_steps=1 --resume";
  ASSERT_NE(message.find("Resume with: " + hint), std::string::npos) << message;
  // Run as printed, it continues the same run (the settings' fingerprint matches).
  auto resumed = run_command(peftkit_command(hint.substr(std::string("peftkit ").size())));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
}

// Issue 14 item 9: resuming on a full disk rewrote metrics.jsonl with an unchecked write and
// renamed the truncated file into place. The file-size limit (`ulimit -f`, SIGXFSZ ignored) makes
// the rewrite fail like a full disk: the error names the file and the reason, and the complete
// metrics.jsonl stays as it was.
TEST_F(TrainerTest, AFailedMetricsRewriteOnResumeLosesNothing) {
  const std::string file = recipe().string(),
                    longer = " --set train.epoch_steps=20 --set train.ctx_len=8";
  ASSERT_EQ(run_command(peftkit_command("train " + file + longer)).exit_code, 0);
  const std::string metrics_before = testing::read_file(dir_ / "out" / "metrics.jsonl");
  ASSERT_GT(metrics_before.size(), 9000u);  // 60 lines; resuming at step 40 rewrites 40 of them
  ASSERT_LT(testing::read_file(dir_ / "out" / "recipe.toml").size(),
            5000u);  // written before, must fit
  const auto newest = dir_ / "out" / "checkpoints" / "step-000000060.ckpt";
  ASSERT_TRUE(std::filesystem::exists(newest));
  std::filesystem::rename(newest, dir_ / "step-60.kept");
  auto result = run_command("bash -c 'trap \"\" XFSZ; ulimit -f 6; exec " +
                            peftkit_command("train " + file + longer) + " --resume'");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find((dir_ / "out" / "metrics.jsonl").string() + ": writing failed"),
            std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("File too large"), std::string::npos) << result.output;
  EXPECT_EQ(testing::read_file(dir_ / "out" / "metrics.jsonl"), metrics_before);
  for (const auto& entry : std::filesystem::directory_iterator(dir_ / "out"))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

// Issue 14 item 22: a FIFO given as a path hung forever; a file where the output folder should be
// ended in "internal error". Both are input errors (exit 1) naming the path.
TEST_F(TrainerTest, FifosAndFilesInTheWayAreInputErrors) {
  const auto fifo = dir_ / "fifo.npy";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto data = run_command("timeout 60 " + peftkit_command("train " + recipe().string() +
                                                          " --set data.path=" + fifo.string()));
  EXPECT_EQ(data.exit_code, 1) << data.output;
  EXPECT_NE(data.output.find(fifo.string() + ": not a regular file"), std::string::npos)
      << data.output;
  auto inspect = run_command("timeout 60 " + peftkit_command("inspect " + fifo.string()));
  EXPECT_EQ(inspect.exit_code, 1) << inspect.output;
  EXPECT_NE(inspect.output.find(fifo.string() + ": not a regular file (a FIFO)"), std::string::npos)
      << inspect.output;
  auto recipe_fifo = run_command("timeout 60 " + peftkit_command("recipe check " + fifo.string()));
  EXPECT_EQ(recipe_fifo.exit_code, 1) << recipe_fifo.output;

  testing::write_file(dir_ / "taken", "a file, not a folder");
  auto taken =
      run_command(peftkit_command("train " + recipe().string() + " --set output.dir=taken"));
  EXPECT_EQ(taken.exit_code, 1) << taken.output;
  EXPECT_NE(taken.output.find("taken"), std::string::npos) << taken.output;
  EXPECT_EQ(taken.output.find("internal error"), std::string::npos) << taken.output;
}

}  // namespace
}  // namespace peftkit

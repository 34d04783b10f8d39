// Data-parallel training on c10d's Gloo backend on the CPU (on every machine), as users run it:
// `[run] devices = N`, `peftkit launch`, and processes started by hand with the launcher variables.
// Every run trains the tiny model on the CPU; the oracle is a one-process run of the same global
// batch.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "dist/group.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

namespace peftkit {
namespace {

using Clock = std::chrono::steady_clock;
using testing::peftkit_command;
using testing::run_command;

// A port of its own for every run, so that a run never meets a lingering one.
int next_port() {
  static std::atomic<int> port{29600 + static_cast<int>(::getpid() % 200) * 16};
  return port++;
}

// The largest difference between two saved adapters, relative to the largest weight.
double relative_difference(const TensorMap& a, const TensorMap& b) {
  EXPECT_EQ(a.size(), b.size());
  double difference = 0, scale = 0;
  for (const auto& [name, t] : a) {
    if (!b.count(name)) {
      ADD_FAILURE() << name << " missing";
      continue;
    }
    const at::Tensor x = t.to(at::kDouble), y = b.at(name).to(at::kDouble);
    difference = std::max(difference, (x - y).abs().max().item<double>());
    scale = std::max(scale, x.abs().max().item<double>());
  }
  return difference / std::max(scale, 1e-30);
}

// Starts `peftkit ARGS...` with `variables` added to the environment; output goes to `log`.
pid_t start(const std::vector<std::string>& args,
            const std::vector<std::pair<std::string, std::string>>& variables,
            const std::string& log) {
  std::vector<std::string> argv_text = {PEFTKIT_BINARY};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t child = ::fork();
  if (child == 0) {
    for (const auto& [name, value] : variables) ::setenv(name.c_str(), value.c_str(), 1);
    if (!std::freopen(log.c_str(), "w", stderr) || !std::freopen(log.c_str(), "a", stdout))
      ::_exit(126);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return child;
}

// Waits for `child` up to `limit`; its exit code (128 + N for signal N), or -1 on timeout.
int wait_for(pid_t child, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(child, &status, WNOHANG) == child)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  return -1;
}

class DataParallelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shared_ = new testing::TempDir();
    auto inputs = testing::write_tiny_training_inputs(PEFTKIT_PYTHON, shared_->path());
    ASSERT_EQ(inputs.exit_code, 0) << inputs.output;
  }
  static void TearDownTestSuite() { delete shared_; }

  // A full fine-tune at a constant learning rate (so that runs of different lengths share their
  // first steps), `micro` samples per micro-batch, into `out`.
  std::filesystem::path recipe(const std::string& out, int64_t epoch_steps = 3,
                               const std::string& extra = "") {
    return testing::write_file(
        dir_ / (out + ".toml"),
        "[model]\npath = \"" + (shared_->path() / "model.pth").string() +
            "\"\n[data]\nformat = \"numpy\"\npath = \"" +
            (shared_->path() / "tokens.npy").string() +
            "\"\n[train]\nctx_len = 32\nmicro_bsz = 2\nepoch_steps = " +
            std::to_string(epoch_steps) +
            "\nepoch_count = 1\nepoch_save = 1\nlr_init = 2e-3\nlr_final = 2e-3\n"
            "warmup_steps = 0\nprecision = \"fp32\"\nseed = 7\n[run]\ndevice = \"cpu\"\nthreads = "
            "1\n"
            "collective_timeout_s = 60\n[output]\ndir = \"" +
            (dir_ / out).string() + "\"\n" + extra);
  }
  // `peftkit train RECIPE ARGS` with its own MASTER_PORT.
  testing::CommandResult train(const std::filesystem::path& file, const std::string& args) {
    return run_command("MASTER_PORT=" + std::to_string(next_port()) + " " +
                       peftkit_command("train " + file.string() + " " + args));
  }
  TensorMap adapter(const std::string& out, int epoch) {
    return read_pth(dir_ / out / ("rwkv-" + std::to_string(epoch) + ".pth"));
  }

  static inline testing::TempDir* shared_ = nullptr;
  testing::TempDir dir_;
};

TEST_F(DataParallelTest, TwoRanksTrainLikeOneProcessWithTheSameGlobalBatch) {
  // One process accumulating 2 micro-batches of 2, and 2 processes taking one each.
  auto one = train(recipe("one"), "--set train.accumulate_grad_batches=2");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto two = train(recipe("two"), "--set train.accumulate_grad_batches=1 --set run.devices=2");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_LT(relative_difference(adapter("one", 0), adapter("two", 0)), 1e-5);
  const auto a = testing::read_metrics(dir_ / "one" / "metrics.jsonl"),
             b = testing::read_metrics(dir_ / "two" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);  // rank 0 alone writes
  for (size_t i = 0; i < a.size(); ++i) {
    const double loss = a[i]["loss"].get<double>();
    EXPECT_NEAR(b[i]["loss"].get<double>(), loss, 1e-5 * loss) << "step " << i + 1;
    EXPECT_EQ(b[i]["tokens"].get<int64_t>(), a[i]["tokens"].get<int64_t>()) << "step " << i + 1;
  }
  EXPECT_NE(two.output.find("joined the run as rank 0 of 2"), std::string::npos) << two.output;
}

TEST_F(DataParallelTest, ARunContinuesOnAnotherNumberOfProcesses) {
  // The oracle: 6 steps in one process. Then 3 steps in one process continued to 6 in two, and
  // 3 steps in two continued to 6 in one.
  auto whole =
      train(recipe("whole"), "--set train.accumulate_grad_batches=2 --set train.epoch_count=2");
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  struct Leg {
    std::string out;
    int first_devices, then_devices;
  };
  for (const Leg& leg : {Leg{"widened", 1, 2}, Leg{"narrowed", 2, 1}}) {
    const auto file = recipe(leg.out);
    const auto accumulate = [](int devices) {
      return " --set train.accumulate_grad_batches=" + std::to_string(2 / devices) +
             " --set run.devices=" + std::to_string(devices);
    };
    auto first = train(file, accumulate(leg.first_devices));
    ASSERT_EQ(first.exit_code, 0) << first.output;
    auto then = train(file, accumulate(leg.then_devices) + " --set train.epoch_count=2 --resume");
    ASSERT_EQ(then.exit_code, 0) << then.output;
    EXPECT_LT(relative_difference(adapter("whole", 1), adapter(leg.out, 1)), 1e-5) << leg.out;
    const auto metrics = testing::read_metrics(dir_ / leg.out / "metrics.jsonl");
    EXPECT_EQ(metrics.size(), 6u) << leg.out;
  }
}

TEST_F(DataParallelTest, AShardedOptimizerTrainsAlikeAndItsCheckpointResumesInOneProcess) {
  auto whole =
      train(recipe("whole"), "--set train.accumulate_grad_batches=2 --set train.epoch_count=2");
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  const auto file = recipe("sharded");
  auto sharded = train(file,
                       "--set train.accumulate_grad_batches=1 --set run.devices=2 "
                       "--set run.shard_optimizer=true");
  ASSERT_EQ(sharded.exit_code, 0) << sharded.output;
  EXPECT_NE(sharded.output.find("optimizer state sharded over 2 ranks"), std::string::npos)
      << sharded.output;
  EXPECT_LT(relative_difference(adapter("whole", 0), adapter("sharded", 0)), 1e-5);
  // The checkpoint holds every tensor's moments, gathered from both ranks.
  auto resumed =
      train(file, "--set train.accumulate_grad_batches=2 --set train.epoch_count=2 --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_LT(relative_difference(adapter("whole", 1), adapter("sharded", 1)), 1e-5);
}

TEST_F(DataParallelTest, AKilledRankStopsTheOtherNamingIt) {
  // Two processes started by hand, as torchrun or a SLURM script would; rank 1 is killed.
  const auto file = recipe("killed", 100000);
  const std::string port = std::to_string(next_port());
  std::vector<pid_t> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.push_back(start({"train", file.string()},
                          {{"RANK", std::to_string(rank)},
                           {"WORLD_SIZE", "2"},
                           {"MASTER_ADDR", "127.0.0.1"},
                           {"MASTER_PORT", port}},
                          (dir_ / ("rank" + std::to_string(rank) + ".log")).string()));
  for (int i = 0; i < 1200 && testing::read_metrics(dir_ / "killed" / "metrics.jsonl").size() < 2;
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GE(testing::read_metrics(dir_ / "killed" / "metrics.jsonl").size(), 2u);
  ::kill(ranks[1], SIGKILL);
  const auto killed_at = Clock::now();
  const int code = wait_for(ranks[0], std::chrono::seconds(60));  // the collective timeout
  const double seconds = std::chrono::duration<double>(Clock::now() - killed_at).count();
  wait_for(ranks[1], std::chrono::seconds(5));
  const std::string log = testing::read_file(dir_ / "rank0.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, -1) << "rank 0 still ran a minute after rank 1 was killed:\n" << log;
  EXPECT_LT(seconds, 30.0);
  // 128 + 13 here would be SIGPIPE: a write to the dead peer's socket ended rank 0 silently.
  EXPECT_NE(log.find("rank 1 has stopped"), std::string::npos) << "exit " << code << "\n" << log;
}

TEST_F(DataParallelTest, TheLauncherForwardsCtrlCAndTheRunResumes) {
  const auto file = recipe("interrupted", 400);
  const std::string port = std::to_string(next_port());
  const std::string log = (dir_ / "launch.log").string();
  const pid_t launcher = start(
      {"launch", "--nproc", "2", "--master-port", port, "--", "train", file.string()}, {}, log);
  for (int i = 0;
       i < 1200 && testing::read_metrics(dir_ / "interrupted" / "metrics.jsonl").size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(launcher, SIGINT);  // the launcher alone, as a shell's kill -INT would
  EXPECT_EQ(wait_for(launcher, std::chrono::seconds(60)), 130) << testing::read_file(log);
  const size_t done = testing::read_metrics(dir_ / "interrupted" / "metrics.jsonl").size();
  EXPECT_LT(done, 400u);
  EXPECT_NE(testing::read_file(log).find("interrupted by signal"), std::string::npos)
      << testing::read_file(log);
  auto resumed =
      run_command(peftkit_command("launch --nproc 2 --master-port " + std::to_string(next_port()) +
                                  " -- train " + file.string() + " --resume"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto metrics = testing::read_metrics(dir_ / "interrupted" / "metrics.jsonl");
  ASSERT_EQ(metrics.size(), 400u);
  for (size_t i = 0; i < metrics.size(); ++i)
    EXPECT_EQ(metrics[i]["step"].get<int>(), static_cast<int>(i) + 1);
}

TEST(DataParallelPlace, LauncherVariablesAreCheckedByName) {
  auto place_with = [](const std::vector<std::pair<const char*, const char*>>& variables) {
    for (const char* name :
         {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})
      ::unsetenv(name);
    for (const auto& [name, value] : variables) ::setenv(name, value, 1);
    return dist::place_from_environment();
  };
  EXPECT_FALSE(place_with({}).distributed());
  const dist::Place p = place_with({{"RANK", "3"},
                                    {"WORLD_SIZE", "4"},
                                    {"LOCAL_WORLD_SIZE", "2"},
                                    {"MASTER_ADDR", "node0"},
                                    {"MASTER_PORT", "1234"}});
  EXPECT_EQ(p.rank, 3);
  EXPECT_EQ(p.local_rank, 1);
  EXPECT_EQ(p.master_addr, "node0");
  EXPECT_EQ(p.master_port, 1234);
  auto message = [&](const std::vector<std::pair<const char*, const char*>>& variables) {
    try {
      place_with(variables);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"RANK", "4"}, {"WORLD_SIZE", "4"}})
                .find("RANK=\"4\": expected an integer from 0 to 3"),
            std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "two"}}).find("WORLD_SIZE=\"two\""), std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "2"}}).find("RANK is not"), std::string::npos);
  EXPECT_NE(message({{"RANK", "1"}}).find("WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=\"70000\""),
            std::string::npos);
  place_with({});
}

// In a process that has joined a (one-rank) group: whether writing to a socket whose other end is
// closed fails with EPIPE (exit 0) rather than ending the process.
[[noreturn]] void write_to_a_closed_socket_in_a_group() {
  dist::Place place;
  place.launched = true;
  place.master_port = next_port();
  const dist::Group group(place, dist::Backend::kGloo, std::chrono::seconds(30));
  int ends[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, ends) != 0) ::_exit(2);
  ::close(ends[1]);
  char byte = 0;
  iovec piece{&byte, 1};
  const bool refused = ::writev(ends[0], &piece, 1) < 0 && errno == EPIPE;
  ::_exit(refused ? 0 : 3);
}

TEST(DataParallelGroup, AWriteToAPeerThatHasGoneIsAnErrorNotASilentDeath) {
  // Gloo sends with writev; by default a write to a socket whose peer died raises SIGPIPE, which
  // ended rank 0 without a word when rank 1 was killed mid-exchange.
  EXPECT_EXIT(write_to_a_closed_socket_in_a_group(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace peftkit

#include "dist/launcher.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "host/stop_signals.hpp"
#include "peftkit/error.hpp"

extern char** environ;

namespace peftkit::dist {
namespace {

using Clock = std::chrono::steady_clock;

// The children, for the signal handler (which may only read plain memory and call kill).
constexpr int kMaxProcesses = 1024;
pid_t g_children[kMaxProcesses];
volatile std::sig_atomic_t g_child_count = 0;
volatile std::sig_atomic_t g_forwarded_signal = 0;

// (Internal linkage: `compare` once had a C-linkage namesake that took this one's place.)
void forward_signal(int signal) {
  g_forwarded_signal = signal;
  for (int i = 0; i < g_child_count; ++i)
    if (g_children[i] > 0) ::kill(g_children[i], signal);
}

// This process's environment with `variables` in place of any inherited.
std::vector<std::string> environment_with(
    const std::vector<std::pair<std::string, std::string>>& variables) {
  std::set<std::string> replaced;
  for (const auto& [name, value] : variables) replaced.insert(name);
  std::vector<std::string> out;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    if (!replaced.count(text.substr(0, text.find('=')))) out.push_back(text);
  }
  for (const auto& [name, value] : variables) out.push_back(name + "=" + value);
  return out;
}

std::vector<char*> pointers(std::vector<std::string>& texts) {
  std::vector<char*> out;
  for (auto& text : texts) out.push_back(text.data());
  out.push_back(nullptr);
  return out;
}

int exit_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status))
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           ::strsignal(WTERMSIG(status)) + ")";
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

void check_plan(const LaunchPlan& plan) {
  if (plan.nproc < 1 || plan.nproc > kMaxProcesses)
    throw Error("--nproc " + std::to_string(plan.nproc) + ": expected 1 to " +
                std::to_string(kMaxProcesses) + " processes");
  if (plan.nnodes < 1) throw Error("--nnodes " + std::to_string(plan.nnodes) + ": expected >= 1");
  if (plan.node_rank < 0 || plan.node_rank >= plan.nnodes)
    throw Error("--node-rank " + std::to_string(plan.node_rank) + ": expected 0 to " +
                std::to_string(plan.nnodes - 1) +
                " (one per host, 0 on the host of --master-addr)");
  if (plan.master_port < 1 || plan.master_port > 65535)
    throw Error("--master-port " + std::to_string(plan.master_port) + ": expected 1 to 65535");
  if (plan.master_addr.empty()) throw Error("--master-addr: expected rank 0's host");
}

int launch(const LaunchPlan& plan, const std::filesystem::path& program,
           const std::vector<std::string>& arguments) {
  check_plan(plan);
  std::vector<std::vector<std::pair<std::string, std::string>>> environments;
  for (int i = 0; i < plan.nproc; ++i)
    environments.push_back({{"RANK", std::to_string(plan.node_rank * plan.nproc + i)},
                            {"WORLD_SIZE", std::to_string(plan.nnodes * plan.nproc)},
                            {"LOCAL_RANK", std::to_string(i)},
                            {"LOCAL_WORLD_SIZE", std::to_string(plan.nproc)},
                            {"MASTER_ADDR", plan.master_addr},
                            {"MASTER_PORT", std::to_string(plan.master_port)}});
  return run_processes(program, arguments, environments, plan.grace, [&](int i) {
    return "rank " + std::to_string(plan.node_rank * plan.nproc + i);
  });
}

int run_processes(const std::filesystem::path& program, const std::vector<std::string>& arguments,
                  const std::vector<std::vector<std::pair<std::string, std::string>>>& environments,
                  std::chrono::seconds grace, const std::function<std::string(int)>& name) {
  const int count = static_cast<int>(environments.size());
  if (count > kMaxProcesses)
    throw Error(std::to_string(count) + " processes: at most " + std::to_string(kMaxProcesses));
  const host::StopSignalHandler forwarding(forward_signal);
  g_forwarded_signal = 0;
  g_child_count = 0;
  std::cout.flush();
  std::cerr.flush();
  for (int i = 0; i < count; ++i) {
    std::vector<std::string> argv_texts = {program.string()};
    argv_texts.insert(argv_texts.end(), arguments.begin(), arguments.end());
    std::vector<std::string> env_texts = environment_with(environments[i]);
    std::vector<char*> argv = pointers(argv_texts), envp = pointers(env_texts);
    const pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGTERM);
      throw Error("could not start process " + std::to_string(i) + ": " + std::strerror(errno));
    }
    if (pid == 0) {
      ::execve(argv[0], argv.data(), envp.data());
      std::cerr << "peftkit: could not run " << argv[0] << ": " << std::strerror(errno) << "\n";
      ::_exit(127);
    }
    g_children[i] = pid;
    g_child_count = i + 1;
    if (g_forwarded_signal) ::kill(pid, g_forwarded_signal);  // came before its pid was known
  }

  int running = count, worst = 0;
  // Once one has failed while others still run: when the others are killed.
  bool failed = false, killed = false;
  Clock::time_point deadline{};
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, failed ? WNOHANG : 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {  // the others still run after a failure
      if (Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      for (int i = 0; i < count; ++i)
        if (g_children[i] > 0) {
          std::cerr << "peftkit: " << name(i) << " did not stop within " << grace.count()
                    << " s; killing it\n";
          ::kill(g_children[i], SIGKILL);
        }
      failed = false;  // now wait for them without a deadline
      killed = true;
      continue;
    }
    int index = 0;
    while (index < count && g_children[index] != pid) ++index;
    if (index == count) continue;  // not ours
    g_children[index] = -pid;      // a finished pid may be reused: never signal it again
    --running;
    const int code = exit_code(status);
    worst = std::max(worst, code);
    if (code != 0 && count > 1 && !g_forwarded_signal) {
      std::cerr << "peftkit: " << name(index) << " (pid " << pid << ") " << describe_status(status)
                << "\n";
      if (running > 0 && !failed && !killed) {
        failed = true;
        deadline = Clock::now() + grace;
      }
    }
  }
  return worst;
}

std::filesystem::path own_program() { return std::filesystem::read_symlink("/proc/self/exe"); }

std::vector<std::string> own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> out;
  for (std::string argument; std::getline(in, argument, '\0');) out.push_back(argument);
  if (out.empty()) throw Error("could not read this process's arguments from /proc/self/cmdline");
  out.erase(out.begin());
  return out;
}

}  // namespace peftkit::dist

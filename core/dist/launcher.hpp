// launcher.hpp: `peftkit launch` (and `[run] devices = N`): starts this host's processes of a
// data-parallel run with the variables every rank reads (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), forwards SIGINT and SIGTERM to them, and returns
// the worst status among them. When one process fails, the others get `grace` to notice (their
// exchanges fail and name it) and are killed after.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace peftkit::dist {

struct LaunchPlan {
  int nproc = 1;                          // processes on this host
  int nnodes = 1, node_rank = 0;          // hosts, and this one's index
  std::string master_addr = "127.0.0.1";  // node 0's host
  int master_port = 29500;
  std::chrono::seconds grace{60};
};

// Checks the plan; throws naming the option that is out of range.
void check_plan(const LaunchPlan& plan);

// Runs `program` with `arguments` (argv[1..]) plan.nproc times and waits for all of them. Returns
// 0 when all succeed, else the largest exit status (128 + N for a process ended by signal N).
int launch(const LaunchPlan& plan, const std::filesystem::path& program,
           const std::vector<std::string>& arguments);

// What launch (and `compare`, for each training run) builds on: runs `program arguments` once per
// entry of `environments` (variables added to this process's own), forwards SIGINT and SIGTERM to
// them, and returns the worst status. When one of several fails, the others get `grace` and are
// then killed; `name(i)` names process i in the messages.
int run_processes(const std::filesystem::path& program, const std::vector<std::string>& arguments,
                  const std::vector<std::vector<std::pair<std::string, std::string>>>& environments,
                  std::chrono::seconds grace, const std::function<std::string(int)>& name);

// This process's program and its arguments (argv[1..]), as the kernel recorded them: what
// `[run] devices = N` starts N times.
std::filesystem::path own_program();
std::vector<std::string> own_arguments();

}  // namespace peftkit::dist

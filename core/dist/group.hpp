// group.hpp: the processes of a data-parallel run. Each process learns its place from the
// launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT:
// torchrun, SLURM scripts and `peftkit launch` all set them), meets the others through c10d's
// TCPStore on rank 0's host, and exchanges tensors through a c10d process group: NCCL between
// GPUs, Gloo on the CPU (and on CUDA tensors when asked).
//
//   const dist::Place place = dist::place_from_environment();
//   if (place.distributed()) group = std::make_unique<dist::Group>(place, Backend::kGloo, timeout);
//   group->sum(gradients, "gradients");   // in place, on every rank
//
// A collective that fails (a peer killed, crashed or past the timeout) throws a peftkit::Error that
// names the rank(s) that stopped, found from heartbeats kept in the store; one that hangs on a
// stopped peer (NCCL waits rather than fails) ends this process with a message naming the peer.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace peftkit::dist {

// Where this process stands in its run.
struct Place {
  int rank = 0, world_size = 1;              // among all processes
  int local_rank = 0, local_world_size = 1;  // among this host's processes
  std::string master_addr = "127.0.0.1";     // rank 0's host, which holds the store
  int master_port = 29500;
  bool launched = false;  // WORLD_SIZE was set (even to 1): join a group
  bool distributed() const { return launched; }
  bool main() const { return rank == 0; }
  std::string describe() const;  // "rank 1 of 2 (local 1 of 2) via 127.0.0.1:29500"
};

// The launcher's variables; a lone process when WORLD_SIZE is unset. Throws naming the variable
// when one is malformed, out of range or missing beside the others.
Place place_from_environment();

enum class Backend { kGloo, kNccl };

// "gloo" or "nccl"; `nccl_built` says whether this build has NCCL (c10d's ProcessGroupNCCL).
bool nccl_built();
const char* backend_name(Backend backend);

class Group {
 public:
  // Meets the other processes (waiting up to `timeout` for them); collectives fail after
  // `timeout` too. NCCL exchanges CUDA tensors only.
  Group(const Place& place, Backend backend, std::chrono::seconds timeout);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  const Place& place() const;
  // Replaces each tensor with its sum over the ranks (one flat exchange per dtype and device).
  // `what` names the exchange in errors.
  void sum(const std::vector<at::Tensor>& tensors, const std::string& what);
  // Replaces each tensor with rank `root`'s.
  void broadcast(const std::vector<at::Tensor>& tensors, int root, const std::string& what);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peftkit::dist

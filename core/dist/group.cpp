// group.cpp: the only translation unit that sees c10d's process-group headers. The Gloo backend
// itself is the one compiled into libtorch_cpu; the gloo headers (Debian's libgloo-dev) are only
// read to declare it, and no gloo type is instantiated here. NCCL's is in libtorch_cuda, declared
// with the nccl.h of the wheel's own NCCL package.
#include "dist/group.hpp"

#include <ATen/ATen.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef PEFTKIT_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "peftkit/error.hpp"

namespace peftkit::dist {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kBeatInterval = std::chrono::milliseconds(500);
// Long enough for several heartbeats of a live rank.
constexpr auto kSilenceToJudge = std::chrono::milliseconds(2500);
// An exchange waiting this long starts watching the peers' heartbeats; a peer silent this long
// has stopped.
constexpr auto kStuckAfter = std::chrono::seconds(5);
constexpr auto kSilentFor = std::chrono::seconds(10);

// A launcher variable as an integer in [low, high]; `fallback` when unset.
int variable(const char* name, int fallback, int low, int high) {
  const char* text = std::getenv(name);
  if (text == nullptr) return fallback;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || value < low || value > high)
    throw Error(std::string("environment variable ") + name + "=\"" + text +
                "\": expected an integer from " + std::to_string(low) + " to " +
                std::to_string(high));
  return static_cast<int>(value);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string beat_key(int rank) { return "peftkit/heartbeat/" + std::to_string(rank); }

std::string rank_list(const std::vector<int>& ranks) {
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i)
    out += (i == 0 ? "" : i + 1 == ranks.size() ? " and " : ", ") + std::to_string(ranks[i]);
  return out;
}

}  // namespace

std::string Place::describe() const {
  return "rank " + std::to_string(rank) + " of " + std::to_string(world_size) + " (local " +
         std::to_string(local_rank) + " of " + std::to_string(local_world_size) + ") via " +
         master_addr + ":" + std::to_string(master_port);
}

bool nccl_built() {
#ifdef PEFTKIT_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

const char* backend_name(Backend backend) { return backend == Backend::kNccl ? "nccl" : "gloo"; }

Place place_from_environment() {
  Place place;
  if (std::getenv("WORLD_SIZE") == nullptr) {
    for (const char* name : {"RANK", "LOCAL_RANK"})
      if (const char* value = std::getenv(name); value != nullptr && std::string(value) != "0")
        throw Error(std::string("environment variable ") + name +
                    " is set but WORLD_SIZE is not: " +
                    "a launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT together");
    return place;
  }
  place.world_size = variable("WORLD_SIZE", 1, 1, 1 << 20);
  place.launched = true;
  if (std::getenv("RANK") == nullptr)
    throw Error("environment variable WORLD_SIZE=" + std::to_string(place.world_size) +
                " is set but RANK is not: every process of a run needs its RANK");
  place.rank = variable("RANK", 0, 0, place.world_size - 1);
  place.local_world_size = variable("LOCAL_WORLD_SIZE", place.world_size, 1, place.world_size);
  place.local_rank =
      variable("LOCAL_RANK", place.rank % place.local_world_size, 0, place.local_world_size - 1);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr != nullptr) {
    if (*addr == '\0')
      throw Error("environment variable MASTER_ADDR is empty: expected rank 0's host");
    place.master_addr = addr;
  }
  place.master_port = variable("MASTER_PORT", place.master_port, 1, 65535);
  return place;
}

struct Group::Impl {
  Place place;
  std::chrono::seconds timeout;
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Backend> backend;

  // Every rank adds to its counter in the store while it lives; when an exchange fails, the
  // counters that stood still name the ranks that stopped. The thread has its own connection.
  c10::intrusive_ptr<c10d::TCPStore> beat_store;
  std::thread beat_thread;
  std::mutex beat_mutex;
  std::condition_variable beat_wake;
  bool stopping = false;

  // The rendezvous connection of each rank counts towards the world size (the store's ctor waits
  // for all of them); the heartbeat connection does not.
  c10d::TCPStoreOptions store_options(bool rendezvous) const {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(place.master_port);
    options.isServer = rendezvous && place.main();
    options.numWorkers = rendezvous ? std::optional<size_t>(place.world_size) : std::nullopt;
    options.waitWorkers = rendezvous;
    options.timeout = timeout;
    return options;
  }

  // When the current exchange began (0: none), and its name; for the watch in beat().
  std::atomic<int64_t> exchange_since{0};
  std::string exchange_what;  // guarded by beat_mutex

  void beat() {
    std::unique_lock<std::mutex> lock(beat_mutex);
    std::vector<int64_t> last_count;
    std::vector<Clock::time_point> last_change;
    while (!stopping) {
      try {
        beat_store->add(beat_key(place.rank), 1);
      } catch (const std::exception&) {
        // The store is gone (rank 0 stopped): the exchange fails or the watch below says so.
      }
      const int64_t since = exchange_since.load();
      const auto now = Clock::now();
      if (since != 0 && now - Clock::time_point(Clock::duration(since)) > kStuckAfter)
        watch_peers(last_count, last_change, now);
      else
        last_count.clear();
      beat_wake.wait_for(lock, kBeatInterval);
    }
  }

  // An exchange is waiting long: ends this process when a peer's heartbeat has stopped (an NCCL
  // exchange would wait for it until the timeout).
  void watch_peers(std::vector<int64_t>& last_count, std::vector<Clock::time_point>& last_change,
                   Clock::time_point now) {
    std::vector<int64_t> count(place.world_size);
    try {
      for (int r = 0; r < place.world_size; ++r) count[r] = beat_store->add(beat_key(r), 0);
    } catch (const std::exception&) {
      stop_now(
          "rank 0, which holds the rendezvous store, stopped (killed, crashed or unreachable)");
    }
    if (last_count.empty()) {
      last_count = count;
      last_change.assign(place.world_size, now);
      return;
    }
    std::vector<int> silent;
    for (int r = 0; r < place.world_size; ++r) {
      if (count[r] != last_count[r]) last_change[r] = now;
      last_count[r] = count[r];
      if (r != place.rank && now - last_change[r] > kSilentFor) silent.push_back(r);
    }
    if (!silent.empty())
      stop_now(rank_list(silent) + (silent.size() == 1 ? " has" : " have") +
               " stopped (no heartbeat for " + std::to_string(kSilentFor.count()) + " s)");
  }

  [[noreturn]] void stop_now(const std::string& why) {
    std::cerr << "error: " << place.describe() << ": exchanging " << exchange_what
              << " cannot finish: " << why << "; stopping this rank\n";
    std::cerr.flush();
    std::_Exit(1);
  }

  // Why an exchange failed, as far as the heartbeats tell.
  std::string who_stopped() {
    std::vector<int64_t> before(place.world_size), after(place.world_size);
    try {
      store->setTimeout(std::chrono::seconds(10));
      for (int r = 0; r < place.world_size; ++r) before[r] = store->add(beat_key(r), 0);
      std::this_thread::sleep_for(kSilenceToJudge);
      for (int r = 0; r < place.world_size; ++r) after[r] = store->add(beat_key(r), 0);
    } catch (const std::exception&) {
      return "rank 0, which holds the rendezvous store at " + place.master_addr + ":" +
             std::to_string(place.master_port) + ", stopped (killed, crashed or unreachable)";
    }
    std::vector<int> silent;
    for (int r = 0; r < place.world_size; ++r)
      if (r != place.rank && after[r] == before[r]) silent.push_back(r);
    if (silent.empty())
      return "every rank is still alive, so the exchange itself failed (the reason follows) or "
             "took longer than [run] collective_timeout_s (" +
             std::to_string(timeout.count()) + " s)";
    return rank_list(silent) + (silent.size() == 1 ? " has" : " have") +
           " stopped (killed, crashed or exited on an error of its own)";
  }

  [[noreturn]] void fail(const std::string& what, const std::string& reason) {
    throw Error(place.describe() + ": exchanging " + what + " failed: " + who_stopped() + " [" +
                first_line(reason) + "]");
  }

  template <typename Start>
  void run(const std::string& what, Start start) {
    {
      std::lock_guard<std::mutex> lock(beat_mutex);
      exchange_what = what;
    }
    exchange_since = Clock::now().time_since_epoch().count();
    try {
      c10::intrusive_ptr<c10d::Work> work = start();
      work->wait(timeout);
    } catch (const std::exception& e) {
      exchange_since = 0;
      fail(what, e.what());
    }
    exchange_since = 0;
  }
};

Group::Group(const Place& place, Backend backend, std::chrono::seconds timeout)
    : impl_(std::make_unique<Impl>()) {
  // Gloo's TCP transport sends with writev, which raises SIGPIPE when a peer has died; the
  // default action would end this rank silently instead of with an error naming that peer.
  std::signal(SIGPIPE, SIG_IGN);
  Impl& g = *impl_;
  g.place = place;
  g.timeout = timeout;
  const std::string where = place.master_addr + ":" + std::to_string(place.master_port);
  try {
    g.store = c10::make_intrusive<c10d::TCPStore>(place.master_addr, g.store_options(true));
  } catch (const std::exception& e) {
    throw Error(place.describe() + ": " +
                (place.main()
                     ? "could not open the rendezvous store on port " +
                           std::to_string(place.master_port) +
                           " or the others did not join within " + std::to_string(timeout.count()) +
                           " s (another run on this port? set MASTER_PORT)"
                     : "could not reach rank 0's rendezvous store at " + where + " within " +
                           std::to_string(timeout.count()) + " s") +
                " [" + first_line(e.what()) + "]");
  }
  if (backend == Backend::kNccl) {
#ifdef PEFTKIT_HAVE_NCCL
    try {
      g.beat_store = c10::make_intrusive<c10d::TCPStore>(place.master_addr, g.store_options(false));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      g.backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(g.store, place.rank, place.world_size,
                                                              options);
    } catch (const std::exception& e) {
      throw Error(place.describe() + ": could not set up NCCL [" + first_line(e.what()) + "]");
    }
    g.beat_thread = std::thread([&g] { g.beat(); });
    return;
#else
    throw Error(
        "this peftkit was built without NCCL (nccl.h was not found): use [run] backend = "
        "\"gloo\"");
#endif
  }
  try {
    g.beat_store = c10::make_intrusive<c10d::TCPStore>(place.master_addr, g.store_options(false));
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"); interface && *interface)
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    else if (is_loopback(place.master_addr))
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    g.backend =
        c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, place.rank, place.world_size, options);
  } catch (const std::exception& e) {
    throw Error(place.describe() + ": could not connect to the other ranks [" +
                first_line(e.what()) +
                "] (on several hosts, set GLOO_SOCKET_IFNAME to the network interface to use)");
  }
  g.beat_thread = std::thread([&g] { g.beat(); });
}

Group::~Group() {
  {
    std::lock_guard<std::mutex> lock(impl_->beat_mutex);
    impl_->stopping = true;
  }
  impl_->beat_wake.notify_all();
  if (impl_->beat_thread.joinable()) impl_->beat_thread.join();
}

const Place& Group::place() const { return impl_->place; }

namespace {

// The tensors grouped by dtype and device, each group flattened into one contiguous buffer.
struct Flattened {
  std::vector<std::vector<size_t>> members;
  std::vector<at::Tensor> buffers;
};

Flattened flatten(const std::vector<at::Tensor>& tensors) {
  Flattened out;
  std::map<std::pair<int, std::string>, size_t> group_of;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto key =
        std::make_pair(static_cast<int>(tensors[i].scalar_type()), tensors[i].device().str());
    auto [it, added] = group_of.emplace(key, out.members.size());
    if (added) out.members.emplace_back();
    out.members[it->second].push_back(i);
  }
  for (const auto& members : out.members) {
    std::vector<at::Tensor> pieces;
    for (size_t i : members) pieces.push_back(tensors[i].reshape({-1}));
    out.buffers.push_back(at::cat(pieces));
  }
  return out;
}

void unflatten(const Flattened& flat, const std::vector<at::Tensor>& tensors) {
  for (size_t g = 0; g < flat.members.size(); ++g) {
    int64_t offset = 0;
    for (size_t i : flat.members[g]) {
      const int64_t n = tensors[i].numel();
      tensors[i].copy_(flat.buffers[g].slice(0, offset, offset + n).view(tensors[i].sizes()));
      offset += n;
    }
  }
}

}  // namespace

void Group::sum(const std::vector<at::Tensor>& tensors, const std::string& what) {
  if (tensors.empty()) return;
  Flattened flat = flatten(tensors);
  for (auto& buffer : flat.buffers) {
    std::vector<at::Tensor> one{buffer};  // c10d reads a list as one tensor per local device
    impl_->run(what, [&] { return impl_->backend->allreduce(one); });
  }
  unflatten(flat, tensors);
}

void Group::broadcast(const std::vector<at::Tensor>& tensors, int root, const std::string& what) {
  if (tensors.empty()) return;
  Flattened flat = flatten(tensors);
  for (auto& buffer : flat.buffers) {
    std::vector<at::Tensor> one{buffer};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->run(what, [&] { return impl_->backend->broadcast(one, options); });
  }
  unflatten(flat, tensors);
}

}  // namespace peftkit::dist

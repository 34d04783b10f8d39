// stop_signals.hpp (host-internal): SIGINT and SIGTERM go to `handler` while an object lives, and
// to their previous handlers after: the trainer's finish-the-step-and-checkpoint, the launcher's
// forwarding to its processes.
#pragma once

#include <signal.h>

namespace peftkit::host {

class StopSignalHandler {
 public:
  explicit StopSignalHandler(void (*handler)(int)) {
    struct sigaction action {};
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~StopSignalHandler() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignalHandler(const StopSignalHandler&) = delete;
  StopSignalHandler& operator=(const StopSignalHandler&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{};
};

}  // namespace peftkit::host

#include "train/signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include "core/error.h"

namespace primus::train {

namespace {

// The only state a signal handler can reach. Lock-free so the handler stays
// async-signal-safe; the static_asserts document the requirement.
std::atomic<int> g_stop_signal{0};
std::atomic<bool> g_installed{false};
static_assert(std::atomic<int>::is_always_lock_free);
static_assert(std::atomic<bool>::is_always_lock_free);

constexpr int kStopSignals[] = {SIGTERM, SIGUSR1, SIGINT};
struct sigaction g_previous[3];

void write_stderr(const char* s) {
  // write(2) is async-signal-safe; a short write of a diagnostic line is acceptable.
  ssize_t rc = ::write(STDERR_FILENO, s, std::strlen(s));
  (void)rc;
}

extern "C" void on_stop_signal(int sig) {
  int expected = 0;
  if (g_stop_signal.compare_exchange_strong(expected, sig)) {
    switch (sig) {
      case SIGTERM: write_stderr("\nprimus: SIGTERM received: saving a checkpoint and exiting after this iteration\n"); break;
      case SIGUSR1: write_stderr("\nprimus: SIGUSR1 received: saving a checkpoint and exiting after this iteration\n"); break;
      default: write_stderr("\nprimus: SIGINT received: saving a checkpoint and exiting after this iteration "
                            "(Ctrl-C again to exit now without saving)\n"); break;
    }
    return;
  }
  if (sig == SIGINT) {
    write_stderr("\nprimus: second SIGINT: exiting now without saving\n");
    ::_exit(130);
  }
}

}  // namespace

StopSignals::StopSignals() {
  bool expected = false;
  PRIMUS_CHECK(g_installed.compare_exchange_strong(expected, true),
               "a StopSignals object is already alive; create one per process (the training loop owns it)");
  g_stop_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // let interrupted reads/writes (checkpoint I/O) carry on
  for (int i = 0; i < 3; ++i) {
    PRIMUS_CHECK(sigaction(kStopSignals[i], &sa, &g_previous[i]) == 0, "sigaction({}) failed: {}",
                 signal_name(kStopSignals[i]), std::strerror(errno));
  }
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &g_previous[i], nullptr);
  g_stop_signal.store(0);
  g_installed.store(false);
}

int StopSignals::signal_number() const { return g_stop_signal.load(std::memory_order_relaxed); }

std::string_view StopSignals::signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    case SIGKILL: return "SIGKILL";
    default: return "signal";
  }
}

}  // namespace primus::train

// Stop requests from the outside world: SIGTERM (Slurm/Kubernetes preemption), SIGUSR1
// (Slurm's --signal=USR1@<secs> warning before the time limit) and SIGINT (Ctrl-C).
//
// The handler only stores the signal number in a lock-free atomic (async-signal-safe) and
// writes one line to stderr with write(2). The training loop polls stop_requested() once
// per iteration, saves a checkpoint and returns normally. A second SIGINT while a stop is
// pending exits at once with status 130 (the user insists). In a multi-rank run every rank
// must agree before acting: all-reduce the flag (max) once per iteration, so all ranks
// save the same iteration together.
//
// The flag is process-wide by nature (a signal handler can reach nothing else), so only
// one StopSignals may be alive at a time; it restores the previous handlers on destruction.
#pragma once

#include <string_view>

namespace primus::train {

class StopSignals {
 public:
  StopSignals();   // installs the handlers; throws if another StopSignals is alive
  ~StopSignals();  // restores the handlers that were there before
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  bool stop_requested() const { return signal_number() != 0; }
  int signal_number() const;  // the first stop signal received, 0 if none
  // "SIGTERM", "SIGUSR1", "SIGINT", "SIGKILL", or "signal" for any other.
  static std::string_view signal_name(int signal_number);
};

}  // namespace primus::train

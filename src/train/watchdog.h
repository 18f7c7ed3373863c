// A watchdog that stops a run which makes no progress (a hung collective, a dead data
// loader, a deadlock) instead of letting it burn GPU hours.
//
// The loop calls heartbeat(iteration) after each iteration (and inside long phases such as
// evaluation or loading). Threads label what they are doing with Watchdog::Phase scopes
// ("train_step" > "forward" > "all-reduce grads"). If no heartbeat arrives for `timeout`,
// the watchdog thread writes a report (last iteration, seconds since the last heartbeat,
// every thread's phase stack and how long it has been in it) to the sink, then, with
// dump_native_stacks, asks each thread that recorded phases to write its own native
// backtrace to stderr (a real-time signal whose handler calls backtrace_symbols_fd; the
// watchdog's own stack would say nothing), and finally exits the process with exit_code
// (the launcher then stops the other ranks).
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace primus::train {

struct WatchdogOptions {
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
  // Where the report goes (default: stderr). The trainer passes its Logger so the report
  // also lands in rank_N.log.
  std::function<void(const std::string& report)> sink;
  bool dump_native_stacks = true;
  bool exit_process = true;  // false: only report (tests; fired() turns true)
  int exit_code = 124;       // what `timeout(1)` returns for the same situation
};

class Watchdog {
 public:
  explicit Watchdog(WatchdogOptions options);
  ~Watchdog();  // stops the watchdog thread
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void heartbeat(int64_t iteration);  // progress: the iteration just completed
  void heartbeat();                   // progress within a long phase (same iteration)

  // Names the calling thread in reports ("main", "checkpoint-writer", ...).
  void name_thread(std::string_view name);

  // RAII: pushes a label onto the calling thread's phase stack.
  class Phase {
   public:
    Phase(Watchdog& dog, std::string_view label) : dog_(dog) { dog_.enter(label); }
    ~Phase() { dog_.leave(); }
    Phase(const Phase&) = delete;
    Phase& operator=(const Phase&) = delete;

   private:
    Watchdog& dog_;
  };
  void enter(std::string_view label);
  void leave();

  // The report that a timeout would print, now.
  std::string describe() const;
  bool fired() const { return fired_.load(); }

 private:
  struct ThreadState {
    std::string name;
    pthread_t handle{};
    struct Frame {
      std::string label;
      std::chrono::steady_clock::time_point since;
    };
    std::vector<Frame> stack;
  };
  void run();
  void fire();
  ThreadState& self_locked();  // requires mutex_

  WatchdogOptions options_;
  std::chrono::steady_clock::time_point started_;
  std::atomic<int64_t> last_beat_ns_{0};  // steady_clock, ns since epoch of the clock
  std::atomic<int64_t> last_iteration_{-1};
  std::atomic<bool> fired_{false};

  mutable std::mutex mutex_;
  std::map<std::thread::id, ThreadState> threads_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace primus::train

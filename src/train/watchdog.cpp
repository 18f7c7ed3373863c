#include "train/watchdog.h"

#include <execinfo.h>
#include <algorithm>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace primus::train {

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Native stack dumps: the handler runs on the thread being asked and writes its own stack.
// backtrace() is not formally async-signal-safe, but once libgcc's unwinder is loaded (we
// call it once up front) it does not allocate; this runs only when the process is about
// to exit anyway.
std::atomic<int> g_stacks_dumped{0};
int stack_signal() { return SIGRTMIN + 5; }

extern "C" void dump_own_stack(int) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  g_stacks_dumped.fetch_add(1);
}

std::string seconds_str(Clock::duration d) {
  return fmt::format("{:.1f}s", std::chrono::duration<double>(d).count());
}

}  // namespace

Watchdog::Watchdog(WatchdogOptions options) : options_(std::move(options)), started_(Clock::now()) {
  if (!options_.sink) options_.sink = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  if (options_.dump_native_stacks) {
    void* warm[4];
    (void)backtrace(warm, 4);  // loads the unwinder now, not inside a signal handler
  }
  last_beat_ns_.store(now_ns());
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::heartbeat(int64_t iteration) {
  last_iteration_.store(iteration);
  last_beat_ns_.store(now_ns());
}

void Watchdog::heartbeat() { last_beat_ns_.store(now_ns()); }

Watchdog::ThreadState& Watchdog::self_locked() {
  auto [it, inserted] = threads_.try_emplace(std::this_thread::get_id());
  if (inserted) {
    it->second.handle = pthread_self();
    it->second.name = fmt::format("thread {}", static_cast<long>(::syscall(SYS_gettid)));
  }
  return it->second;
}

void Watchdog::name_thread(std::string_view name) {
  std::lock_guard<std::mutex> lock(mutex_);
  self_locked().name = fmt::format("{} (tid {})", name, static_cast<long>(::syscall(SYS_gettid)));
}

void Watchdog::enter(std::string_view label) {
  std::lock_guard<std::mutex> lock(mutex_);
  self_locked().stack.push_back({std::string(label), Clock::now()});
}

void Watchdog::leave() {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& stack = self_locked().stack;
  if (!stack.empty()) stack.pop_back();
}

std::string Watchdog::describe() const {
  const auto now = Clock::now();
  const auto since_beat = std::chrono::nanoseconds(now_ns() - last_beat_ns_.load());
  const int64_t iteration = last_iteration_.load();
  std::string s = fmt::format("watchdog: no progress for {} (timeout {}); last completed iteration: {}\n",
                              seconds_str(since_beat), seconds_str(options_.timeout),
                              iteration < 0 ? std::string("none yet") : std::to_string(iteration));
  std::lock_guard<std::mutex> lock(mutex_);
  if (threads_.empty()) s += "  (no thread recorded a phase)\n";
  for (const auto& [id, t] : threads_) {
    if (t.stack.empty()) {
      s += fmt::format("  {}: idle (outside any phase)\n", t.name);
      continue;
    }
    std::string path;
    for (const auto& f : t.stack) path += (path.empty() ? "" : " > ") + f.label;
    s += fmt::format("  {}: {} (in '{}' for {})\n", t.name, path, t.stack.back().label,
                     seconds_str(now - t.stack.back().since));
  }
  return s;
}

void Watchdog::run() {
  // Check often enough that a timeout fires within ~10% of its value (at least every 5 s).
  const auto period = std::clamp<std::chrono::milliseconds>(options_.timeout / 10, std::chrono::milliseconds(1),
                                                            std::chrono::milliseconds(5000));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    cv_.wait_for(lock, period, [this] { return stop_; });
    if (stop_) break;
    const auto idle = std::chrono::nanoseconds(now_ns() - last_beat_ns_.load());
    if (idle >= options_.timeout && !fired_.load()) {
      lock.unlock();
      fire();
      lock.lock();
    }
  }
}

void Watchdog::fire() {
  fired_.store(true);
  options_.sink(describe() + (options_.exit_process
                                  ? fmt::format("watchdog: stopping the run (exit code {}); raise the timeout if "
                                                "this phase is legitimately slow", options_.exit_code)
                                  : std::string("watchdog: timeout reported (exit disabled)")));
  if (options_.dump_native_stacks) {
    struct sigaction sa {};
    sa.sa_handler = dump_own_stack;
    sigemptyset(&sa.sa_mask);
    sigaction(stack_signal(), &sa, nullptr);
    std::vector<std::pair<std::string, pthread_t>> targets;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& [id, t] : threads_)
        if (!t.stack.empty()) targets.emplace_back(t.name, t.handle);
    }
    for (const auto& [name, handle] : targets) {
      std::fprintf(stderr, "--- native stack of %s ---\n", name.c_str());
      std::fflush(stderr);
      const int before = g_stacks_dumped.load();
      if (pthread_kill(handle, stack_signal()) != 0) continue;
      for (int i = 0; i < 200 && g_stacks_dumped.load() == before; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!targets.empty())
      std::fprintf(stderr, "(frames as <binary>(+offset): resolve with addr2line -f -C -e <binary> <offset>)\n");
  }
  if (options_.exit_process) {
    std::fflush(stderr);
    std::_Exit(options_.exit_code);
  }
}

}  // namespace primus::train

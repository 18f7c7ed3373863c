// ThreadPool: a fixed set of worker threads for the CPU backend's row-parallel loops.
//
// parallel_for(n, fn) splits [0, n) into one contiguous range per thread and runs
// fn(begin, end) on each, the caller taking the first range; it returns when all are
// done and rethrows the first exception. Ranges are a pure function of (n, size()), so
// results never depend on scheduling. A parallel_for issued while the pool is already
// running one (from inside a task, or from another thread) runs inline on the caller:
// nesting is correct, just not parallel.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace primus::ops::cpu {

class ThreadPool {
 public:
  // num_threads <= 0: std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over [0, n); ranges hold at least `min_grain` items (so tiny
  // loops stay on one thread).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_grain = 1);

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex dispatch_;  // held by the caller of a running parallel_for
  std::mutex mutex_;
  std::condition_variable start_cv_, done_cv_;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  int pending_ = 0;
  int64_t n_ = 0, chunk_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  std::exception_ptr error_;
};

}  // namespace primus::ops::cpu

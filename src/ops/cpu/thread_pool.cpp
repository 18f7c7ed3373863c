#include "ops/cpu/thread_pool.h"

#include <algorithm>

namespace primus::ops::cpu {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex_);
    start_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
    if (stopping_) return;
    seen = generation_;
    const int64_t begin = std::min(n_, index * chunk_), end = std::min(n_, begin + chunk_);
    const auto* fn = fn_;
    lock.unlock();
    std::exception_ptr err;
    if (begin < end) {
      try {
        (*fn)(begin, end);
      } catch (...) {
        err = std::current_exception();
      }
    }
    lock.lock();
    if (err && !error_) error_ = err;
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_grain) {
  if (n <= 0) return;
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, min_grain));
  std::unique_lock<std::mutex> dispatch(dispatch_, std::try_to_lock);
  if (workers_.empty() || max_parts == 1 || !dispatch.owns_lock()) {
    fn(0, n);
    return;
  }
  const int64_t parts = std::min<int64_t>(size(), max_parts);
  const int64_t chunk = (n + parts - 1) / parts;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    n_ = n;
    chunk_ = chunk;
    fn_ = &fn;
    error_ = nullptr;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  start_cv_.notify_all();
  std::exception_ptr err;
  try {
    fn(0, std::min(n, chunk));
  } catch (...) {
    err = std::current_exception();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  if (!err) err = error_;
  fn_ = nullptr;
  lock.unlock();
  if (err) std::rethrow_exception(err);
}

}  // namespace primus::ops::cpu

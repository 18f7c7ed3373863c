// Device-event timing for benchmarks and GEMM tuning: warm up, then time each iteration with
// a pair of CUDA events on the stream and report the median (robust to the odd slow launch).
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <vector>

namespace primus::cuda {

struct TimingStats {
  double median_us = 0, min_us = 0, mean_us = 0;
  int iters = 0;
};

// Runs body(i) `warmup` times untimed, then `iters` times each between two events on `stream`.
// body(i) gets the iteration index (e.g. to rotate input buffers). Synchronizes at the end.
TimingStats time_on_stream(cudaStream_t stream, int warmup, int iters, const std::function<void(int)>& body);

}  // namespace primus::cuda

#include "ops/cuda/timing.h"

#include <algorithm>
#include <numeric>

#include "ops/cuda/cuda_check.h"

namespace primus::cuda {

TimingStats time_on_stream(cudaStream_t stream, int warmup, int iters, const std::function<void(int)>& body) {
  for (int i = 0; i < warmup; ++i) body(i);
  TimingStats st;
  if (iters <= 0) {
    PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream));
    return st;
  }
  std::vector<cudaEvent_t> ev(static_cast<size_t>(iters) + 1);
  for (auto& e : ev) PRIMUS_CUDA_CHECK(cudaEventCreate(&e));
  PRIMUS_CUDA_CHECK(cudaEventRecord(ev[0], stream));
  for (int i = 0; i < iters; ++i) {
    body(warmup + i);
    PRIMUS_CUDA_CHECK(cudaEventRecord(ev[static_cast<size_t>(i) + 1], stream));
  }
  PRIMUS_CUDA_CHECK(cudaEventSynchronize(ev.back()));
  std::vector<double> us(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    PRIMUS_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[static_cast<size_t>(i)], ev[static_cast<size_t>(i) + 1]));
    us[static_cast<size_t>(i)] = ms * 1000.0;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  st.iters = iters;
  st.mean_us = std::accumulate(us.begin(), us.end(), 0.0) / iters;
  std::sort(us.begin(), us.end());
  st.min_us = us.front();
  st.median_us = iters % 2 ? us[static_cast<size_t>(iters / 2)]
                           : 0.5 * (us[static_cast<size_t>(iters / 2 - 1)] + us[static_cast<size_t>(iters / 2)]);
  return st;
}

}  // namespace primus::cuda

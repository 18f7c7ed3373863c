#include "core/trace.h"

#include "core/error.h"

#if PRIMUS_WITH_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>
#endif

namespace primus::trace {

#if PRIMUS_WITH_CUDA
void range_push(const char* name) { nvtxRangePushA(name); }
void range_pop() { nvtxRangePop(); }
void capture_start() {
  const cudaError_t e = cudaProfilerStart();
  PRIMUS_CHECK(e == cudaSuccess, "profile: cudaProfilerStart failed: {}", cudaGetErrorString(e));
}
void capture_stop() {
  const cudaError_t e = cudaProfilerStop();
  PRIMUS_CHECK(e == cudaSuccess, "profile: cudaProfilerStop failed: {}", cudaGetErrorString(e));
}
#else
void range_push(const char*) {}
void range_pop() {}
void capture_start() {}
void capture_stop() {}
#endif

}  // namespace primus::trace

// Named ranges and capture windows for external profilers (Nsight Systems, Nsight Compute).
//
// Megatron's `profile: true` brackets iterations [profile_step_start, profile_step_end) with
// cudaProfilerStart / cudaProfilerStop, so a profiler started with its capture range tied to the
// profiler API records only those steps:
//   nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi --capture-range-end=stop primus train ...
//   ncu --profile-from-start off --nvtx primus train ...
// and the code marks what it is doing with NVTX ranges (the decoder's blocks forward and
// backward, the MoE layer's router / dispatch / experts / combine, the optimizer), which those
// tools show as the parent of each kernel.
//
// Without the CUDA path both are no-ops. With it, a range costs one call into NVTX's
// header-only stub (nothing is recorded unless a tool is attached).
#pragma once

namespace primus::trace {

// Opens a named NVTX range on this thread; ranges nest. `name` must outlive the range.
void range_push(const char* name);
void range_pop();

// cudaProfilerStart / cudaProfilerStop. Fail with a named error when the CUDA runtime does.
void capture_start();
void capture_stop();

// A range for the enclosing scope.
class Range {
 public:
  explicit Range(const char* name) { range_push(name); }
  ~Range() { range_pop(); }
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;
};

}  // namespace primus::trace

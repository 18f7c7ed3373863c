// Elementwise launchers: fill, cast-copy, add, scale. Raw pointers, element counts, a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// t (n) = value (fp32/bf16/fp16, or int32 with an integral value)
void launch_fill(void* t, DType dt, int64_t n, float value, cudaStream_t stream);
// dst (n) = cast(src (n)); fp32/bf16/fp16 in any combination (same dtype = plain copy)
void launch_copy_cast(void* dst, DType dst_dt, const void* src, DType src_dt, int64_t n,
                      cudaStream_t stream);
// out (n) = a (n) + b (n); all the same dtype; out may alias a or b
void launch_add(void* out, const void* a, const void* b, DType dt, int64_t n, cudaStream_t stream);
// t (n) *= alpha
void launch_scale(void* t, DType dt, int64_t n, float alpha, cudaStream_t stream);
// t (n) = uniform in [lo, hi) from a counter hash of (seed, index): benchmark and tuning inputs
// (never zeros: zeros make GEMMs look faster than real data).
void launch_fill_uniform(void* t, DType dt, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);

}  // namespace primus::cuda

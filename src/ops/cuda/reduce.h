// Multi-tensor reductions: sum of squares (fp64 result, for the grad norm) and the number
// of exact zeros. Per-block partials, then a fixed-order final sum: deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace primus::cuda {

struct TensorRef {
  const void* ptr = nullptr;
  int64_t n = 0;  // elements
  DType dtype = DType::F32;
};

// Device scratch both reductions need for these tensors (the partials).
size_t multi_reduce_workspace_bytes(const std::vector<TensorRef>& tensors);

// *result (device, fp64) = sum_t sum_i x_t[i]^2 (fp32/bf16/fp16 inputs, any mix).
void launch_sum_of_squares(const std::vector<TensorRef>& tensors, double* result, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);
// *result (device, int64) = number of elements equal to 0 (+0 or -0).
void launch_count_zeros(const std::vector<TensorRef>& tensors, long long* result, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream);

}  // namespace primus::cuda

// Fused RMSNorm forward and backward: y = x / sqrt(mean(x^2) + eps) * w.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// y (N,C), rstd (N) fp32, x (N,C), w (C); y and x share x_dt, w has w_dt.
void launch_rmsnorm_forward(void* y, float* rstd, const void* x, const void* w, DType x_dt, DType w_dt,
                            int64_t N, int64_t C, float eps, cudaStream_t stream);

// Scratch the backward needs for its per-block dw partials.
size_t rmsnorm_backward_workspace_bytes(int64_t N, int64_t C);
// dx (N,C) += rstd*w*dy - x * rstd^3 / C * sum_c(dy*w*x);   dw (C) fp32 += sum_rows dy*x*rstd.
// dx, dy, x share x_dt; w has w_dt.
void launch_rmsnorm_backward(void* dx, float* dw, const void* dy, const void* x, const void* w, const float* rstd,
                             DType x_dt, DType w_dt, int64_t N, int64_t C, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream);

}  // namespace primus::cuda

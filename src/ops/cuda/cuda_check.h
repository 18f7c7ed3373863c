// Check macros for CUDA runtime, cuBLAS(Lt), cuDNN and NCCL: each carries the failed
// expression, file and line, and the library's own error name.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define PRIMUS_CUDA_CHECK(expr)                                                           \
  do {                                                                                    \
    cudaError_t err_ = (expr);                                                            \
    if (err_ != cudaSuccess) [[unlikely]]                                                 \
      ::primus::throw_check_failure(#expr, __FILE__, __LINE__,                            \
                                    ::fmt::format("CUDA error {}: {}", cudaGetErrorName(err_), \
                                                  cudaGetErrorString(err_)));             \
  } while (0)

// After a kernel launch: catches bad launch configurations immediately.
#define PRIMUS_CUDA_LAUNCH_CHECK() PRIMUS_CUDA_CHECK(cudaGetLastError())

#define PRIMUS_CUBLAS_CHECK(expr)                                                         \
  do {                                                                                    \
    int st_ = static_cast<int>(expr);                                                     \
    if (st_ != 0) [[unlikely]]                                                            \
      ::primus::throw_check_failure(#expr, __FILE__, __LINE__,                            \
                                    ::fmt::format("cuBLAS status {}", st_));              \
  } while (0)

#define PRIMUS_CUDNN_CHECK(expr)                                                          \
  do {                                                                                    \
    cudnnStatus_t st_ = (expr);                                                           \
    if (st_ != CUDNN_STATUS_SUCCESS) [[unlikely]]                                         \
      ::primus::throw_check_failure(#expr, __FILE__, __LINE__,                            \
                                    ::fmt::format("cuDNN error {}", cudnnGetErrorString(st_))); \
  } while (0)

#define PRIMUS_NCCL_CHECK(expr)                                                           \
  do {                                                                                    \
    ncclResult_t st_ = (expr);                                                            \
    if (st_ != ncclSuccess) [[unlikely]]                                                  \
      ::primus::throw_check_failure(#expr, __FILE__, __LINE__,                            \
                                    ::fmt::format("NCCL error {}", ncclGetErrorString(st_))); \
  } while (0)

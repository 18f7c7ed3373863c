// Cross-entropy kernels. One block of 1024 threads per row, so about one row per SM is in
// flight and the second read of the fused kernel (the gradient pass) mostly hits L2.
// Pass 1: each thread keeps (max m, sum s of exp(x - m)) over its elements, rescaling once
// per 16-byte vector; the block merges the pairs; lse = m + log(s).
// Pass 2 (fused): dlogits = dloss * (exp(x - lse) - [j == target]) written over x.
#include "ops/cuda/cross_entropy.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 1024;

template <typename T, int VEC>
__device__ float row_logsumexp(const T* row, int64_t V) {
  const MaxSum total = row_max_sum<T, VEC>(row, V);
  return total.m + __logf(total.s);
}

template <typename T, int VEC>
__global__ void cross_entropy_forward_kernel(float* losses, const T* logits, const int32_t* targets, int64_t V) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * V;
  const float lse = row_logsumexp<T, VEC>(row, V);
  if (threadIdx.x == 0) {
    const int32_t t = targets[r];
    losses[r] = t < 0 ? 0.f : lse - to_f32<T>(row[t]);
  }
}

template <typename T, int VEC>
__global__ void cross_entropy_fused_kernel(float* losses, T* logits, const int32_t* targets, const float* dloss,
                                           int64_t V) {
  const int64_t r = blockIdx.x;
  T* row = logits + r * V;
  const int32_t t = targets[r];
  const float lse = row_logsumexp<T, VEC>(row, V);
  if (threadIdx.x == 0) losses[r] = t < 0 ? 0.f : lse - to_f32<T>(row[t]);
  __syncthreads();  // row[t] is read above before any thread overwrites it
  const float g = t < 0 ? 0.f : dloss[r];
  const int64_t nvec = V / VEC;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    float x[VEC];
    load_vec<T, VEC>(x, row + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] = g * (__expf(x[j] - lse) - (i * VEC + j == t ? 1.f : 0.f));
    store_vec<T, VEC>(row + i * VEC, x);
  }
  for (int64_t i = nvec * VEC + threadIdx.x; i < V; i += blockDim.x)
    row[i] = from_f32<T>(g * (__expf(to_f32<T>(row[i]) - lse) - (i == t ? 1.f : 0.f)));
}

}  // namespace

void launch_cross_entropy_forward(float* losses, const void* logits, DType dt, const int32_t* targets, int64_t N,
                                  int64_t V, cudaStream_t stream) {
  if (N == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int VW = vec_width<T>();
    if (V % VW == 0 && aligned16(logits)) {
      cross_entropy_forward_kernel<T, VW><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          losses, static_cast<const T*>(logits), targets, V);
    } else {
      cross_entropy_forward_kernel<T, 1><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          losses, static_cast<const T*>(logits), targets, V);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_cross_entropy_fused(float* losses, void* logits, DType dt, const int32_t* targets, const float* dloss,
                                int64_t N, int64_t V, cudaStream_t stream) {
  if (N == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int VW = vec_width<T>();
    if (V % VW == 0 && aligned16(logits)) {
      cross_entropy_fused_kernel<T, VW><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          losses, static_cast<T*>(logits), targets, dloss, V);
    } else {
      cross_entropy_fused_kernel<T, 1><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          losses, static_cast<T*>(logits), targets, dloss, V);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

// Vocabulary-parallel cross-entropy kernels (cross_entropy_shards.h states the math).
// Pass 1 (stats): one block per row; each thread keeps the online pair (max m, sum s of
// exp(z - m)) over its 16-byte vectors, rescaling once per vector, the block merges the pairs
// (as cross_entropy.cu does) and thread 0 writes the row's three numbers.
// Pass 2 (finish): every thread of the row's block combines the P gathered triples itself
// (3P broadcast loads, P is the tensor-parallel size), thread 0 writes the loss and the block
// rewrites the row as its gradient. Without a gradient the loss needs only the triples: one
// thread per row.
// Blocks are sized to the row (a multiple of 32 up to 1024 threads): a 7-column slice does not
// launch 1024 threads, a 64k-column slice gets one row per SM in flight.
#include "ops/cuda/cross_entropy_shards.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kMaxThreads = 1024;

int threads_for_row(int64_t Vs, int vec) {
  const int64_t work = ceil_div(Vs, vec);
  const int64_t warps = ceil_div(work, 32);
  return static_cast<int>(warps >= kMaxThreads / 32 ? kMaxThreads : (warps < 1 ? 32 : warps * 32));
}

// A target is on this rank when it indexes this slice; anything else contributes nothing here.
__device__ __forceinline__ bool local_target(int32_t t, int64_t Vs) { return t >= 0 && t < Vs; }

template <typename T, int VEC>
__global__ void shard_stats_kernel(float* stats, const T* logits, const int32_t* targets, int64_t N, int64_t Vs) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * Vs;
  const MaxSum ms = row_max_sum<T, VEC>(row, Vs);
  if (threadIdx.x == 0) {
    const int32_t t = targets[r];
    stats[r] = ms.m;
    stats[N + r] = ms.s;
    stats[2 * N + r] = local_target(t, Vs) ? to_f32<T>(row[t]) : 0.f;
  }
}

// Row r's logsumexp over all ranks and the sum of the ranks' target logits (only the owning
// rank's is nonzero), from gathered (P,3,N). expf/logf, not the fast intrinsics: a handful of
// calls per row, and lse enters every gradient element.
__device__ __forceinline__ void combine_ranks(const float* gathered, int64_t P, int64_t N, int64_t r, float& lse,
                                              float& target_logit) {
  float M = -INFINITY, zt = 0.f;
  for (int64_t p = 0; p < P; ++p) {
    M = fmaxf(M, gathered[(p * 3 + 0) * N + r]);
    zt += gathered[(p * 3 + 2) * N + r];
  }
  float S = 0.f;
  for (int64_t p = 0; p < P; ++p) {
    const float m = gathered[(p * 3 + 0) * N + r];
    if (m != -INFINITY) S += gathered[(p * 3 + 1) * N + r] * expf(m - M);
  }
  lse = M + logf(S);
  target_logit = zt;
}

__global__ void shard_finish_loss_kernel(float* losses, const float* gathered, int64_t P, int64_t N) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < N;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float lse, zt;
    combine_ranks(gathered, P, N, r, lse, zt);
    losses[r] = lse - zt;
  }
}

template <typename T, int VEC>
__global__ void shard_finish_grad_kernel(float* losses, T* logits, const float* gathered, int64_t P,
                                         const int32_t* targets, const float* dloss, int64_t N, int64_t Vs) {
  const int64_t r = blockIdx.x;
  float lse, zt;
  combine_ranks(gathered, P, N, r, lse, zt);
  if (threadIdx.x == 0) losses[r] = lse - zt;
  T* row = logits + r * Vs;
  const int32_t t = targets[r];
  const int64_t tl = local_target(t, Vs) ? t : -1;  // no one-hot column on this rank
  const float g = dloss[r];
  const int64_t nvec = Vs / VEC;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    float x[VEC];
    load_vec<T, VEC>(x, row + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] = g * (__expf(x[j] - lse) - (i * VEC + j == tl ? 1.f : 0.f));
    store_vec<T, VEC>(row + i * VEC, x);
  }
  for (int64_t i = nvec * VEC + threadIdx.x; i < Vs; i += blockDim.x)
    row[i] = from_f32<T>(g * (__expf(to_f32<T>(row[i]) - lse) - (i == tl ? 1.f : 0.f)));
}

}  // namespace

void launch_cross_entropy_shard_stats(float* stats, const void* logits, DType dt, const int32_t* targets,
                                      int64_t N, int64_t Vs, cudaStream_t stream) {
  if (N == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int VW = vec_width<T>();
    if (Vs % VW == 0 && aligned16(logits)) {
      shard_stats_kernel<T, VW><<<static_cast<unsigned>(N), threads_for_row(Vs, VW), 0, stream>>>(
          stats, static_cast<const T*>(logits), targets, N, Vs);
    } else {
      shard_stats_kernel<T, 1><<<static_cast<unsigned>(N), threads_for_row(Vs, 1), 0, stream>>>(
          stats, static_cast<const T*>(logits), targets, N, Vs);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_cross_entropy_shard_finish(float* losses, void* logits, DType dt, const float* gathered, int64_t P,
                                       const int32_t* targets, const float* dloss, int64_t N, int64_t Vs,
                                       cudaStream_t stream) {
  if (N == 0) return;
  if (logits == nullptr) {
    shard_finish_loss_kernel<<<grid_for(N, 256), 256, 0, stream>>>(losses, gathered, P, N);
    PRIMUS_CUDA_LAUNCH_CHECK();
    return;
  }
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int VW = vec_width<T>();
    if (Vs % VW == 0 && aligned16(logits)) {
      shard_finish_grad_kernel<T, VW><<<static_cast<unsigned>(N), threads_for_row(Vs, VW), 0, stream>>>(
          losses, static_cast<T*>(logits), gathered, P, targets, dloss, N, Vs);
    } else {
      shard_finish_grad_kernel<T, 1><<<static_cast<unsigned>(N), threads_for_row(Vs, 1), 0, stream>>>(
          losses, static_cast<T*>(logits), gathered, P, targets, dloss, N, Vs);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

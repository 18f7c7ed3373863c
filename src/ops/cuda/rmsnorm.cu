// RMSNorm kernels. A block walks rows (grid-stride); each thread owns the same K vectors of
// VEC columns in every row (column c = (tid + T*k)*VEC + j), so w stays in registers and the
// backward's dw partial is a per-thread register sum over the block's rows (fixed order, no
// atomics). The block's dw partials go to scratch (grid, C); a second kernel adds them in
// block order into dw. Per-row sums use one block reduction.
#include "ops/cuda/rmsnorm.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kMaxK = 16;

struct RowLayout {
  int threads;  // T
  int k;        // vectors per thread, a power of two <= kMaxK
};

RowLayout row_layout(int64_t C, int vec) {
  const int64_t nvec = ceil_div(C, vec);
  int threads = nvec >= 256 ? 256 : static_cast<int>(ceil_div(nvec, 32) * 32);
  int64_t k = ceil_div(nvec, threads);
  if (k > kMaxK) {  // very wide rows: use more threads before giving up
    threads = 1024;
    k = ceil_div(nvec, threads);
  }
  PRIMUS_CHECK(k <= kMaxK, "RMSNorm: hidden size {} too large for the CUDA kernel (max {})", C,
               int64_t{1024} * kMaxK * vec);
  int p = 1;
  while (p < k) p *= 2;
  return {threads, p};
}

int blocks_for_rows(int64_t N, int threads) {
  const int64_t per_sm = 2048 / threads;
  const int64_t cap = 132 * per_sm;
  return static_cast<int>(N < cap ? (N > 0 ? N : 1) : cap);
}

template <typename T, typename TW, int VEC, int K>
__global__ void rmsnorm_forward_kernel(T* y, float* rstd, const T* x, const TW* w, int64_t N, int64_t C, float eps) {
  __shared__ float scratch[32];
  float wr[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
    if (c < C) load_vec<TW, VEC>(wr[k], w + c);
  }
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * C;
    float xv[K][VEC];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
      if (c < C) {
        load_vec<T, VEC>(xv[k], xr + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) ss = fmaf(xv[k][j], xv[k][j], ss);
      }
    }
    ss = block_sum(ss, scratch);
    const float r = rsqrtf(ss / static_cast<float>(C) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
      if (c < C) {
        float o[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) o[j] = xv[k][j] * r * wr[k][j];
        store_vec<T, VEC>(y + row * C + c, o);
      }
    }
  }
}

template <typename T, typename TW, int VEC, int K>
__global__ void rmsnorm_backward_kernel(T* dx, float* dw_partials, const T* dy, const T* x, const TW* w,
                                        const float* rstd, int64_t N, int64_t C) {
  __shared__ float scratch[32];
  float wr[K][VEC], dwacc[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) dwacc[k][j] = 0.f;
    if (c < C) load_vec<TW, VEC>(wr[k], w + c);
  }
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    float xv[K][VEC], gv[K][VEC];  // x and dy*w
    float dot = 0.f;
    const float r = rstd[row];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
      if (c < C) {
        float dyv[VEC];
        load_vec<T, VEC>(xv[k], x + row * C + c);
        load_vec<T, VEC>(dyv, dy + row * C + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          gv[k][j] = dyv[j] * wr[k][j];
          dot = fmaf(gv[k][j], xv[k][j], dot);
          dwacc[k][j] = fmaf(dyv[j], xv[k][j] * r, dwacc[k][j]);
        }
      }
    }
    dot = block_sum(dot, scratch);
    const float coef = dot * r * r * r * inv_c;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
      if (c < C) {
        float d[VEC];
        load_vec<T, VEC>(d, dx + row * C + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) d[j] += gv[k][j] * r - xv[k][j] * coef;
        store_vec<T, VEC>(dx + row * C + c, d);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = (threadIdx.x + (int64_t)blockDim.x * k) * VEC;
    if (c < C) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) dw_partials[blockIdx.x * C + c + j] = dwacc[k][j];
    }
  }
}

// dw (C) += sum over g < G of partials (G, C), in two deterministic stages. A single pass with
// one block per 32 columns used only C/32 blocks (24 at C = 768) for G ~ 2800 partial rows and
// ran at ~200 GB/s; stage 1 cuts the rows into kSplits slices so C/32 * kSplits blocks share
// the reads, stage 2 adds the kSplits slice sums in slice order. Block (32, 8): x walks 32
// adjacent columns, y takes every 8th row; the 8 lane sums are added in y order.
constexpr int kPartialSplits = 16;

__global__ void sum_partials_stage1_kernel(float* slices, const float* partials, int G, int64_t C) {
  __shared__ float lane[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int per = (G + kPartialSplits - 1) / kPartialSplits;
  const int g0 = blockIdx.y * per, g1 = min(G, g0 + per);
  float s = 0.f;
  if (c < C)
    for (int g = g0 + threadIdx.y; g < g1; g += 8) s += partials[g * C + c];
  lane[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.f;
#pragma unroll
    for (int y = 0; y < 8; ++y) t += lane[y][threadIdx.x];
    slices[blockIdx.y * C + c] = t;
  }
}

__global__ void sum_partials_stage2_kernel(float* dw, const float* slices, int64_t C) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float t = 0.f;
#pragma unroll
  for (int s = 0; s < kPartialSplits; ++s) t += slices[s * C + c];
  dw[c] += t;
}

#define PRIMUS_RMSNORM_DISPATCH_K(k, KC, ...)                                              \
  switch (k) {                                                                            \
    case 1: { constexpr int KC = 1; __VA_ARGS__; break; }                                 \
    case 2: { constexpr int KC = 2; __VA_ARGS__; break; }                                 \
    case 4: { constexpr int KC = 4; __VA_ARGS__; break; }                                 \
    case 8: { constexpr int KC = 8; __VA_ARGS__; break; }                                 \
    default: { constexpr int KC = 16; __VA_ARGS__; break; }                               \
  }

}  // namespace

void launch_rmsnorm_forward(void* y, float* rstd, const void* x, const void* w, DType x_dt, DType w_dt,
                            int64_t N, int64_t C, float eps, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  PRIMUS_DISPATCH_FLOAT(x_dt, T, {
    PRIMUS_DISPATCH_FLOAT(w_dt, TW, {
      constexpr int V = vec_width<T>() < vec_width<TW>() ? vec_width<T>() : vec_width<TW>();
      const bool vec_ok = C % V == 0 && aligned16(y) && aligned16(x) && aligned16(w);
      if (vec_ok) {
        const RowLayout L = row_layout(C, V);
        PRIMUS_RMSNORM_DISPATCH_K(L.k, KC, {
          rmsnorm_forward_kernel<T, TW, V, KC><<<blocks_for_rows(N, L.threads), L.threads, 0, stream>>>(
              static_cast<T*>(y), rstd, static_cast<const T*>(x), static_cast<const TW*>(w), N, C, eps);
        });
      } else {
        const RowLayout L = row_layout(C, 1);
        PRIMUS_RMSNORM_DISPATCH_K(L.k, KC, {
          rmsnorm_forward_kernel<T, TW, 1, KC><<<blocks_for_rows(N, L.threads), L.threads, 0, stream>>>(
              static_cast<T*>(y), rstd, static_cast<const T*>(x), static_cast<const TW*>(w), N, C, eps);
        });
      }
    });
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

size_t rmsnorm_backward_workspace_bytes(int64_t N, int64_t C) {
  // The most blocks any layout uses (threads >= 32) times C floats, then the stage-1 slices.
  return (static_cast<size_t>(blocks_for_rows(N, 32)) + kPartialSplits) * static_cast<size_t>(C) * sizeof(float);
}

void launch_rmsnorm_backward(void* dx, float* dw, const void* dy, const void* x, const void* w, const float* rstd,
                             DType x_dt, DType w_dt, int64_t N, int64_t C, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  float* partials = static_cast<float*>(workspace);
  int grid = 0;
  PRIMUS_DISPATCH_FLOAT(x_dt, T, {
    PRIMUS_DISPATCH_FLOAT(w_dt, TW, {
      constexpr int V = vec_width<T>() < vec_width<TW>() ? vec_width<T>() : vec_width<TW>();
      const bool vec_ok = C % V == 0 && aligned16(dx) && aligned16(dy) && aligned16(x) && aligned16(w);
      const RowLayout L = row_layout(C, vec_ok ? V : 1);
      grid = blocks_for_rows(N, L.threads);
      PRIMUS_CHECK(workspace_bytes >= static_cast<size_t>(grid + kPartialSplits) * C * sizeof(float),
                   "RMSNorm backward: workspace of {} bytes, need {}", workspace_bytes,
                   (grid + kPartialSplits) * C * sizeof(float));
      if (vec_ok) {
        PRIMUS_RMSNORM_DISPATCH_K(L.k, KC, {
          rmsnorm_backward_kernel<T, TW, V, KC><<<grid, L.threads, 0, stream>>>(
              static_cast<T*>(dx), partials, static_cast<const T*>(dy), static_cast<const T*>(x),
              static_cast<const TW*>(w), rstd, N, C);
        });
      } else {
        PRIMUS_RMSNORM_DISPATCH_K(L.k, KC, {
          rmsnorm_backward_kernel<T, TW, 1, KC><<<grid, L.threads, 0, stream>>>(
              static_cast<T*>(dx), partials, static_cast<const T*>(dy), static_cast<const T*>(x),
              static_cast<const TW*>(w), rstd, N, C);
        });
      }
    });
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
  float* slices = partials + static_cast<int64_t>(grid) * C;
  sum_partials_stage1_kernel<<<dim3(static_cast<unsigned>(ceil_div(C, 32)), kPartialSplits), dim3(32, 8), 0,
                               stream>>>(slices, partials, grid, C);
  PRIMUS_CUDA_LAUNCH_CHECK();
  sum_partials_stage2_kernel<<<static_cast<unsigned>(ceil_div(C, 256)), 256, 0, stream>>>(dw, slices, C);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

// FP8 cast(-transpose), amax and delayed-scaling kernels.
//
// The cast works on 64 x 64 tiles with 256 threads: each thread loads two 8-element bf16
// vectors (16 B), converts them with the hardware's saturating fp8 conversion, stores them
// (the row-major copy) and parks the bytes in shared memory, from which each thread then
// writes 16 bytes of a row of the transposed copy. amax is reduced per block and max-ed into
// the global value once per block (non-negative floats compare as their int bits).
#include "ops/cuda/fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "core/fp8_scale.h"
#include "ops/cuda/cuda_check.h"

namespace primus::cuda {

namespace {

constexpr int kTile = 64;
constexpr int kThreads = 256;

__device__ __forceinline__ float block_max(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
  if (warp == 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;  // valid in thread 0
}

__device__ __forceinline__ void atomic_max_nonneg(float* addr, float v) {
  atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
}

template <bool E5M2>
__device__ __forceinline__ uint16_t to_fp8x2(float a, float b) {
  return __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, E5M2 ? __NV_E5M2 : __NV_E4M3);
}

template <bool E5M2>
__global__ void __launch_bounds__(kThreads) cast_transpose_kernel(const __nv_bfloat16* __restrict__ x, int64_t R,
                                                                  int64_t C, uint8_t* __restrict__ out,
                                                                  uint8_t* __restrict__ out_t, Fp8CastArgs a) {
  __shared__ uint8_t tile[kTile][kTile + 4];
  __shared__ float red[kThreads / 32];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const float s = a.scale_from_amax ? fp8_scale_from_amax(a.fmax, *a.amax, a.margin) : *a.scale;
  if (a.scale_from_amax && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    *a.scale = s;
    *a.scale_inv = 1.f / s;
  }
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int chunk = threadIdx.x + i * kThreads;  // 512 chunks: 64 rows x 8 vectors
    const int row = chunk / 8, col = (chunk % 8) * 8;
    const int64_t gr = r0 + row, gc = c0 + col;
    if (gr < R && gc < C) {
      const uint4 raw = *reinterpret_cast<const uint4*>(x + gr * C + gc);
      const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw);
      float f[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        f[j] = __bfloat162float(v[j]);
        amax = fmaxf(amax, fabsf(f[j]));
      }
      uint16_t q[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) q[j] = to_fp8x2<E5M2>(f[2 * j] * s, f[2 * j + 1] * s);
      const uint2 packed = *reinterpret_cast<const uint2*>(q);
      if (out != nullptr) *reinterpret_cast<uint2*>(out + gr * C + gc) = packed;
      // rows of kTile + 4 bytes: 4-byte aligned, and the transposed reads below hit 2 banks at most
      *reinterpret_cast<uint32_t*>(&tile[row][col]) = packed.x;
      *reinterpret_cast<uint32_t*>(&tile[row][col + 4]) = packed.y;
    }
  }
  if (out_t != nullptr) {
    __syncthreads();
    const int c = threadIdx.x / 4, rchunk = (threadIdx.x % 4) * 16;  // 64 columns x 4 chunks of 16 rows
    const int64_t gc = c0 + c, gr = r0 + rchunk;
    if (gc < C && gr < R) {
      uint8_t b[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) b[j] = tile[rchunk + j][c];
      *reinterpret_cast<uint4*>(out_t + gc * R + gr) = *reinterpret_cast<const uint4*>(b);
    }
  }
  if (a.record_amax) {
    const float m = block_max(amax, red);
    if (threadIdx.x == 0) atomic_max_nonneg(a.amax, m);
  }
}

__global__ void amax_kernel(const __nv_bfloat16* __restrict__ x, int64_t n8, float* amax) {
  __shared__ float red[kThreads / 32];
  float m = 0.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 raw = reinterpret_cast<const uint4*>(x)[i];
    const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(__bfloat162float(v[j])));
  }
  m = block_max(m, red);
  if (threadIdx.x == 0) atomic_max_nonneg(amax, m);
}

__global__ void update_scales_kernel(float* metas, int64_t rows, int H, int64_t cols, int64_t scale_col,
                                     int64_t scale_inv_col, float fwd_max, float grad_max, int margin, bool amax_max) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float* m = metas + r * cols;
  float amax = m[0];
  if (amax_max)
    for (int j = 1; j < H; ++j) amax = fmaxf(amax, m[j]);
  const float fmax = r % 3 == 2 ? grad_max : fwd_max;
  if (amax > 0.f && isfinite(amax)) {  // else the scale stays
    const float s = fp8_scale_from_amax(fmax, amax, margin);
    m[scale_col] = s;
    m[scale_inv_col] = 1.f / s;
  }
  for (int j = H - 1; j > 0; --j) m[j] = m[j - 1];
  m[0] = 0.f;
}

}  // namespace

void launch_fp8_cast_transpose(const void* x, int64_t R, int64_t C, void* out, void* out_t, const Fp8CastArgs& a,
                               cudaStream_t stream) {
  if (R == 0 || C == 0) return;
  const dim3 grid(static_cast<unsigned>((C + kTile - 1) / kTile), static_cast<unsigned>((R + kTile - 1) / kTile));
  auto* xp = static_cast<const __nv_bfloat16*>(x);
  auto* o = static_cast<uint8_t*>(out);
  auto* ot = static_cast<uint8_t*>(out_t);
  if (a.e5m2) {
    cast_transpose_kernel<true><<<grid, kThreads, 0, stream>>>(xp, R, C, o, ot, a);
  } else {
    cast_transpose_kernel<false><<<grid, kThreads, 0, stream>>>(xp, R, C, o, ot, a);
  }
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_bf16_amax(const void* x, int64_t n, float* amax, cudaStream_t stream) {
  const int64_t n8 = n / 8;
  if (n8 == 0) return;
  const int64_t blocks = std::min<int64_t>((n8 + kThreads - 1) / kThreads, 132 * 8);
  amax_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), n8, amax);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_fp8_update_scales(float* metas, int64_t rows, int H, int64_t cols, int64_t scale_col,
                              int64_t scale_inv_col, float fwd_max, float grad_max, int margin, bool amax_max,
                              cudaStream_t stream) {
  if (rows == 0) return;
  const int threads = 128;
  update_scales_kernel<<<static_cast<unsigned>((rows + threads - 1) / threads), threads, 0, stream>>>(
      metas, rows, H, cols, scale_col, scale_inv_col, fwd_max, grad_max, margin, amax_max);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

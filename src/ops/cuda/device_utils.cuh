// Device-side helpers shared by the kernels of src/ops/cuda (include from .cu files only):
// element conversions, 16-byte vector loads/stores, warp/block reductions, and the dtype
// dispatch used by the launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/error.h"

namespace primus::cuda {

// ---- element conversions ---------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// Number of T in one 16-byte vector.
template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

// Loads/stores VEC consecutive elements as floats. VEC == vec_width<T>() uses one 16-byte
// access (the caller guarantees 16-byte alignment); VEC == 1 is the scalar path.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(float (&dst)[VEC], const T* src) {
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw = *reinterpret_cast<const uint4*>(src);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = to_f32<T>(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = to_f32<T>(src[i]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* dst, const float (&src)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) e[i] = from_f32<T>(src[i]);
    *reinterpret_cast<uint4*>(dst) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = from_f32<T>(src[i]);
  }
}

// ---- reductions ------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 values.
// Contains __syncthreads: call from all threads of the block.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < nwarps ? scratch[lane] : T(0);
  return warp_sum(total);
}

// Online softmax state (max, sum of exp(x - max)) merge, fp32.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}
__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, w);
  }
  return v;
}

// (max, sum of exp(x - max)) over a row of n elements, 16-byte vectors of VEC per thread and
// step, merged over the block (any multiple of 32 threads up to 1024); every thread gets the
// result. Contains __syncthreads: call from all threads of the block.
template <typename T, int VEC>
__device__ MaxSum row_max_sum(const T* row, int64_t n) {
  __shared__ float sm_m[32], sm_s[32];
  MaxSum acc{-INFINITY, 0.f};
  const int64_t nvec = n / VEC;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    float x[VEC];
    load_vec<T, VEC>(x, row + i * VEC);
    float m = x[0];
#pragma unroll
    for (int j = 1; j < VEC; ++j) m = fmaxf(m, x[j]);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += __expf(x[j] - m);
    acc = merge(acc, MaxSum{m, s});
  }
  for (int64_t i = nvec * VEC + threadIdx.x; i < n; i += blockDim.x) acc = merge(acc, MaxSum{to_f32<T>(row[i]), 1.f});
  acc = warp_merge(acc);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm_m[warp] = acc.m;
    sm_s[warp] = acc.s;
  }
  __syncthreads();
  MaxSum total{-INFINITY, 0.f};
  if (lane < static_cast<int>(blockDim.x >> 5)) total = MaxSum{sm_m[lane], sm_s[lane]};
  return warp_merge(total);
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Grid size for a grid-stride loop over `work` items with `threads` per block: enough blocks
// to fill the GPU several times over, never more than the work needs.
inline unsigned grid_for(int64_t work, int threads) {
  int64_t blocks = ceil_div(work, threads);
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks < 132 * 32 ? blocks : 132 * 32);
}

// ---- counter-based random numbers ------------------------------------------------------------
// Philox-4x32-10 exactly as core/rng.cpp: counter (lo, hi), e.g. (element index, stream), and a
// 64-bit key (the seed); four 32-bit words per counter (init_normal.cu, dropout.cu).
__device__ inline uint4 philox(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return make_uint4(c0, c1, c2, c3);
}

}  // namespace primus::cuda

// Runs the body with T bound to the CUDA type of a floating dtype (fp32, bf16, fp16).
#define PRIMUS_DISPATCH_FLOAT(dtype, T, ...)                                                  \
  switch (dtype) {                                                                            \
    case ::primus::DType::F32: {                                                              \
      using T = float;                                                                        \
      __VA_ARGS__;                                                                            \
      break;                                                                                  \
    }                                                                                         \
    case ::primus::DType::BF16: {                                                             \
      using T = __nv_bfloat16;                                                                \
      __VA_ARGS__;                                                                            \
      break;                                                                                  \
    }                                                                                         \
    case ::primus::DType::F16: {                                                              \
      using T = __half;                                                                       \
      __VA_ARGS__;                                                                            \
      break;                                                                                  \
    }                                                                                         \
    default:                                                                                  \
      ::primus::fail("CUDA backend: dtype {} is not supported here (expected fp32, bf16 or fp16)", \
                     ::primus::dtype_name(dtype));                                            \
  }

// RoPE kernels. Work unit u of one head row (D elements): u < R/2 is the rotary pair
// (u, u + R/2); u >= R/2 copies the non-rotary dim R + (u - R/2). A head row has D - R/2 units.
//   forward:  o[u] = x[u] c - x[u+R/2] s,  o[u+R/2] = x[u+R/2] c + x[u] s
//   inverse:  the same with s -> -s (rotation matrices are orthogonal: R^T = R(-theta)).
// Each thread reads both elements of its pair before writing, so out may alias the input.
#include "ops/cuda/rope.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ void rope_unit(T* dst, const T* src, int64_t u, const float* cos_t, const float* sin_t,
                                          int64_t R, float sign, bool rotate) {
  const int64_t half = R / 2;
  if (u < half) {
    const float a = to_f32<T>(src[u]), b = to_f32<T>(src[u + half]);
    if (rotate) {
      const float c = cos_t[u], s = sign * sin_t[u];
      dst[u] = from_f32<T>(a * c - b * s);
      dst[u + half] = from_f32<T>(b * c + a * s);
    } else {
      dst[u] = from_f32<T>(a);
      dst[u + half] = from_f32<T>(b);
    }
  } else {
    const int64_t d = R + (u - half);
    dst[d] = src[d];
  }
}

template <typename T>
__global__ void rope_kernel(T* out, const T* x, const float* cos, const float* sin, int64_t rows, int64_t T_,
                            int64_t H, int64_t D, int64_t R, float sign) {
  const int64_t units = D - R / 2;
  const int64_t total = rows * H * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i % units, rh = i / units;  // rh = row*H + h
    const int64_t t = (rh / H) % T_;
    rope_unit<T>(out + rh * D, x + rh * D, u, cos + t * (R / 2), sin + t * (R / 2), R, sign, true);
  }
}

// forward = true: src = qkv rows, dst = q/k/v; forward = false: src = dq/dk/dv, dst = dqkv.
template <typename T, bool kForward>
__global__ void qkv_rope_kernel(T* qkv, T* q, T* k, T* v, const float* cos, const float* sin, int64_t rows,
                                int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, int64_t R) {
  const int64_t units = D - R / 2;
  const int64_t heads = Hq + 2 * Hkv;
  const int64_t total = rows * heads * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i % units, rh = i / units;
    const int64_t row = rh / heads, hh = rh % heads;
    const int64_t t = row % T_;
    T* packed = qkv + rh * D;
    T* split;
    bool rotate = true;
    if (hh < Hq) {
      split = q + (row * Hq + hh) * D;
    } else if (hh < Hq + Hkv) {
      split = k + (row * Hkv + (hh - Hq)) * D;
    } else {
      split = v + (row * Hkv + (hh - Hq - Hkv)) * D;
      rotate = false;
    }
    const float* ct = cos + t * (R / 2);
    const float* st = sin + t * (R / 2);
    if constexpr (kForward) {
      rope_unit<T>(split, packed, u, ct, st, R, 1.f, rotate);
    } else {
      rope_unit<T>(packed, split, u, ct, st, R, -1.f, rotate);
    }
  }
}

}  // namespace

void launch_rope(void* out, const void* x, DType dt, const float* cos, const float* sin, int64_t B, int64_t T,
                 int64_t H, int64_t D, int64_t R, bool inverse, cudaStream_t stream) {
  const int64_t total = B * T * H * (D - R / 2);
  if (total == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    rope_kernel<E><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<E*>(out), static_cast<const E*>(x), cos, sin, B * T, T, H, D, R, inverse ? -1.f : 1.f);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_qkv_split_rope_forward(void* q, void* k, void* v, const void* qkv, DType dt, const float* cos,
                                   const float* sin, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                                   int64_t R, cudaStream_t stream) {
  const int64_t total = B * T * (Hq + 2 * Hkv) * (D - R / 2);
  if (total == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    qkv_rope_kernel<E, true><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        const_cast<E*>(static_cast<const E*>(qkv)), static_cast<E*>(q), static_cast<E*>(k), static_cast<E*>(v), cos,
        sin, B * T, T, Hq, Hkv, D, R);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_qkv_split_rope_backward(void* dqkv, const void* dq, const void* dk, const void* dv, DType dt,
                                    const float* cos, const float* sin, int64_t B, int64_t T, int64_t Hq,
                                    int64_t Hkv, int64_t D, int64_t R, cudaStream_t stream) {
  const int64_t total = B * T * (Hq + 2 * Hkv) * (D - R / 2);
  if (total == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    qkv_rope_kernel<E, false><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<E*>(dqkv), const_cast<E*>(static_cast<const E*>(dq)), const_cast<E*>(static_cast<const E*>(dk)),
        const_cast<E*>(static_cast<const E*>(dv)), cos, sin, B * T, T, Hq, Hkv, D, R);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

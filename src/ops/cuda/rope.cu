// RoPE kernels. A head row (D elements) splits into work units of VEC elements (VEC = 8 with
// 16-byte accesses when the sizes and pointers allow, else 1): unit u < R/2/VEC rotates the pairs
// (u*VEC + j, u*VEC + j + R/2), j < VEC; the remaining units copy the non-rotary dims [R, D).
//   forward:  o[u] = x[u] c - x[u+R/2] s,  o[u+R/2] = x[u+R/2] c + x[u] s
//   inverse:  the same with s -> -s (rotation matrices are orthogonal: R^T = R(-theta)).
// Each thread reads both elements of its pair before writing, so out may alias the input.
// Table rows: token row n uses row n % P (the kernels' P argument, rope.h).
#include "ops/cuda/rope.h"

#include <initializer_list>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

// One work unit of a head row: VEC rotary pairs (u*VEC .. u*VEC+VEC-1 with their partners
// R/2 later) when u < R/2/VEC, else VEC non-rotary dims copied.
template <typename T, int VEC>
__device__ __forceinline__ void rope_unit(T* dst, const T* src, int64_t u, const float* cos_t, const float* sin_t,
                                          int64_t R, float sign, bool rotate) {
  const int64_t half = R / 2, pair_units = half / VEC;
  if (u < pair_units) {
    const int64_t i = u * VEC;
    float a[VEC], b[VEC];
    load_vec<T, VEC>(a, src + i);
    load_vec<T, VEC>(b, src + i + half);
    if (rotate) {
      float c[VEC], sn[VEC], oa[VEC], ob[VEC];
      load_vec<float, VEC>(c, cos_t + i);
      load_vec<float, VEC>(sn, sin_t + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float sj = sign * sn[j];
        oa[j] = a[j] * c[j] - b[j] * sj;
        ob[j] = b[j] * c[j] + a[j] * sj;
      }
      store_vec<T, VEC>(dst + i, oa);
      store_vec<T, VEC>(dst + i + half, ob);
    } else {
      store_vec<T, VEC>(dst + i, a);
      store_vec<T, VEC>(dst + i + half, b);
    }
  } else {
    const int64_t d = R + (u - pair_units) * VEC;
    float x[VEC];
    load_vec<T, VEC>(x, src + d);
    store_vec<T, VEC>(dst + d, x);
  }
}

template <int VEC>
__host__ __device__ constexpr int64_t units_per_head(int64_t D, int64_t R) {
  return R / 2 / VEC + (D - R) / VEC;
}

template <typename T, int VEC>
__global__ void rope_kernel(T* out, const T* x, const float* cos, const float* sin, int64_t rows, int64_t P,
                            int64_t H, int64_t D, int64_t R, float sign) {
  const int64_t units = units_per_head<VEC>(D, R);
  const int64_t total = rows * H * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i % units, rh = i / units;  // rh = row*H + h
    const int64_t t = (rh / H) % P;
    rope_unit<T, VEC>(out + rh * D, x + rh * D, u, cos + t * (R / 2), sin + t * (R / 2), R, sign, true);
  }
}

// forward = true: src = qkv rows, dst = q/k/v; forward = false: src = dq/dk/dv, dst = dqkv.
template <typename T, int VEC, bool kForward>
__global__ void qkv_rope_kernel(T* qkv, T* q, T* k, T* v, const float* cos, const float* sin, int64_t rows,
                                int64_t P, int64_t Hq, int64_t Hkv, int64_t D, int64_t R) {
  const int64_t units = units_per_head<VEC>(D, R);
  const int64_t heads = Hq + 2 * Hkv;
  const int64_t total = rows * heads * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i % units, rh = i / units;
    const int64_t row = rh / heads, hh = rh % heads;
    const int64_t t = row % P;
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
      rope_unit<T, VEC>(split, packed, u, ct, st, R, 1.f, rotate);
    } else {
      rope_unit<T, VEC>(packed, split, u, ct, st, R, -1.f, rotate);
    }
  }
}

// 8-element vectors need R/2 and D-R in whole vectors and 16-byte aligned rows and tables.
template <typename T>
bool use_vec8(int64_t D, int64_t R, std::initializer_list<const void*> ptrs) {
  if ((R / 2) % 8 != 0 || (D - R) % 8 != 0 || D % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

}  // namespace

void launch_rope(void* out, const void* x, DType dt, const float* cos, const float* sin, int64_t B, int64_t T,
                 int64_t H, int64_t D, int64_t R, int64_t P, bool inverse, cudaStream_t stream) {
  if (B * T * H * D == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    if (use_vec8<E>(D, R, {out, x, cos, sin})) {
      rope_kernel<E, 8><<<grid_for(B * T * H * units_per_head<8>(D, R), kThreads), kThreads, 0, stream>>>(
          static_cast<E*>(out), static_cast<const E*>(x), cos, sin, B * T, P, H, D, R, inverse ? -1.f : 1.f);
    } else {
      rope_kernel<E, 1><<<grid_for(B * T * H * units_per_head<1>(D, R), kThreads), kThreads, 0, stream>>>(
          static_cast<E*>(out), static_cast<const E*>(x), cos, sin, B * T, P, H, D, R, inverse ? -1.f : 1.f);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_qkv_split_rope_forward(void* q, void* k, void* v, const void* qkv, DType dt, const float* cos,
                                   const float* sin, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                                   int64_t R, int64_t P, cudaStream_t stream) {
  const int64_t heads = B * T * (Hq + 2 * Hkv);
  if (heads * D == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    E* packed = const_cast<E*>(static_cast<const E*>(qkv));
    if (use_vec8<E>(D, R, {qkv, q, k, v, cos, sin})) {
      qkv_rope_kernel<E, 8, true><<<grid_for(heads * units_per_head<8>(D, R), kThreads), kThreads, 0, stream>>>(
          packed, static_cast<E*>(q), static_cast<E*>(k), static_cast<E*>(v), cos, sin, B * T, P, Hq, Hkv, D, R);
    } else {
      qkv_rope_kernel<E, 1, true><<<grid_for(heads * units_per_head<1>(D, R), kThreads), kThreads, 0, stream>>>(
          packed, static_cast<E*>(q), static_cast<E*>(k), static_cast<E*>(v), cos, sin, B * T, P, Hq, Hkv, D, R);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_qkv_split_rope_backward(void* dqkv, const void* dq, const void* dk, const void* dv, DType dt,
                                    const float* cos, const float* sin, int64_t B, int64_t T, int64_t Hq,
                                    int64_t Hkv, int64_t D, int64_t R, int64_t P, cudaStream_t stream) {
  const int64_t heads = B * T * (Hq + 2 * Hkv);
  if (heads * D == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    E* q = const_cast<E*>(static_cast<const E*>(dq));
    E* k = const_cast<E*>(static_cast<const E*>(dk));
    E* v = const_cast<E*>(static_cast<const E*>(dv));
    if (use_vec8<E>(D, R, {dqkv, dq, dk, dv, cos, sin})) {
      qkv_rope_kernel<E, 8, false><<<grid_for(heads * units_per_head<8>(D, R), kThreads), kThreads, 0, stream>>>(
          static_cast<E*>(dqkv), q, k, v, cos, sin, B * T, P, Hq, Hkv, D, R);
    } else {
      qkv_rope_kernel<E, 1, false><<<grid_for(heads * units_per_head<1>(D, R), kThreads), kThreads, 0, stream>>>(
          static_cast<E*>(dqkv), q, k, v, cos, sin, B * T, P, Hq, Hkv, D, R);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

// ---- multi-latent attention -------------------------------------------------------------
// One thread per output element. rope_elem: element i (< Dr) of the rotated vector src (Dr
// values), sign -1 for the transpose.
namespace {

template <typename T>
__device__ __forceinline__ float rope_elem(const T* src, int64_t i, int64_t half, const float* c, const float* s,
                                           float sign) {
  if (i < half) return to_f32(src[i]) * c[i] - to_f32(src[i + half]) * sign * s[i];
  const int64_t j = i - half;
  return to_f32(src[i]) * c[j] + to_f32(src[j]) * sign * s[j];
}

// Per (row, head): 2*Dq + Dv outputs: q (Dq), k (Dq), v (Dv).
template <typename T>
__global__ void mla_forward_kernel(T* q, T* k, T* v, const T* q_proj, const T* kv_up, const T* kv_down,
                                   const float* cos, const float* sin, int64_t rows, int64_t P, int64_t H,
                                   int64_t Dn, int64_t Dr, int64_t Dv, int64_t Wd) {
  const int64_t Dq = Dn + Dr, per = 2 * Dq + Dv, half = Dr / 2, L = Wd - Dr;
  const int64_t total = rows * H * per;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = i % per, rh = i / per, row = rh / H;
    const float* c = cos + (row % P) * half;
    const float* s = sin + (row % P) * half;
    if (e < Dq) {
      const T* src = q_proj + rh * Dq;
      q[rh * Dq + e] = e < Dn ? src[e] : from_f32<T>(rope_elem(src + Dn, e - Dn, half, c, s, 1.f));
    } else if (e < 2 * Dq) {
      const int64_t j = e - Dq;
      k[rh * Dq + j] = j < Dn ? kv_up[rh * (Dn + Dv) + j]
                              : from_f32<T>(rope_elem(kv_down + row * Wd + L, j - Dn, half, c, s, 1.f));
    } else {
      const int64_t j = e - 2 * Dq;
      v[rh * Dv + j] = kv_up[rh * (Dn + Dv) + Dn + j];
    }
  }
}

// Per row: H*(Dq + Dn + Dv) outputs (dq_proj, dkv_up) then Dr (dk_pe, summed over heads in fp32).
template <typename T>
__global__ void mla_backward_kernel(T* dq_proj, T* dkv_up, T* dk_pe, const T* dq, const T* dk, const T* dv,
                                    const float* cos, const float* sin, int64_t rows, int64_t P, int64_t H,
                                    int64_t Dn, int64_t Dr, int64_t Dv) {
  const int64_t Dq = Dn + Dr, per_head = Dq + Dn + Dv, per = H * per_head + Dr, half = Dr / 2;
  const int64_t total = rows * per;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / per, e = i % per;
    const float* c = cos + (row % P) * half;
    const float* s = sin + (row % P) * half;
    if (e < H * per_head) {
      const int64_t h = e / per_head, j = e % per_head, rh = row * H + h;
      if (j < Dq) {
        const T* g = dq + rh * Dq;
        dq_proj[rh * Dq + j] = j < Dn ? g[j] : from_f32<T>(rope_elem(g + Dn, j - Dn, half, c, s, -1.f));
      } else {
        const int64_t m = j - Dq;  // column of the head's [k_nope | v] block
        dkv_up[rh * (Dn + Dv) + m] = m < Dn ? dk[rh * Dq + m] : dv[rh * Dv + (m - Dn)];
      }
    } else {
      const int64_t d = e - H * per_head;
      float acc = 0.f;
      for (int64_t h = 0; h < H; ++h) acc += rope_elem(dk + (row * H + h) * Dq + Dn, d, half, c, s, -1.f);
      dk_pe[row * Dr + d] = from_f32<T>(acc);
    }
  }
}

}  // namespace

void launch_mla_qkv_rope_forward(void* q, void* k, void* v, const void* q_proj, const void* kv_up, const void* kv_down,
                                 DType dt, const float* cos, const float* sin, int64_t rows, int64_t P, int64_t H,
                                 int64_t Dn, int64_t Dr, int64_t Dv, int64_t Wd, cudaStream_t stream) {
  const int64_t total = rows * H * (2 * (Dn + Dr) + Dv);
  if (total == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    mla_forward_kernel<E><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<E*>(q), static_cast<E*>(k), static_cast<E*>(v), static_cast<const E*>(q_proj),
        static_cast<const E*>(kv_up), static_cast<const E*>(kv_down), cos, sin, rows, P, H, Dn, Dr, Dv, Wd);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_mla_qkv_rope_backward(void* dq_proj, void* dkv_up, void* dk_pe, const void* dq, const void* dk,
                                  const void* dv, DType dt, const float* cos, const float* sin, int64_t rows,
                                  int64_t P, int64_t H, int64_t Dn, int64_t Dr, int64_t Dv, cudaStream_t stream) {
  const int64_t total = rows * (H * (2 * Dn + Dr + Dv) + Dr);
  if (total == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    mla_backward_kernel<E><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<E*>(dq_proj), static_cast<E*>(dkv_up), static_cast<E*>(dk_pe), static_cast<const E*>(dq),
        static_cast<const E*>(dk), static_cast<const E*>(dv), cos, sin, rows, P, H, Dn, Dr, Dv);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

// ---- per-token tables ---------------------------------------------------------------------
namespace {

__global__ void rope_gather_kernel(float* cos_out, float* sin_out, const float* cos_table, const float* sin_table,
                                   const int32_t* positions, int64_t N, int64_t P, int64_t half) {
  const int64_t total = N * half;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = i / half, c = i % half;
    const int64_t p = positions[n];
    const bool ok = p >= 0 && p < P;
    cos_out[i] = ok ? cos_table[p * half + c] : __int_as_float(0x7fc00000);
    sin_out[i] = ok ? sin_table[p * half + c] : __int_as_float(0x7fc00000);
  }
}

}  // namespace

void launch_rope_gather_tables(float* cos_out, float* sin_out, const float* cos_table, const float* sin_table,
                               const int32_t* positions, int64_t N, int64_t P, int64_t half, cudaStream_t stream) {
  if (N * half == 0) return;
  rope_gather_kernel<<<grid_for(N * half, kThreads), kThreads, 0, stream>>>(cos_out, sin_out, cos_table, sin_table,
                                                                           positions, N, P, half);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

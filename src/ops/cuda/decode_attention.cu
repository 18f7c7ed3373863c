// Decode attention kernels (see decode_attention.h). Lane l of a warp holds head dims
// l, l+32, ... (at most 8 per lane: D <= 256); the warp walks the cached keys of its
// sequence with an online softmax in fp32, as the plain training kernel does per row.
#include "ops/cuda/decode_attention.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::ops::cuda {

namespace {

using ::primus::cuda::ceil_div;
using ::primus::cuda::from_f32;
using ::primus::cuda::grid_for;
using ::primus::cuda::to_f32;
using ::primus::cuda::warp_sum;

constexpr int kMaxPerLane = static_cast<int>(kDecodeAttentionMaxHeadDim / 32);
constexpr int kWarpsPerBlock = 4;

// One thread per element of k_new/v_new (B, Hkv*D).
template <typename T>
__global__ void kv_append_kernel(T* k_cache, T* v_cache, const T* k_new, const T* v_new, const int32_t* positions,
                                 int64_t B, int64_t Lmax, int64_t row) {
  const int64_t n = B * row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / row, e = i % row;
    const int64_t dst = (b * Lmax + positions[b]) * row + e;
    k_cache[dst] = k_new[i];
    v_cache[dst] = v_new[i];
  }
}

template <typename T>
__global__ void decode_attention_kernel(T* out, const T* q, const T* k_cache, const T* v_cache,
                                        const int32_t* positions, int64_t B, int64_t Lmax, int Hq, int Hkv, int D,
                                        float scale) {
  const int64_t bh = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (bh >= B * Hq) return;
  const int64_t b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
  const int64_t row = static_cast<int64_t>(Hkv) * D;
  const T* qp = q + bh * D;
  float qr[kMaxPerLane], o[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int dd = lane + 32 * i;
    qr[i] = dd < D ? to_f32<T>(qp[dd]) : 0.f;
    o[i] = 0.f;
  }
  const T* K = k_cache + b * Lmax * row + g * D;
  const T* V = v_cache + b * Lmax * row + g * D;
  const int64_t n = static_cast<int64_t>(positions[b]) + 1;
  float m = -INFINITY, l = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const T* kp = K + j * row;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int dd = lane + 32 * i;
      if (dd < D) s += qr[i] * to_f32<T>(kp[dd]);
    }
    s = warp_sum(s) * scale;
    const float mn = fmaxf(m, s);
    const float corr = __expf(m - mn), p = __expf(s - mn);
    l = l * corr + p;
    m = mn;
    const T* vp = V + j * row;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int dd = lane + 32 * i;
      if (dd < D) o[i] = o[i] * corr + p * to_f32<T>(vp[dd]);
    }
  }
  T* op = out + bh * D;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int dd = lane + 32 * i;
    if (dd < D) op[dd] = from_f32<T>(o[i] / l);
  }
}

}  // namespace

void launch_kv_append(void* k_cache, void* v_cache, const void* k_new, const void* v_new, const int32_t* positions,
                      DType dt, int64_t B, int64_t Lmax, int64_t Hkv, int64_t D, cudaStream_t stream) {
  const int64_t row = Hkv * D;
  if (B * row == 0) return;
  constexpr int kThreads = 256;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    kv_append_kernel<E><<<grid_for(B * row, kThreads), kThreads, 0, stream>>>(
        static_cast<E*>(k_cache), static_cast<E*>(v_cache), static_cast<const E*>(k_new),
        static_cast<const E*>(v_new), positions, B, Lmax, row);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_decode_attention(void* out, const void* q, const void* k_cache, const void* v_cache,
                             const int32_t* positions, DType dt, int64_t B, int64_t Lmax, int64_t Hq, int64_t Hkv,
                             int64_t D, float scale, cudaStream_t stream) {
  PRIMUS_CHECK(D > 0 && D <= kDecodeAttentionMaxHeadDim, "decode attention (CUDA): head dim {} must be in [1, {}]", D,
               kDecodeAttentionMaxHeadDim);
  PRIMUS_CHECK(Hkv > 0 && Hq % Hkv == 0, "decode attention (CUDA): {} query heads, {} kv heads", Hq, Hkv);
  const int64_t rows = B * Hq;
  if (rows == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    decode_attention_kernel<E><<<static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock)), 32 * kWarpsPerBlock, 0,
                                 stream>>>(static_cast<E*>(out), static_cast<const E*>(q),
                                           static_cast<const E*>(k_cache), static_cast<const E*>(v_cache), positions,
                                           B, Lmax, static_cast<int>(Hq), static_cast<int>(Hkv),
                                           static_cast<int>(D), scale);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::ops::cuda

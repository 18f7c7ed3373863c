// Plain attention (see attention_simple.h). Lane l of a warp holds dims l, l+32, ... of its row
// (at most 8 per lane: head dims <= 256). With segments, query t of row b sees the keys
// [first of its document, t] (causal) or its whole document: two binary searches on the
// row's non-decreasing segment ids per query, then the same loop over that key interval.
#include "ops/cuda/attention_simple.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kMaxPerLane = static_cast<int>(kSimpleAttentionMaxHeadDim / 32);
constexpr int kWarpsPerBlock = 4;

struct Dims {
  int T, Hq, Hkv, Dqk, Dv;
  bool causal;
  float scale;
};

// Row index of (b, t, h) in a (B,T,H,D) tensor, in units of rows.
__device__ __forceinline__ int64_t row_of(int64_t b, int64_t t, int64_t h, int64_t T, int64_t H) {
  return (b * T + t) * H + h;
}

// The keys [begin, end) visible to query t (segments: the row's ids, or null for all of [0, T)).
__device__ __forceinline__ void key_range(const int32_t* seg, int64_t t, const Dims& d, int64_t& begin,
                                          int64_t& end) {
  begin = 0;
  end = d.causal ? t + 1 : d.T;
  if (!seg) return;
  const int32_t s = seg[t];
  int64_t lo = 0, hi = t;  // first index in [0, t] with seg == s (seg[t] == s)
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (seg[mid] < s) lo = mid + 1;
    else hi = mid;
  }
  begin = lo;
  if (!d.causal) {
    lo = t + 1, hi = d.T;  // first index after t with seg > s
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (seg[mid] <= s) lo = mid + 1;
      else hi = mid;
    }
    end = lo;
  }
}

template <typename T>
__global__ void simple_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, const int32_t* seg,
                                      int64_t B, Dims d) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + (threadIdx.x >> 5);  // (b, h, t) flat
  const int lane = threadIdx.x & 31;
  if (row >= B * d.Hq * d.T) return;
  const int64_t t = row % d.T, h = (row / d.T) % d.Hq, b = row / (static_cast<int64_t>(d.T) * d.Hq);
  const int64_t hk = h / (d.Hq / d.Hkv);
  float qr[kMaxPerLane], o[kMaxPerLane];
  const T* qp = q + row_of(b, t, h, d.T, d.Hq) * d.Dqk;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int dd = lane + 32 * i;
    qr[i] = dd < d.Dqk ? to_f32<T>(qp[dd]) : 0.f;
    o[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  int64_t kv_begin, kv_end;
  key_range(seg ? seg + b * d.T : nullptr, t, d, kv_begin, kv_end);
  for (int64_t j = kv_begin; j < kv_end; ++j) {
    const T* kp = k + row_of(b, j, hk, d.T, d.Hkv) * d.Dqk;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int dd = lane + 32 * i;
      if (dd < d.Dqk) s += qr[i] * to_f32<T>(kp[dd]);
    }
    s = warp_sum(s) * d.scale;
    const float mn = fmaxf(m, s);
    const float corr = __expf(m - mn), p = __expf(s - mn);
    l = l * corr + p;
    m = mn;
    const T* vp = v + row_of(b, j, hk, d.T, d.Hkv) * d.Dv;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int dd = lane + 32 * i;
      if (dd < d.Dv) o[i] = o[i] * corr + p * to_f32<T>(vp[dd]);
    }
  }
  T* op = out + row_of(b, t, h, d.T, d.Hq) * d.Dv;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int dd = lane + 32 * i;
    if (dd < d.Dv) op[dd] = from_f32<T>(o[i] / l);
  }
  if (lane == 0) lse[(b * d.Hq + h) * d.T + t] = m + __logf(l);
}

// One warp per (b, h, t) query row: dq written directly; dk/dv accumulated in fp32 with atomics.
template <typename T>
__global__ void simple_backward_kernel(T* dq, float* dk_acc, float* dv_acc, const T* dout, const T* q, const T* k,
                                       const T* v, const T* out, const float* lse, const int32_t* seg, int64_t B,
                                       Dims d) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= B * d.Hq * d.T) return;
  const int64_t t = row % d.T, h = (row / d.T) % d.Hq, b = row / (static_cast<int64_t>(d.T) * d.Hq);
  const int64_t hk = h / (d.Hq / d.Hkv);
  const int64_t qrow = row_of(b, t, h, d.T, d.Hq);
  float qr[kMaxPerLane], dor[kMaxPerLane], dqr[kMaxPerLane];
  float delta = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int dd = lane + 32 * i;
    qr[i] = dd < d.Dqk ? to_f32<T>(q[qrow * d.Dqk + dd]) : 0.f;
    dor[i] = dd < d.Dv ? to_f32<T>(dout[qrow * d.Dv + dd]) : 0.f;
    if (dd < d.Dv) delta += dor[i] * to_f32<T>(out[qrow * d.Dv + dd]);
    dqr[i] = 0.f;
  }
  delta = warp_sum(delta);
  const float L = lse[(b * d.Hq + h) * d.T + t];
  int64_t kv_begin, kv_end;
  key_range(seg ? seg + b * d.T : nullptr, t, d, kv_begin, kv_end);
  for (int64_t j = kv_begin; j < kv_end; ++j) {
    const int64_t krow = row_of(b, j, hk, d.T, d.Hkv);
    const T* kp = k + krow * d.Dqk;
    const T* vp = v + krow * d.Dv;
    float s = 0.f, dp = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int dd = lane + 32 * i;
      if (dd < d.Dqk) s += qr[i] * to_f32<T>(kp[dd]);
      if (dd < d.Dv) dp += dor[i] * to_f32<T>(vp[dd]);
    }
    s = warp_sum(s) * d.scale;
    dp = warp_sum(dp);
    const float p = __expf(s - L);
    const float ds = p * (dp - delta);  // gradient w.r.t. the scaled score
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int dd = lane + 32 * i;
      if (dd < d.Dqk) {
        const float kv = to_f32<T>(kp[dd]);
        dqr[i] += ds * kv;
        atomicAdd(dk_acc + krow * d.Dqk + dd, ds * d.scale * qr[i]);
      }
      if (dd < d.Dv) atomicAdd(dv_acc + krow * d.Dv + dd, p * dor[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int dd = lane + 32 * i;
    if (dd < d.Dqk) dq[qrow * d.Dqk + dd] = from_f32<T>(dqr[i] * d.scale);
  }
}

template <typename T>
__global__ void cast_from_f32_kernel(T* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(src[i]);
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

void check_dims(int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv) {
  PRIMUS_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: {} query heads not a multiple of {} kv heads", Hq, Hkv);
  PRIMUS_CHECK(Dqk <= kSimpleAttentionMaxHeadDim && Dv <= kSimpleAttentionMaxHeadDim,
               "attention: head dims {}/{} exceed the CUDA kernel's limit of {}", Dqk, Dv, kSimpleAttentionMaxHeadDim);
}

}  // namespace

void launch_attention_simple_forward(void* out, float* lse, const void* q, const void* k, const void* v, DType dt,
                                     int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv,
                                     float scale, bool causal, cudaStream_t stream, const int32_t* segments) {
  check_dims(Hq, Hkv, Dqk, Dv);
  const int64_t rows = B * Hq * T;
  if (rows == 0) return;
  const Dims d{static_cast<int>(T), static_cast<int>(Hq), static_cast<int>(Hkv), static_cast<int>(Dqk),
               static_cast<int>(Dv), causal, scale};
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    simple_forward_kernel<E><<<static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock)), 32 * kWarpsPerBlock, 0, stream>>>(
        static_cast<E*>(out), lse, static_cast<const E*>(q), static_cast<const E*>(k), static_cast<const E*>(v), segments,
        B, d);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

size_t attention_simple_backward_workspace_bytes(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dqk,
                                                 int64_t Dv) {
  return align256(static_cast<size_t>(B * T * Hkv * Dqk) * 4) + align256(static_cast<size_t>(B * T * Hkv * Dv) * 4);
}

void launch_attention_simple_backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                                      const void* v, const void* out, const float* lse, DType dt, int64_t B, int64_t T,
                                      int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv, float scale, bool causal,
                                      void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                      const int32_t* segments) {
  check_dims(Hq, Hkv, Dqk, Dv);
  PRIMUS_CHECK(workspace_bytes >= attention_simple_backward_workspace_bytes(B, T, Hq, Hkv, Dqk, Dv),
               "attention backward: workspace too small");
  const int64_t rows = B * Hq * T;
  if (rows == 0) return;
  float* dk_acc = static_cast<float*>(workspace);
  float* dv_acc = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                           align256(static_cast<size_t>(B * T * Hkv * Dqk) * 4));
  PRIMUS_CUDA_CHECK(cudaMemsetAsync(dk_acc, 0, static_cast<size_t>(B * T * Hkv * Dqk) * 4, stream));
  PRIMUS_CUDA_CHECK(cudaMemsetAsync(dv_acc, 0, static_cast<size_t>(B * T * Hkv * Dv) * 4, stream));
  const Dims d{static_cast<int>(T), static_cast<int>(Hq), static_cast<int>(Hkv), static_cast<int>(Dqk),
               static_cast<int>(Dv), causal, scale};
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    simple_backward_kernel<E><<<static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock)), 32 * kWarpsPerBlock, 0, stream>>>(
        static_cast<E*>(dq), dk_acc, dv_acc, static_cast<const E*>(dout), static_cast<const E*>(q),
        static_cast<const E*>(k), static_cast<const E*>(v), static_cast<const E*>(out), lse, segments, B, d);
    PRIMUS_CUDA_LAUNCH_CHECK();
    const int64_t nk = B * T * Hkv * Dqk, nv = B * T * Hkv * Dv;
    cast_from_f32_kernel<E><<<grid_for(nk, 256), 256, 0, stream>>>(static_cast<E*>(dk), dk_acc, nk);
    cast_from_f32_kernel<E><<<grid_for(nv, 256), 256, 0, stream>>>(static_cast<E*>(dv), dv_acc, nv);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

// Decode attention kernels (see decode_attention.h).
//
// GQA split-K kernel (head dims whose 16-byte vectors tile a warp: D = LPK x (16 / sizeof(T))
// with LPK lanes per key in {2, 4, 8, 16, 32}, e.g. bf16 D 16..256, fp32 D 8..128): one CTA
// per (key range, kv head, sequence) reads each cached key and value of its range once for all
// the query heads of that kv head (up to MAXH per CTA). Each group of LPK lanes takes one key at
// a time (one 16-byte vector per lane), the dot products are summed over the group with
// shuffles, and every lane keeps an online softmax (fp32, base 2: log2(e) is folded into the
// scale) per head. The groups of the CTA are merged in shared memory; with several key ranges
// (splits, chosen to fill the GPU at small batch x heads) each writes (o, m, l) to a workspace
// and a combine kernel merges them: out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
//
// Fallback (other head dims, unaligned tensors): one warp per (b, h); lane l holds head dims
// l, l+32, ... (at most 8 per lane: D <= 256); the warp walks the cached keys of its sequence
// with an online softmax in fp32, as the plain training kernel does per row.
#include "ops/cuda/decode_attention.h"

#include <algorithm>
#include <cstdint>

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
constexpr unsigned kFull = 0xffffffffu;
constexpr int kGqaWarps = 4;
constexpr int kGqaThreads = 32 * kGqaWarps;
constexpr int kMinKeysPerSplit = 64;
constexpr int kMaxSplits = 64;
constexpr float kLog2e = 1.4426950408889634f;

using ::primus::cuda::load_vec;

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


// See the file comment. Grid (splits, Hkv * head_chunks, B), kGqaThreads threads.
template <typename T, int LPK, int MAXH>
__global__ void __launch_bounds__(kGqaThreads)
    gqa_decode_kernel(T* out, float* part_o, float* part_ml, const T* q, const T* k_cache, const T* v_cache,
                      const int32_t* positions, int64_t Lmax, int Hq, int Hkv, int head_chunks, int chunk, int splits,
                      float scale_log2) {
  constexpr int EPL = 16 / static_cast<int>(sizeof(T));  // elements per lane: one 16-byte vector
  constexpr int D = LPK * EPL;
  constexpr int KPW = 32 / LPK;          // keys a warp takes at once
  constexpr int NG = kGqaWarps * KPW;    // lane groups (keys in flight) of the CTA
  __shared__ float sm_o[MAXH][NG * D];
  __shared__ float sm_m[MAXH][NG], sm_l[MAXH][NG];

  const int split = blockIdx.x;
  const int g = blockIdx.y / head_chunks, hc = blockIdx.y % head_chunks;
  const int64_t b = blockIdx.z;
  const int group = Hq / Hkv;
  const int h0 = g * group + hc * MAXH;
  const int nh = min(MAXH, group - hc * MAXH);  // the same for the whole CTA
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int slot = lane / LPK, sub = lane % LPK;
  const int kg = warp * KPW + slot;
  const int n = positions[b] + 1;  // keys 0..positions[b]
  const int j0 = split * chunk, j1 = min(n, j0 + chunk);

  float qv[MAXH][EPL], o[MAXH][EPL], m[MAXH], l[MAXH];
#pragma unroll
  for (int hh = 0; hh < MAXH; ++hh) {
    m[hh] = -INFINITY;
    l[hh] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      o[hh][e] = 0.f;
      qv[hh][e] = 0.f;
    }
    if (hh < nh) {
      load_vec<T, EPL>(qv[hh], q + (b * Hq + h0 + hh) * D + sub * EPL);
#pragma unroll
      for (int e = 0; e < EPL; ++e) qv[hh][e] *= scale_log2;
    }
  }
  const int64_t row = static_cast<int64_t>(Hkv) * D;
  const T* K = k_cache + b * Lmax * row + static_cast<int64_t>(g) * D + sub * EPL;
  const T* V = v_cache + b * Lmax * row + static_cast<int64_t>(g) * D + sub * EPL;
  // `base` is the same for the 32 lanes of a warp: the shuffles below see every lane.
  // Two keys per lane group and iteration, both loaded before either is used (more loads in
  // flight per warp).
  for (int base = j0 + warp * KPW; base < j1; base += 2 * NG) {
    float kv[2][EPL], vv[2][EPL];
    bool valid[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int j = base + u * NG + slot;
      valid[u] = j < j1;
      if (valid[u]) {
        load_vec<T, EPL>(kv[u], K + j * row);
        load_vec<T, EPL>(vv[u], V + j * row);
      } else {
#pragma unroll
        for (int e = 0; e < EPL; ++e) kv[u][e] = vv[u][e] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
#pragma unroll
      for (int hh = 0; hh < MAXH; ++hh) {
        if (hh < nh) {
          float s = 0.f;
#pragma unroll
          for (int e = 0; e < EPL; ++e) s += qv[hh][e] * kv[u][e];
#pragma unroll
          for (int off = LPK / 2; off > 0; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
          if (valid[u]) {
            const float mn = fmaxf(m[hh], s);
            const float corr = exp2f(m[hh] - mn), p = exp2f(s - mn);
            l[hh] = l[hh] * corr + p;
#pragma unroll
            for (int e = 0; e < EPL; ++e) o[hh][e] = o[hh][e] * corr + p * vv[u][e];
            m[hh] = mn;
          }
        }
      }
    }
  }
#pragma unroll
  for (int hh = 0; hh < MAXH; ++hh) {
    if (hh < nh) {
#pragma unroll
      for (int e = 0; e < EPL; ++e) sm_o[hh][kg * D + sub * EPL + e] = o[hh][e];
      if (sub == 0) {
        sm_m[hh][kg] = m[hh];
        sm_l[hh][kg] = l[hh];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * D; idx += kGqaThreads) {
    const int hh = idx / D, d = idx % D;
    float M = -INFINITY;
    for (int t = 0; t < NG; ++t) M = fmaxf(M, sm_m[hh][t]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {  // groups without keys have m = -inf, l = 0, o = 0
      for (int t = 0; t < NG; ++t) {
        const float w = exp2f(sm_m[hh][t] - M);
        L += sm_l[hh][t] * w;
        O += sm_o[hh][t * D + d] * w;
      }
    }
    const int64_t bh = b * Hq + h0 + hh;
    if (splits == 1) {
      out[bh * D + d] = from_f32<T>(L > 0.f ? O / L : 0.f);
    } else {
      const int64_t ps = bh * splits + split;
      part_o[ps * D + d] = O;
      if (d == 0) {
        part_ml[2 * ps] = M;
        part_ml[2 * ps + 1] = L;
      }
    }
  }
}

// out[bh] = merge of the splits' (o, m, l); one block per (b, h).
template <typename T>
__global__ void gqa_combine_kernel(T* out, const float* part_o, const float* part_ml, int D, int splits) {
  const int64_t bh = blockIdx.x;
  const float* ml = part_ml + bh * splits * 2;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float M = -INFINITY;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, ml[2 * s]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float w = exp2f(ml[2 * s] - M);
        L += ml[2 * s + 1] * w;
        O += part_o[(bh * splits + s) * D + d] * w;
      }
    }
    out[bh * D + d] = from_f32<T>(L > 0.f ? O / L : 0.f);
  }
}

// How the GQA kernel runs a shape: lanes per key (0 = the shape needs the fallback kernel),
// heads per CTA, splits of the keys and keys per split.
struct GqaPlan {
  int lpk = 0, maxh = 8, head_chunks = 1, splits = 1, chunk = 0;
  size_t workspace_bytes = 0;
};

GqaPlan plan_gqa(DType dt, int64_t B, int64_t Lmax, int64_t Hq, int64_t Hkv, int64_t D) {
  GqaPlan p;
  const int64_t epl = 16 / static_cast<int64_t>(dtype_size(dt));
  if (D % epl != 0) return p;
  const int64_t lpk = D / epl;
  if (lpk != 2 && lpk != 4 && lpk != 8 && lpk != 16 && lpk != 32) return p;
  if (Lmax > INT32_MAX / 2 || Hq > INT32_MAX || B > 65535) return p;
  p.lpk = static_cast<int>(lpk);
  const int64_t group = Hq / Hkv;
  p.maxh = group <= 4 ? 4 : 8;
  p.head_chunks = static_cast<int>(ceil_div(group, p.maxh));
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    sms = 132;
  }
  const int64_t ctas = B * Hkv * p.head_chunks;
  int64_t splits = ceil_div(4 * static_cast<int64_t>(sms), ctas);  // ~4 CTAs per SM: loads in flight
  splits = std::min<int64_t>(splits, ceil_div(Lmax, kMinKeysPerSplit));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kMaxSplits));
  const int64_t ng = kGqaWarps * (32 / lpk);
  const int64_t chunk = ceil_div(ceil_div(Lmax, splits), ng) * ng;
  p.splits = static_cast<int>(ceil_div(Lmax, chunk));
  p.chunk = static_cast<int>(chunk);
  if (p.splits > 1) p.workspace_bytes = static_cast<size_t>(B * Hq * p.splits * (D + 2)) * sizeof(float);
  return p;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

size_t decode_attention_workspace_bytes(DType dt, int64_t B, int64_t Lmax, int64_t Hq, int64_t Hkv, int64_t D) {
  if (Hkv <= 0 || Hq % Hkv != 0 || B <= 0 || Lmax <= 0) return 0;
  const GqaPlan p = plan_gqa(dt, B, Lmax, Hq, Hkv, D);
  return p.lpk == 0 ? 0 : p.workspace_bytes;
}

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
                             int64_t D, float scale, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  PRIMUS_CHECK(D > 0 && D <= kDecodeAttentionMaxHeadDim, "decode attention (CUDA): head dim {} must be in [1, {}]", D,
               kDecodeAttentionMaxHeadDim);
  PRIMUS_CHECK(Hkv > 0 && Hq % Hkv == 0, "decode attention (CUDA): {} query heads, {} kv heads", Hq, Hkv);
  const int64_t rows = B * Hq;
  if (rows == 0) return;
  const GqaPlan p = plan_gqa(dt, B, Lmax, Hq, Hkv, D);
  const bool gqa = p.lpk != 0 && aligned16(q) && aligned16(k_cache) && aligned16(v_cache) &&
                   (p.splits == 1 || (workspace != nullptr && workspace_bytes >= p.workspace_bytes));
  if (gqa) {
    float* part_o = p.splits > 1 ? static_cast<float*>(workspace) : nullptr;
    float* part_ml = p.splits > 1 ? part_o + B * Hq * p.splits * D : nullptr;
    const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(Hkv * p.head_chunks),
                    static_cast<unsigned>(B));
    const float scale_log2 = scale * kLog2e;
#define PRIMUS_GQA_LAUNCH(E, LPK, MAXH)                                                                          \
  gqa_decode_kernel<E, LPK, MAXH><<<grid, kGqaThreads, 0, stream>>>(                                             \
      static_cast<E*>(out), part_o, part_ml, static_cast<const E*>(q), static_cast<const E*>(k_cache),          \
      static_cast<const E*>(v_cache), positions, Lmax, static_cast<int>(Hq), static_cast<int>(Hkv), p.head_chunks, \
      p.chunk, p.splits, scale_log2)
#define PRIMUS_GQA_BY_HEADS(E, LPK)          \
  if (p.maxh == 4) PRIMUS_GQA_LAUNCH(E, LPK, 4); \
  else PRIMUS_GQA_LAUNCH(E, LPK, 8)
    PRIMUS_DISPATCH_FLOAT(dt, E, {
      switch (p.lpk) {
        case 2: PRIMUS_GQA_BY_HEADS(E, 2); break;
        case 4: PRIMUS_GQA_BY_HEADS(E, 4); break;
        case 8: PRIMUS_GQA_BY_HEADS(E, 8); break;
        case 16: PRIMUS_GQA_BY_HEADS(E, 16); break;
        default: PRIMUS_GQA_BY_HEADS(E, 32); break;
      }
    });
#undef PRIMUS_GQA_BY_HEADS
#undef PRIMUS_GQA_LAUNCH
    PRIMUS_CUDA_LAUNCH_CHECK();
    if (p.splits > 1) {
      PRIMUS_DISPATCH_FLOAT(dt, E, {
        gqa_combine_kernel<E><<<static_cast<unsigned>(rows), 128, 0, stream>>>(static_cast<E*>(out), part_o, part_ml,
                                                                             static_cast<int>(D), p.splits);
      });
      PRIMUS_CUDA_LAUNCH_CHECK();
    }
    return;
  }
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

// Flash attention forward and backward (see flash_attention.h for the contract).
//
// Forward, one block per (query tile of BR = 16*NW rows, query head, batch); warp w owns query
// rows [16w, 16w+16) of the tile and keeps its Q fragments in registers. Key/value tiles of
// BC = 64 rows stream through shared memory, double-buffered with cp.async. Per tile:
//   S = Q K^T (fp32), scaled into log2 units; masked (causal: key > query; key >= T);
//   online softmax: m' = max(m, rowmax S), P = 2^(S - m'), l = l 2^(m - m') + rowsum P,
//   O = O 2^(m - m') + P V (P rounded to bf16/fp16 for the tensor cores).
// End: O /= l, lse = ln2 * (m + log2 l).
//
// Backward, one block per (key tile of BC = 64 rows, kv head, batch); warp w owns keys
// [16w, 16w+16). For every query head of the kv group and every query tile of BR rows
// (double-buffered Q, dO, lse, Delta):
//   S^T = K Q^T, P^T = exp(S^T*scale - lse)  (masked to 0)
//   dV += P^T dO;  dP^T = V dO^T;  dS^T = P^T (dP^T - Delta)  with Delta = rowsum(dO * O)
//   dK += dS^T Q  (scaled at the end);  dQ += dS K  -> dS^T goes through shared memory and
//   each warp adds its D/NW columns of the tile's dQ into an fp32 buffer with atomics.
// A last kernel writes dq = scale * dq_accum in the input dtype.
//
// Document masks (segments, packed sequences; a template flag, so the plain kernels are
// unchanged): segment ids are non-decreasing along a row, so the queries of a tile span one
// contiguous run of documents and see keys [start of the first query's document, end of the
// last query's document) only (capped by the causal limit). Each forward block finds that
// range with two binary searches on the row's ids and streams only those key tiles; each
// backward block likewise streams only the query tiles of its keys' documents. A warp skips
// a tile whose documents do not meet its own, and applies the per-element id test only on
// tiles that straddle a document boundary; the ids of the streamed tile ride along in shared
// memory.
#include "ops/cuda/flash_attention.h"

#include <tuple>
#include <utility>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/mma_utils.cuh"

namespace primus::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x on the special-function unit (MUFU.EX2, ~2 ulp; 2^-inf = 0), without exp2f's extra range code.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Copies rows [row0, row0 + ROWS) of a (T, stride) matrix (D columns from `base`) into a
// swizzled [ROWS][D] tile; rows >= T are zero-filled.
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile_async(T* tile, const T* base, int64_t stride, int row0, int T_) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < ROWS * kChunks; c += NT) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int row = row0 + r;
    const bool valid = row < T_;
    const T* src = base + static_cast<int64_t>(valid ? row : 0) * stride + col;
    cp_async16(smem_u32(tile + swz<D>(r, col)), src, valid);
  }
}

// Segment ids [row0, row0 + ROWS) of one batch row into shared memory (0 past T).
template <int ROWS, int NT>
__device__ __forceinline__ void load_seg_async(int32_t* dst, const int32_t* srow, int row0, int T_) {
  for (int c = threadIdx.x; c < ROWS; c += NT) {
    const bool valid = row0 + c < T_;
    cp_async4(smem_u32(dst + c), srow + (valid ? row0 + c : 0), valid);
  }
}

// First index in [lo, hi) whose id is >= v (hi if none); ids non-decreasing.
__device__ __forceinline__ int seg_lower_bound(const int32_t* ids, int lo, int hi, int32_t v) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ids[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
// First index in [lo, hi) whose id is > v (hi if none).
__device__ __forceinline__ int seg_upper_bound(const int32_t* ids, int lo, int hi, int32_t v) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ids[mid] <= v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

template <typename T, int D, int NW, int RW, bool SEG>
__global__ void __launch_bounds__(NW * 32)
    flash_fwd_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q, const T* __restrict__ k,
                     const T* __restrict__ v, const int32_t* __restrict__ seg, int T_, int Hq, int Hkv,
                     float scale_log2, bool causal) {
  constexpr int BR = NW * 16 * RW, BC = 64, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BR * D;      // [2][BC][D]
  T* sV = sK + 2 * BC * D;  // [2][BC][D]
  int32_t* sSegK = reinterpret_cast<int32_t*>(sV + 2 * BC * D);  // [2][BC] (SEG only)

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int qb = causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int q0 = qb * BR;
  const int64_t q_stride = static_cast<int64_t>(Hq) * D, kv_stride = static_cast<int64_t>(Hkv) * D;
  const T* qbase = q + static_cast<int64_t>(b) * T_ * q_stride + static_cast<int64_t>(h) * D;
  const T* kbase = k + static_cast<int64_t>(b) * T_ * kv_stride + static_cast<int64_t>(hk) * D;
  const T* vbase = v + static_cast<int64_t>(b) * T_ * kv_stride + static_cast<int64_t>(hk) * D;

  const int32_t* srow = SEG ? seg + static_cast<int64_t>(b) * T_ : nullptr;
  int kv_begin = 0, kv_end = causal ? min(T_, q0 + BR) : T_;
  if constexpr (SEG) {
    // Keys of the documents of queries [q0, q_last]: from the first one's start to the last one's end.
    const int q_last = min(q0 + BR, T_) - 1;
    kv_begin = seg_lower_bound(srow, 0, q0, srow[q0]);
    kv_end = min(kv_end, seg_upper_bound(srow, q_last + 1, T_, srow[q_last]));
  }
  const int n_tiles = (kv_end - kv_begin + BC - 1) / BC;

  load_tile_async<T, D, BR, NT>(sQ, qbase, q_stride, q0, T_);
  load_tile_async<T, D, BC, NT>(sK, kbase, kv_stride, kv_begin, T_);
  load_tile_async<T, D, BC, NT>(sV, vbase, kv_stride, kv_begin, T_);
  if constexpr (SEG) load_seg_async<BC, NT>(sSegK, srow, kv_begin, T_);
  cp_async_commit();

  // Warp w owns rows [warp_row0, warp_row0 + 16*RW): m-tile r covers rows 16r + g and 16r + g + 8.
  uint32_t qf[RW][D / 16][4];
  float o[RW][D / 8][4];
#pragma unroll
  for (int r = 0; r < RW; ++r)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[r][i][0] = o[r][i][1] = o[r][i][2] = o[r][i][3] = 0.f;
  float m[RW][2], l[RW][2];  // running max (scaled, log2 units) and per-thread partial sums
#pragma unroll
  for (int r = 0; r < RW; ++r) m[r][0] = m[r][1] = -INFINITY, l[r][0] = l[r][1] = 0.f;
  const int warp_row0 = q0 + warp * 16 * RW;
  const int row_g = warp_row0 + (lane >> 2);
  // SEG: the ids of this thread's query rows and the id range of the warp's rows (rows past T
  // are clamped to T-1: their outputs are never written).
  int32_t seg_q[RW][2] = {}, warp_seg_lo = 0, warp_seg_hi = 0;
  if constexpr (SEG) {
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int i = 0; i < 2; ++i) seg_q[r][i] = srow[min(row_g + r * 16 + i * 8, T_ - 1)];
    warp_seg_lo = srow[min(warp_row0, T_ - 1)];
    warp_seg_hi = srow[min(warp_row0 + 16 * RW, T_) - 1];
  }

  for (int jt = 0; jt < n_tiles; ++jt) {
    const int buf = jt & 1;
    if (jt + 1 < n_tiles) {
      load_tile_async<T, D, BC, NT>(sK + (buf ^ 1) * BC * D, kbase, kv_stride, kv_begin + (jt + 1) * BC, T_);
      load_tile_async<T, D, BC, NT>(sV + (buf ^ 1) * BC * D, vbase, kv_stride, kv_begin + (jt + 1) * BC, T_);
      if constexpr (SEG) load_seg_async<BC, NT>(sSegK + (buf ^ 1) * BC, srow, kv_begin + (jt + 1) * BC, T_);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (jt == 0) {
#pragma unroll
      for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
          ldsm_x4(qf[r][kk],
                  smem_u32(sQ + swz<D>(warp * 16 * RW + r * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8)));
    }
    const int kv0 = kv_begin + jt * BC;
    // SEG: whether the tile's keys and the warp's queries share documents at all (else the tile
    // contributes nothing to the warp), and whether they all sit in one document (no id test).
    const int32_t* seg_k = sSegK + buf * BC;
    bool seg_skip = false, seg_mask = false;
    if constexpr (SEG) {
      const int32_t key_lo = seg_k[0], key_hi = seg_k[min(BC, T_ - kv0) - 1];
      seg_skip = key_hi < warp_seg_lo || key_lo > warp_seg_hi || warp_row0 >= T_;
      seg_mask = !(key_lo == key_hi && key_lo == warp_seg_lo && warp_seg_lo == warp_seg_hi);
    }
    // Causal: a tile whose first key is after this warp's last query contributes nothing.
    if (!(causal && kv0 > warp_row0 + 16 * RW - 1) && !seg_skip) {
      const T* Ks = sK + buf * BC * D;
      const T* Vs = sV + buf * BC * D;
      float s[RW][BC / 8][4];
#pragma unroll
      for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) s[r][i][0] = s[r][i][1] = s[r][i][2] = s[r][i][3] = 0.f;
      // S = Q K^T: each K fragment feeds all RW m-tiles of the warp.
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int p = 0; p < BC / 16; ++p) {
          uint32_t bf[4];
          ldsm_x4(bf, smem_u32(Ks + swz<D>(p * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 16 + ((lane >> 3) & 1) * 8)));
#pragma unroll
          for (int r = 0; r < RW; ++r) {
            mma_16816<T>(s[r][2 * p], qf[r][kk], bf[0], bf[1]);
            mma_16816<T>(s[r][2 * p + 1], qf[r][kk], bf[2], bf[3]);
          }
        }
      }
      const bool need_mask = (kv0 + BC > T_) || (causal && kv0 + BC - 1 > warp_row0) || seg_mask;
      if (need_mask) {
#pragma unroll
        for (int r = 0; r < RW; ++r)
#pragma unroll
          for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int cl = nt * 8 + (lane & 3) * 2 + (e & 1), col = kv0 + cl;
              const int row = row_g + r * 16 + (e >> 1) * 8;
              if (col >= T_ || (causal && col > row) || (SEG && seg_k[cl] != seg_q[r][e >> 1]))
                s[r][nt][e] = -INFINITY;
            }
      }
      // Online softmax on raw scores: p = 2^(s*scale_log2 - m') with one FFMA + EX2 each.
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
          mx[0] = fmaxf(mx[0], fmaxf(s[r][nt][0], s[r][nt][1]));
          mx[1] = fmaxf(mx[1], fmaxf(s[r][nt][2], s[r][nt][3]));
        }
        float base[2], corr[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
          const float m_new = fmaxf(m[r][i], mx[i] * scale_log2);
          base[i] = m_new == -INFINITY ? 0.f : m_new;
          corr[i] = fast_exp2(m[r][i] - base[i]);
          m[r][i] = m_new;
        }
        float rs[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
          s[r][nt][0] = fast_exp2(fmaf(s[r][nt][0], scale_log2, -base[0]));
          s[r][nt][1] = fast_exp2(fmaf(s[r][nt][1], scale_log2, -base[0]));
          s[r][nt][2] = fast_exp2(fmaf(s[r][nt][2], scale_log2, -base[1]));
          s[r][nt][3] = fast_exp2(fmaf(s[r][nt][3], scale_log2, -base[1]));
          rs[0] += s[r][nt][0] + s[r][nt][1];
          rs[1] += s[r][nt][2] + s[r][nt][3];
        }
        l[r][0] = l[r][0] * corr[0] + rs[0];
        l[r][1] = l[r][1] * corr[1] + rs[1];
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          o[r][dt][0] *= corr[0];
          o[r][dt][1] *= corr[0];
          o[r][dt][2] *= corr[1];
          o[r][dt][3] *= corr[1];
        }
      }
      // O += P V: each V fragment feeds all RW m-tiles.
#pragma unroll
      for (int j = 0; j < BC / 16; ++j) {
        uint32_t pa[RW][4];
#pragma unroll
        for (int r = 0; r < RW; ++r) {
          pa[r][0] = pack2<T>(s[r][2 * j][0], s[r][2 * j][1]);
          pa[r][1] = pack2<T>(s[r][2 * j][2], s[r][2 * j][3]);
          pa[r][2] = pack2<T>(s[r][2 * j + 1][0], s[r][2 * j + 1][1]);
          pa[r][3] = pack2<T>(s[r][2 * j + 1][2], s[r][2 * j + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bf[4];
          ldsm_x4_trans(bf, smem_u32(Vs + swz<D>(j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8)));
#pragma unroll
          for (int r = 0; r < RW; ++r) {
            mma_16816<T>(o[r][2 * dp], pa[r], bf[0], bf[1]);
            mma_16816<T>(o[r][2 * dp + 1], pa[r], bf[2], bf[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with `buf` before the next prefetch overwrites it
  }

#pragma unroll
  for (int r = 0; r < RW; ++r) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[r][i] += __shfl_xor_sync(0xffffffffu, l[r][i], 1);
      l[r][i] += __shfl_xor_sync(0xffffffffu, l[r][i], 2);
      const int row = row_g + r * 16 + i * 8;
      if (row >= T_) continue;
      const float inv = l[r][i] > 0.f ? 1.f / l[r][i] : 0.f;
      T* orow = out + (static_cast<int64_t>(b) * T_ + row) * q_stride + static_cast<int64_t>(h) * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const uint32_t packed = pack2<T>(o[r][dt][2 * i] * inv, o[r][dt][2 * i + 1] * inv);
        *reinterpret_cast<uint32_t*>(orow + dt * 8 + (lane & 3) * 2) = packed;
      }
      if ((lane & 3) == 0) lse[(static_cast<int64_t>(b) * Hq + h) * T_ + row] = (m[r][i] + log2f(l[r][i])) * kLn2;
    }
  }
}

// Delta (B,Hq,T) fp32 = rowsum(dout * out) per (b, t, h); also zeroes dq_accum (B,T,Hq,D) rows.
// One warp per (b, t, h) row.
template <typename T>
__global__ void flash_bwd_preprocess_kernel(float* delta, float* dq_accum, const T* dout, const T* out, int64_t B,
                                            int T_, int Hq, int D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= B * T_ * Hq) return;
  const T* dorow = dout + row * D;
  const T* orow = out + row * D;
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) {
    acc += to_f32<T>(dorow[d]) * to_f32<T>(orow[d]);
    if (dq_accum) dq_accum[row * D + d] = 0.f;
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    const int64_t h = row % Hq, bt = row / Hq;
    const int64_t t = bt % T_, bb = bt / T_;
    delta[(bb * Hq + h) * T_ + t] = acc;
  }
}

template <typename T, int D, int NW, int BR, int KW, bool SEG>
__global__ void __launch_bounds__(NW * 32)
    flash_bwd_kernel(T* __restrict__ dk, T* __restrict__ dv, float* __restrict__ dq_accum, const T* __restrict__ q,
                     const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
                     const float* __restrict__ lse, const float* __restrict__ delta, const int32_t* __restrict__ seg,
                     int T_, int Hq, int Hkv, float scale_log2, float scale, bool causal) {
  constexpr int BC = NW * 16 * KW, NT = NW * 32;  // KW key m-tiles (16 keys each) per warp
  constexpr int DS_STRIDE = BR + 8;  // padded rows of the dS^T tile: conflict-free ldmatrix
  // dQ tile (BR x D) split over the warps: WG_M row groups x WG_N column groups of 16-column blocks.
  constexpr int MT = BR / 16, NB = D / 16;
  constexpr int WG_N = NW < NB ? NW : NB, WG_M = NW / WG_N;
  constexpr int DQ_MT = MT / WG_M, DQ_NB = NB / WG_N;
  static_assert(WG_M * WG_N == NW && DQ_MT * WG_M == MT && DQ_NB * WG_N == NB, "dQ work must split evenly");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BC * D;
  T* sQ = sV + BC * D;      // [2][BR][D]
  T* sdO = sQ + 2 * BR * D;  // [2][BR][D]
  T* sdS = sdO + 2 * BR * D;  // [BC][DS_STRIDE]
  float* sL = reinterpret_cast<float*>(sdS + BC * DS_STRIDE);  // [2][BR]
  float* sDelta = sL + 2 * BR;                                   // [2][BR]
  int32_t* sSegQ = reinterpret_cast<int32_t*>(sDelta + 2 * BR);  // [2][BR] (SEG only)

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kb = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int j0 = kb * BC;
  const int group = Hq / Hkv;
  // Query rows [q_begin, q_end) that can see this block's keys.
  int q_begin = causal ? j0 / BR * BR : 0, q_end = T_;
  const int32_t* srow = SEG ? seg + static_cast<int64_t>(b) * T_ : nullptr;
  if constexpr (SEG) {
    // The documents of keys [j0, j_last]: queries from the first one's start (causal: from j0)
    // to the last one's end.
    const int j_last = min(j0 + BC, T_) - 1;
    q_begin = causal ? j0 : seg_lower_bound(srow, 0, j0, srow[j0]);
    q_end = seg_upper_bound(srow, j_last + 1, T_, srow[j_last]);
  }
  const int tiles_per_head = (q_end - q_begin + BR - 1) / BR;
  const int n_iters = group * tiles_per_head;
  const int64_t q_stride = static_cast<int64_t>(Hq) * D, kv_stride = static_cast<int64_t>(Hkv) * D;
  const T* kbase = k + static_cast<int64_t>(b) * T_ * kv_stride + static_cast<int64_t>(hk) * D;
  const T* vbase = v + static_cast<int64_t>(b) * T_ * kv_stride + static_cast<int64_t>(hk) * D;

  auto issue_tile = [&](int it, int buf) {
    const int h = hk * group + it / tiles_per_head;
    const int i0 = q_begin + (it % tiles_per_head) * BR;
    const T* qb = q + static_cast<int64_t>(b) * T_ * q_stride + static_cast<int64_t>(h) * D;
    const T* dob = dout + static_cast<int64_t>(b) * T_ * q_stride + static_cast<int64_t>(h) * D;
    load_tile_async<T, D, BR, NT>(sQ + buf * BR * D, qb, q_stride, i0, T_);
    load_tile_async<T, D, BR, NT>(sdO + buf * BR * D, dob, q_stride, i0, T_);
    const float* lrow = lse + (static_cast<int64_t>(b) * Hq + h) * T_;
    const float* drow = delta + (static_cast<int64_t>(b) * Hq + h) * T_;
    for (int c = threadIdx.x; c < BR; c += NT) {
      const bool valid = i0 + c < T_;
      cp_async4(smem_u32(sL + buf * BR + c), lrow + (valid ? i0 + c : 0), valid);
      cp_async4(smem_u32(sDelta + buf * BR + c), drow + (valid ? i0 + c : 0), valid);
    }
    if constexpr (SEG) load_seg_async<BR, NT>(sSegQ + buf * BR, srow, i0, T_);
  };

  load_tile_async<T, D, BC, NT>(sK, kbase, kv_stride, j0, T_);
  load_tile_async<T, D, BC, NT>(sV, vbase, kv_stride, j0, T_);
  cp_async_commit();
  if (n_iters > 0) issue_tile(0, 0);
  cp_async_commit();

  float dk_acc[KW][D / 8][4], dv_acc[KW][D / 8][4];
#pragma unroll
  for (int r = 0; r < KW; ++r)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      dk_acc[r][i][0] = dk_acc[r][i][1] = dk_acc[r][i][2] = dk_acc[r][i][3] = 0.f;
      dv_acc[r][i][0] = dv_acc[r][i][1] = dv_acc[r][i][2] = dv_acc[r][i][3] = 0.f;
    }
  const int wrow0 = warp * 16 * KW;         // this warp's first key row in the block
  const int key_w = j0 + wrow0;             // ... as a sequence position
  const int key_g = key_w + (lane >> 2);    // this thread's keys: key_g + 16r (+ 8)
  // SEG: ids of this thread's keys and the id range of the warp's keys (clamped to T-1; keys
  // past T are masked anyway).
  int32_t seg_key[KW][2] = {}, warp_seg_lo = 0, warp_seg_hi = 0;
  if constexpr (SEG) {
#pragma unroll
    for (int r = 0; r < KW; ++r)
#pragma unroll
      for (int i = 0; i < 2; ++i) seg_key[r][i] = srow[min(key_g + r * 16 + i * 8, T_ - 1)];
    warp_seg_lo = srow[min(key_w, T_ - 1)];
    warp_seg_hi = srow[min(key_w + 16 * KW, T_) - 1];
  }

  for (int it = 0; it < n_iters; ++it) {
    const int buf = it & 1;
    const int h = hk * group + it / tiles_per_head;
    const int i0 = q_begin + (it % tiles_per_head) * BR;
    if (it + 1 < n_iters) issue_tile(it + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* Qs = sQ + buf * BR * D;
    const T* dOs = sdO + buf * BR * D;
    const float* Ls = sL + buf * BR;
    const float* Ds = sDelta + buf * BR;

    const int32_t* Ss = sSegQ + buf * BR;
    // SEG: skip when the tile's queries and the warp's keys share no document; test ids per
    // element only when they are not all in one document.
    bool seg_skip = false, seg_mask = false;
    if constexpr (SEG) {
      const int32_t q_lo = Ss[0], q_hi = Ss[min(BR, T_ - i0) - 1];
      seg_skip = q_hi < warp_seg_lo || q_lo > warp_seg_hi || key_w >= T_;
      seg_mask = !(q_lo == q_hi && q_lo == warp_seg_lo && warp_seg_lo == warp_seg_hi);
    }
    // Causal: if every query of the tile precedes this warp's first key, P = 0 for the warp.
    const bool active = !(causal && i0 + BR - 1 < key_w) && !seg_skip;
    if (active) {
      float s[KW][BR / 8][4], dp[KW][BR / 8][4];
#pragma unroll
      for (int r = 0; r < KW; ++r)
#pragma unroll
        for (int i = 0; i < BR / 8; ++i) {
          s[r][i][0] = s[r][i][1] = s[r][i][2] = s[r][i][3] = 0.f;
          dp[r][i][0] = dp[r][i][1] = dp[r][i][2] = dp[r][i][3] = 0.f;
        }
      // S^T = K_w Q^T and dP^T = V_w dO^T (16*KW keys x BR queries each); each Q/dO fragment
      // feeds all KW key m-tiles.
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[KW][4], va[KW][4];
#pragma unroll
        for (int r = 0; r < KW; ++r) {
          ldsm_x4(ka[r], smem_u32(sK + swz<D>(wrow0 + r * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8)));
          ldsm_x4(va[r], smem_u32(sV + swz<D>(wrow0 + r * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8)));
        }
#pragma unroll
        for (int p = 0; p < BR / 16; ++p) {
          uint32_t bq[4], bo[4];
          const int rr = p * 16 + (lane & 7) + ((lane >> 4) << 3), c = kk * 16 + ((lane >> 3) & 1) * 8;
          ldsm_x4(bq, smem_u32(Qs + swz<D>(rr, c)));
          ldsm_x4(bo, smem_u32(dOs + swz<D>(rr, c)));
#pragma unroll
          for (int r = 0; r < KW; ++r) {
            mma_16816<T>(s[r][2 * p], ka[r], bq[0], bq[1]);
            mma_16816<T>(s[r][2 * p + 1], ka[r], bq[2], bq[3]);
            mma_16816<T>(dp[r][2 * p], va[r], bo[0], bo[1]);
            mma_16816<T>(dp[r][2 * p + 1], va[r], bo[2], bo[3]);
          }
        }
      }
      // P^T and dS^T = P^T (dP^T - Delta).
#pragma unroll
      for (int r = 0; r < KW; ++r)
#pragma unroll
        for (int nt = 0; nt < BR / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int ql = nt * 8 + (lane & 3) * 2 + (e & 1);
            const int qi = i0 + ql;
            const int key = key_g + r * 16 + (e >> 1) * 8;
            float p = fast_exp2(fmaf(s[r][nt][e], scale_log2, -Ls[ql] * kLog2e));
            if (qi >= T_ || key >= T_ || (causal && key > qi) || (SEG && seg_mask && Ss[ql] != seg_key[r][e >> 1]))
              p = 0.f;
            s[r][nt][e] = p;
            dp[r][nt][e] = p * (dp[r][nt][e] - Ds[ql]);
          }
        }
      // dV += P^T dO and dK += dS^T Q (queries are the reduction dim); each dO/Q fragment feeds
      // all KW key m-tiles.
#pragma unroll
      for (int j = 0; j < BR / 16; ++j) {
        uint32_t pa[KW][4], da[KW][4];
#pragma unroll
        for (int r = 0; r < KW; ++r) {
          pa[r][0] = pack2<T>(s[r][2 * j][0], s[r][2 * j][1]);
          pa[r][1] = pack2<T>(s[r][2 * j][2], s[r][2 * j][3]);
          pa[r][2] = pack2<T>(s[r][2 * j + 1][0], s[r][2 * j + 1][1]);
          pa[r][3] = pack2<T>(s[r][2 * j + 1][2], s[r][2 * j + 1][3]);
          da[r][0] = pack2<T>(dp[r][2 * j][0], dp[r][2 * j][1]);
          da[r][1] = pack2<T>(dp[r][2 * j][2], dp[r][2 * j][3]);
          da[r][2] = pack2<T>(dp[r][2 * j + 1][0], dp[r][2 * j + 1][1]);
          da[r][3] = pack2<T>(dp[r][2 * j + 1][2], dp[r][2 * j + 1][3]);
        }
#pragma unroll
        for (int dd = 0; dd < D / 16; ++dd) {
          uint32_t bo[4], bq[4];
          const int rr = j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c = dd * 16 + (lane >> 4) * 8;
          ldsm_x4_trans(bo, smem_u32(dOs + swz<D>(rr, c)));
          ldsm_x4_trans(bq, smem_u32(Qs + swz<D>(rr, c)));
#pragma unroll
          for (int r = 0; r < KW; ++r) {
            mma_16816<T>(dv_acc[r][2 * dd], pa[r], bo[0], bo[1]);
            mma_16816<T>(dv_acc[r][2 * dd + 1], pa[r], bo[2], bo[3]);
            mma_16816<T>(dk_acc[r][2 * dd], da[r], bq[0], bq[1]);
            mma_16816<T>(dk_acc[r][2 * dd + 1], da[r], bq[2], bq[3]);
          }
        }
      }
      // dS^T rows of this warp into shared memory for the dQ product.
#pragma unroll
      for (int r = 0; r < KW; ++r)
#pragma unroll
        for (int nt = 0; nt < BR / 8; ++nt) {
          const int col = nt * 8 + (lane & 3) * 2;
          const int r0 = wrow0 + r * 16 + (lane >> 2);
          *reinterpret_cast<uint32_t*>(sdS + r0 * DS_STRIDE + col) = pack2<T>(dp[r][nt][0], dp[r][nt][1]);
          *reinterpret_cast<uint32_t*>(sdS + (r0 + 8) * DS_STRIDE + col) = pack2<T>(dp[r][nt][2], dp[r][nt][3]);
        }
    } else {
      for (int idx = lane; idx < 16 * KW * BR / 2; idx += 32) {
        const int r = wrow0 + idx / (BR / 2), c = (idx % (BR / 2)) * 2;
        *reinterpret_cast<uint32_t*>(sdS + r * DS_STRIDE + c) = 0u;
      }
    }
    __syncthreads();
    // dQ (BR x D) += dS (BR x BC) @ K (BC x D); this warp: m-tiles [wm*DQ_MT, +DQ_MT) and
    // 16-column blocks [wn*DQ_NB, +DQ_NB).
    {
      const int wn = warp % WG_N, wm = warp / WG_N;
      float dq[DQ_MT][2 * DQ_NB][4];
#pragma unroll
      for (int a = 0; a < DQ_MT; ++a)
#pragma unroll
        for (int c = 0; c < 2 * DQ_NB; ++c) dq[a][c][0] = dq[a][c][1] = dq[a][c][2] = dq[a][c][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        // Keys past the causal reach of the whole query tile have dS = 0.
        if (causal && j0 + kk * 16 > i0 + BR - 1) break;
        uint32_t bk[DQ_NB][4];
#pragma unroll
        for (int np = 0; np < DQ_NB; ++np)
          ldsm_x4_trans(bk[np], smem_u32(sK + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                     (wn * DQ_NB + np) * 16 + (lane >> 4) * 8)));
#pragma unroll
        for (int mt = 0; mt < DQ_MT; ++mt) {
          uint32_t a[4];
          ldsm_x4_trans(a, smem_u32(sdS + (kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * DS_STRIDE +
                                    (wm * DQ_MT + mt) * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
          for (int np = 0; np < DQ_NB; ++np) {
            mma_16816<T>(dq[mt][2 * np], a, bk[np][0], bk[np][1]);
            mma_16816<T>(dq[mt][2 * np + 1], a, bk[np][2], bk[np][3]);
          }
        }
      }
      float* dqb = dq_accum + static_cast<int64_t>(b) * T_ * q_stride + static_cast<int64_t>(h) * D;
#pragma unroll
      for (int mt = 0; mt < DQ_MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int qi = i0 + (wm * DQ_MT + mt) * 16 + (lane >> 2) + r * 8;
          if (qi >= T_) continue;
#pragma unroll
          for (int nt = 0; nt < 2 * DQ_NB; ++nt) {
            const int col = wn * DQ_NB * 16 + nt * 8 + (lane & 3) * 2;
            atomicAdd(reinterpret_cast<float2*>(dqb + static_cast<int64_t>(qi) * q_stride + col),
                      make_float2(dq[mt][nt][2 * r], dq[mt][nt][2 * r + 1]));
          }
        }
      }
    }
    __syncthreads();  // sdS and `buf` are reused by the next iteration
  }

#pragma unroll
  for (int r = 0; r < KW; ++r) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int key = key_g + r * 16 + i * 8;
      if (key >= T_) continue;
      T* dkrow = dk + (static_cast<int64_t>(b) * T_ + key) * kv_stride + static_cast<int64_t>(hk) * D;
      T* dvrow = dv + (static_cast<int64_t>(b) * T_ + key) * kv_stride + static_cast<int64_t>(hk) * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int col = dt * 8 + (lane & 3) * 2;
        *reinterpret_cast<uint32_t*>(dkrow + col) =
            pack2<T>(dk_acc[r][dt][2 * i] * scale, dk_acc[r][dt][2 * i + 1] * scale);
        *reinterpret_cast<uint32_t*>(dvrow + col) = pack2<T>(dv_acc[r][dt][2 * i], dv_acc[r][dt][2 * i + 1]);
      }
    }
  }
}

template <typename T>
__global__ void dq_convert_kernel(T* dq, const float* dq_accum, int64_t n, float scale) {
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * 4; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x * 4) {
    const float4 a = *reinterpret_cast<const float4*>(dq_accum + i);
    *reinterpret_cast<uint2*>(dq + i) = make_uint2(pack2<T>(a.x * scale, a.y * scale), pack2<T>(a.z * scale, a.w * scale));
  }
}

template <typename E, int D, int NW, int RW, bool SEG>
void run_fwd_impl(void* out, float* lse, const void* q, const void* k, const void* v, const int32_t* seg, int64_t B,
                  int64_t T, int64_t Hq, int64_t Hkv, float scale, bool causal, cudaStream_t stream) {
  constexpr int BR = NW * 16 * RW, BC = 64;
  static constexpr size_t smem =
      static_cast<size_t>(BR + 4 * BC) * D * sizeof(E) + (SEG ? 2 * BC * sizeof(int32_t) : 0);
  static const bool configured = [] {
    PRIMUS_CUDA_CHECK(cudaFuncSetAttribute(flash_fwd_kernel<E, D, NW, RW, SEG>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return true;
  }();
  (void)configured;
  const dim3 grid(static_cast<unsigned>(ceil_div(T, BR)), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  flash_fwd_kernel<E, D, NW, RW, SEG><<<grid, NW * 32, smem, stream>>>(
      static_cast<E*>(out), lse, static_cast<const E*>(q), static_cast<const E*>(k), static_cast<const E*>(v), seg,
      static_cast<int>(T), static_cast<int>(Hq), static_cast<int>(Hkv), scale * kLog2e, causal);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

template <typename E, int D, int NW, int RW>
void run_fwd(void* out, float* lse, const void* q, const void* k, const void* v, const int32_t* seg, int64_t B,
             int64_t T, int64_t Hq, int64_t Hkv, float scale, bool causal, cudaStream_t stream) {
  if (seg) run_fwd_impl<E, D, NW, RW, true>(out, lse, q, k, v, seg, B, T, Hq, Hkv, scale, causal, stream);
  else run_fwd_impl<E, D, NW, RW, false>(out, lse, q, k, v, nullptr, B, T, Hq, Hkv, scale, causal, stream);
}

// The backward's arguments besides the tiling (one struct: the dispatch below stays readable).
struct BwdArgs {
  void *dk, *dv;
  float* dq_accum;
  const void *q, *k, *v, *dout;
  const float *lse, *delta;
  const int32_t* seg;
  int64_t B, T, Hq, Hkv;
  float scale;
  bool causal;
  cudaStream_t stream;
};

template <typename E, int D, int NW, int BR, int KW, bool SEG>
void run_bwd_impl(const BwdArgs& a) {
  constexpr int BC = NW * 16 * KW;
  static constexpr size_t smem = static_cast<size_t>(2 * BC * D + 4 * BR * D + BC * (BR + 8)) * sizeof(E) +
                                 static_cast<size_t>(4 * BR) * sizeof(float) +
                                 (SEG ? static_cast<size_t>(2 * BR) * sizeof(int32_t) : 0);
  static const bool configured = [] {
    PRIMUS_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_kernel<E, D, NW, BR, KW, SEG>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return true;
  }();
  (void)configured;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.T, BC)), static_cast<unsigned>(a.Hkv), static_cast<unsigned>(a.B));
  flash_bwd_kernel<E, D, NW, BR, KW, SEG><<<grid, NW * 32, smem, a.stream>>>(
      static_cast<E*>(a.dk), static_cast<E*>(a.dv), a.dq_accum, static_cast<const E*>(a.q),
      static_cast<const E*>(a.k), static_cast<const E*>(a.v), static_cast<const E*>(a.dout), a.lse, a.delta, a.seg,
      static_cast<int>(a.T), static_cast<int>(a.Hq), static_cast<int>(a.Hkv), a.scale * kLog2e, a.scale, a.causal);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

template <typename E, int D, int NW, int BR, int KW = 1>
void run_bwd(const BwdArgs& a) {
  if (a.seg) run_bwd_impl<E, D, NW, BR, KW, true>(a);
  else run_bwd_impl<E, D, NW, BR, KW, false>(a);
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

std::vector<FlashConfig> flash_configs(int64_t head_dim) {
  std::vector<FlashConfig> out;
  // Forward and backward tilings are independent; list each forward with the default backward
  // and each backward with the default forward.
  const FlashConfig def{};
  std::vector<std::pair<int, int>> fwd = {{4, 16}, {8, 16}};
  if (head_dim == 64) fwd.push_back({4, 32});
  for (auto [fw, fr] : fwd) out.push_back({fw, fr, def.bwd_warps, def.bwd_rows, def.bwd_keys});
  std::vector<std::tuple<int, int, int>> bwd = {{4, 64, 16}, {4, 32, 16}, {8, 64, 16}, {8, 32, 16}};
  if (head_dim == 64) {
    bwd.push_back({4, 32, 32});
    bwd.push_back({8, 32, 32});
  }
  for (auto [bw, br, bk] : bwd) {
    const FlashConfig c{def.fwd_warps, def.fwd_rows, bw, br, bk};
    bool dup = false;
    for (const auto& o : out)
      dup |= o.fwd_warps == c.fwd_warps && o.fwd_rows == c.fwd_rows && o.bwd_warps == c.bwd_warps &&
             o.bwd_rows == c.bwd_rows && o.bwd_keys == c.bwd_keys;
    if (!dup) out.push_back(c);
  }
  return out;
}

bool flash_attention_supported(DType dt, int64_t d_qk, int64_t d_v) {
  return (dt == DType::BF16 || dt == DType::F16) && d_qk == d_v && (d_qk == 64 || d_qk == 128);
}

void launch_flash_attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, DType dt,
                                    int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, float scale, bool causal,
                                    cudaStream_t stream, FlashConfig cfg, const int32_t* segments) {
  PRIMUS_CHECK(flash_attention_supported(dt, D, D), "flash attention: dtype {} head dim {} not supported",
               dtype_name(dt), D);
  PRIMUS_CHECK(Hkv > 0 && Hq % Hkv == 0, "flash attention: {} query heads not a multiple of {} kv heads", Hq, Hkv);
  if (B * T * Hq == 0) return;
  auto go = [&](auto tag) {
    using E = decltype(tag);
    if (D == 64) {
      if (cfg.fwd_rows == 32) run_fwd<E, 64, 4, 2>(out, lse, q, k, v, segments, B, T, Hq, Hkv, scale, causal, stream);
      else if (cfg.fwd_warps == 8) run_fwd<E, 64, 8, 1>(out, lse, q, k, v, segments, B, T, Hq, Hkv, scale, causal, stream);
      else run_fwd<E, 64, 4, 1>(out, lse, q, k, v, segments, B, T, Hq, Hkv, scale, causal, stream);
    } else {
      if (cfg.fwd_warps == 8) run_fwd<E, 128, 8, 1>(out, lse, q, k, v, segments, B, T, Hq, Hkv, scale, causal, stream);
      else run_fwd<E, 128, 4, 1>(out, lse, q, k, v, segments, B, T, Hq, Hkv, scale, causal, stream);
    }
  };
  if (dt == DType::BF16) go(__nv_bfloat16{});
  else go(__half{});
}

size_t flash_attention_backward_workspace_bytes(int64_t B, int64_t T, int64_t Hq, int64_t D) {
  return align256(static_cast<size_t>(B * T * Hq * D) * sizeof(float)) +
         align256(static_cast<size_t>(B * T * Hq) * sizeof(float));
}

void launch_flash_attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                                     const void* v, const void* out, const float* lse, DType dt, int64_t B, int64_t T,
                                     int64_t Hq, int64_t Hkv, int64_t D, float scale, bool causal, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream, FlashConfig cfg,
                                     const int32_t* segments) {
  PRIMUS_CHECK(flash_attention_supported(dt, D, D), "flash attention backward: dtype {} head dim {} not supported",
               dtype_name(dt), D);
  PRIMUS_CHECK(workspace_bytes >= flash_attention_backward_workspace_bytes(B, T, Hq, D),
               "flash attention backward: workspace of {} bytes, need {}", workspace_bytes,
               flash_attention_backward_workspace_bytes(B, T, Hq, D));
  if (B * T * Hq == 0) return;
  float* dq_accum = static_cast<float*>(workspace);
  float* delta = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                          align256(static_cast<size_t>(B * T * Hq * D) * sizeof(float)));
  const int64_t rows = B * T * Hq;
  auto go = [&](auto tag) {
    using E = decltype(tag);
    flash_bwd_preprocess_kernel<E><<<static_cast<unsigned>(ceil_div(rows, 8)), 256, 0, stream>>>(
        delta, dq_accum, static_cast<const E*>(dout), static_cast<const E*>(out), B, static_cast<int>(T),
        static_cast<int>(Hq), static_cast<int>(D));
    PRIMUS_CUDA_LAUNCH_CHECK();
    // Key tile = bwd_keys * bwd_warps rows, query tile = bwd_rows rows.
    const BwdArgs a{dk, dv, dq_accum, q, k, v, dout, lse, delta, segments, B, T, Hq, Hkv, scale, causal, stream};
    const bool w8 = cfg.bwd_warps == 8, r32 = cfg.bwd_rows == 32;
    if (D == 64 && cfg.bwd_keys == 32) {  // 32 keys per warp: query tiles of 32 rows only (registers)
      if (w8) run_bwd<E, 64, 8, 32, 2>(a);
      else run_bwd<E, 64, 4, 32, 2>(a);
    } else if (D == 64) {
      if (w8 && r32) run_bwd<E, 64, 8, 32>(a);
      else if (w8) run_bwd<E, 64, 8, 64>(a);
      else if (r32) run_bwd<E, 64, 4, 32>(a);
      else run_bwd<E, 64, 4, 64>(a);
    } else {
      if (w8 && r32) run_bwd<E, 128, 8, 32>(a);
      else if (w8) run_bwd<E, 128, 8, 64>(a);
      else if (r32) run_bwd<E, 128, 4, 32>(a);
      else run_bwd<E, 128, 4, 64>(a);
    }
    const int64_t n = rows * D;
    dq_convert_kernel<E><<<grid_for(n / 4, 256), 256, 0, stream>>>(static_cast<E*>(dq), dq_accum, n, scale);
    PRIMUS_CUDA_LAUNCH_CHECK();
  };
  if (dt == DType::BF16) go(__nv_bfloat16{});
  else go(__half{});
}

}  // namespace primus::cuda

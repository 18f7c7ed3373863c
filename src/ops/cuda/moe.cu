// Mixture-of-experts kernels (math: backend.h; reference: ops/cpu/cpu_moe.cpp).
//   Router top-k, aux statistics: one warp per token, the token's E <= 256 scores in registers
//   (E/32 per lane, element i = 32 j + lane in slot j); the top-k by repeated warp arg-max over
//   the total order (score desc, index asc), which is exactly the CPU's partial_sort order. The
//   scores that decide a selection are computed the way the CPU computes them (softmax through
//   a double exp and sum, sigmoid = 1 / (1 + expf(-z)) with expf rounded from a double exp) so
//   the chosen experts agree bit for bit.
//   Router backward, aux backward: one warp per token, strided loops over E (any E).
//   Aux statistics: a block takes a chunk of one group's tokens; each warp sums its tokens in
//   order, the block sums its warps in order into the chunk's partial; a second kernel sums
//   each group's partials in chunk order. Counts are integers until the end: exact.
//   Dispatch plan: CUB stable radix sort of the (expert, pair) keys, so each expert's pairs
//   stay in pair order (for drop_by_probs a first sort by (expert, prob desc) picks the kept
//   ones); segment starts by binary search; one block scan of the per-expert row counts; one
//   thread per output row writes pair_of_row and row_of.
//   Permute / unpermute: grid-stride over (row, 16-byte vector) with the k slots of a token
//   summed in fp32 registers (no atomics); d_probs: one warp per (token, slot) dot product.
#include "ops/cuda/moe.h"

#include <algorithm>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kRouteWarps = 4;  // tokens per block of the routing kernels
constexpr int kAuxWarps = 8;    // warps per aux-statistics block

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// ---- routing helpers ----------------------------------------------------------------------

// sigmoid(z) as the CPU computes it: 1.f / (1.f + expf(-z)), expf correctly rounded (via double).
__device__ __forceinline__ float sigmoid_ref(float z) {
  const float e = static_cast<float>(exp(-static_cast<double>(z)));
  return __fdiv_rn(1.f, __fadd_rn(1.f, e));
}

// One element of the CPU's softmax_row: exp(double(z - max)) / sum, rounded to float.
__device__ __forceinline__ float softmax_ref(float z, float mx, double sum) {
  return static_cast<float>(exp(static_cast<double>(__fsub_rn(z, mx))) / sum);
}

// (v, i) comes before (bv, bi) in the selection order: higher value, ties to the lower index;
// bi < 0 is "nothing yet".
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) {
  return bi < 0 || v > bv || (v == bv && i < bi);
}

// Top-k of the n values held by the warp (v[j] of lane l is element 32 j + l), in selection
// order, into out[0..k) (written by lane 0; may be null). Returns this lane's chosen elements
// as a bit mask over j. Every lane must call it (k <= n).
template <int J>
__device__ unsigned warp_topk(const float (&v)[J], int n, int k, int* out) {
  const int lane = threadIdx.x & 31;
  unsigned taken = 0;
#pragma unroll
  for (int j = 0; j < J; ++j)
    if (j * 32 + lane >= n) taken |= 1u << j;
  const unsigned invalid = taken;
  for (int s = 0; s < k; ++s) {
    float bv = 0.f;
    int bi = -1;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = j * 32 + lane;
      if (!((taken >> j) & 1u) && ranks_before(v[j], i, bv, bi)) {
        bv = v[j];
        bi = i;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFull, bv, o);
      const int oi = __shfl_xor_sync(kFull, bi, o);
      if (oi >= 0 && ranks_before(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (bi >= 0 && (bi & 31) == lane) taken |= 1u << (bi >> 5);
    if (out != nullptr && lane == 0) out[s] = bi;
  }
  return taken & ~invalid;
}

// The CPU's group score: the sum, in selection order, of the `take` best of sel[0..per)
// (take 1: the group's best score, DeepSeek-V2's group_max).
__device__ float group_score(const float* sel, int per, int take) {
  float sum = 0.f, lv = 0.f;
  int li = -1;
  for (int t = 0; t < take; ++t) {
    float bv = 0.f;
    int bi = -1;
    for (int i = 0; i < per; ++i) {
      const float v = sel[i];
      if ((li < 0 || ranks_before(lv, li, v, i)) && ranks_before(v, i, bv, bi)) {
        bv = v;
        bi = i;
      }
    }
    sum = __fadd_rn(sum, bv);
    lv = bv;
    li = bi;
  }
  return sum;
}

// ---- router top-k ------------------------------------------------------------------------

// probs (N,k), indices (N,k) <- logits (N,E), bias (E) or null. One warp per token.
template <int J>
__global__ void __launch_bounds__(kRouteWarps * 32)
    topk_forward_kernel(float* probs, int32_t* indices, const float* logits, const float* bias, int64_t N, int E,
                        MoeRoutingParams r) {
  __shared__ float sm_s[kRouteWarps][kMoeMaxExperts];
  __shared__ float sm_sel[kRouteWarps][kMoeMaxExperts];
  __shared__ int sm_idx[kRouteWarps][kMoeMaxExperts];
  __shared__ unsigned char sm_elig[kRouteWarps][kMoeMaxExperts];
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + w;
  if (t >= N) return;  // whole warps only
  const int k = r.topk;
  const float* zt = logits + t * E;
  float* s_sm = sm_s[w];
  float* sel_sm = sm_sel[w];
  int* idx_sm = sm_idx[w];

  float z[J], sel[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int i = j * 32 + lane;
    z[j] = i < E ? zt[i] : -INFINITY;
  }
  if (!r.sigmoid && r.pre_softmax) {  // s = softmax(z), selected on s
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < J; ++j) mx = fmaxf(mx, z[j]);
    mx = warp_max(mx);
    double se = 0;
#pragma unroll
    for (int j = 0; j < J; ++j)
      if (j * 32 + lane < E) se += exp(static_cast<double>(__fsub_rn(z[j], mx)));
    se = warp_sum(se);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = j * 32 + lane;
      sel[j] = i < E ? softmax_ref(z[j], mx, se) : -INFINITY;
      if (i < E) s_sm[i] = sel[j];
    }
  } else if (!r.sigmoid) {  // selected on z, softmax over the chosen afterwards
#pragma unroll
    for (int j = 0; j < J; ++j) sel[j] = z[j];
  } else {  // s = sigmoid(z), selected on s + bias
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = j * 32 + lane;
      if (i < E) {
        const float s = sigmoid_ref(z[j]);
        s_sm[i] = s;
        sel[j] = __fadd_rn(s, bias != nullptr ? bias[i] : 0.f);
      } else {
        sel[j] = -INFINITY;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < J; ++j)
    if (j * 32 + lane < E) sel_sm[j * 32 + lane] = sel[j];
  __syncwarp();

  if (r.num_groups > 0) {  // only the best group_topk groups stay eligible
    const int G = r.num_groups, per = E / G, take = r.group_max ? 1 : k / r.group_topk;
    float gs[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int g = j * 32 + lane;
      gs[j] = g < G ? group_score(sel_sm + g * per, per, take) : -INFINITY;
    }
    warp_topk<J>(gs, G, r.group_topk, idx_sm);
    for (int g = lane; g < G; g += 32) sm_elig[w][g] = 0;
    __syncwarp();
    for (int j = lane; j < r.group_topk; j += 32) sm_elig[w][idx_sm[j]] = 1;
    __syncwarp();
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = j * 32 + lane;
      if (i < E && !sm_elig[w][i / per]) sel[j] = -INFINITY;
    }
    __syncwarp();  // idx_sm is rewritten below
  }
  warp_topk<J>(sel, E, k, idx_sm);
  __syncwarp();

  float* pt = probs + t * k;
  int32_t* it = indices + t * k;
  if (!r.sigmoid && r.pre_softmax) {
    for (int j = lane; j < k; j += 32) {
      const int i = idx_sm[j];
      it[j] = i;
      pt[j] = s_sm[i] * r.scaling;
    }
  } else if (!r.sigmoid) {  // softmax over the chosen logits (sel_sm holds z)
    float mx = -INFINITY;
    for (int j = lane; j < k; j += 32) mx = fmaxf(mx, sel_sm[idx_sm[j]]);
    mx = warp_max(mx);
    double se = 0;
    for (int j = lane; j < k; j += 32) se += exp(static_cast<double>(__fsub_rn(sel_sm[idx_sm[j]], mx)));
    se = warp_sum(se);
    for (int j = lane; j < k; j += 32) {
      const int i = idx_sm[j];
      it[j] = i;
      pt[j] = softmax_ref(sel_sm[i], mx, se) * r.scaling;
    }
  } else {  // normalised over the chosen when k > 1; the sum in slot order, as the CPU
    float sum = 0.f;
    if (lane == 0)
      for (int j = 0; j < k; ++j) sum = __fadd_rn(sum, s_sm[idx_sm[j]]);
    sum = __shfl_sync(kFull, sum, 0);
    for (int j = lane; j < k; j += 32) {
      const int i = idx_sm[j];
      float p = s_sm[i];
      if (k > 1) p = __fdiv_rn(p, __fadd_rn(sum, 1e-20f));
      it[j] = i;
      pt[j] = p * r.scaling;
    }
  }
}

// d_logits (N,E) written from d_probs (N,k) at the chosen indices. One warp per token.
__global__ void __launch_bounds__(kRouteWarps * 32)
    topk_backward_kernel(float* d_logits, const float* d_probs, const float* logits, const int32_t* indices,
                         int64_t N, int E, MoeRoutingParams r) {
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + w;
  if (t >= N) return;
  const int k = r.topk;
  const float a = r.scaling;
  const float* zt = logits + t * E;
  const int32_t* it = indices + t * k;
  const float* dpt = d_probs + t * k;
  float* dzt = d_logits + t * E;
  if (!r.sigmoid && r.pre_softmax) {  // p_j = a s[i_j], s = softmax(z): dz = s (ds - <ds, s>)
    float mx = -INFINITY;
    for (int i = lane; i < E; i += 32) mx = fmaxf(mx, zt[i]);
    mx = warp_max(mx);
    double se = 0;
    for (int i = lane; i < E; i += 32) se += exp(static_cast<double>(__fsub_rn(zt[i], mx)));
    se = warp_sum(se);
    double dot = 0;
    for (int j = lane; j < k; j += 32)
      dot += static_cast<double>(a * dpt[j]) * softmax_ref(zt[it[j]], mx, se);
    const float fdot = static_cast<float>(warp_sum(dot));
    for (int i = lane; i < E; i += 32) dzt[i] = softmax_ref(zt[i], mx, se) * (0.f - fdot);
    __syncwarp();
    for (int j = lane; j < k; j += 32) {
      const int i = it[j];
      dzt[i] = softmax_ref(zt[i], mx, se) * (a * dpt[j] - fdot);
    }
    return;
  }
  for (int i = lane; i < E; i += 32) dzt[i] = 0.f;
  __syncwarp();
  if (!r.sigmoid) {  // p = a softmax(z[i]): d z[i] = q (dq - <dq, q>), dq = a dp
    float mx = -INFINITY;
    for (int j = lane; j < k; j += 32) mx = fmaxf(mx, zt[it[j]]);
    mx = warp_max(mx);
    double se = 0;
    for (int j = lane; j < k; j += 32) se += exp(static_cast<double>(__fsub_rn(zt[it[j]], mx)));
    se = warp_sum(se);
    double dot = 0;
    for (int j = lane; j < k; j += 32) dot += static_cast<double>(a * dpt[j]) * softmax_ref(zt[it[j]], mx, se);
    const float fdot = static_cast<float>(warp_sum(dot));
    for (int j = lane; j < k; j += 32) {
      const int i = it[j];
      dzt[i] = softmax_ref(zt[i], mx, se) * (a * dpt[j] - fdot);
    }
  } else {  // q_j = sigmoid(z[i_j]); p = a q / (sum q + 1e-20) when k > 1
    float sum = 0.f;
    double dot = 0;
    for (int j = lane; j < k; j += 32) {
      const float q = sigmoid_ref(zt[it[j]]);
      sum += q;
      dot += static_cast<double>(dpt[j]) * q;
    }
    sum = warp_sum(sum);
    const float fdot = static_cast<float>(warp_sum(dot));
    const float S = sum + 1e-20f;
    for (int j = lane; j < k; j += 32) {
      const int i = it[j];
      const float q = sigmoid_ref(zt[i]);
      const float dq = k > 1 ? a * (dpt[j] / S - fdot / (S * S)) : a * dpt[j];
      dzt[i] = dq * q * (1.f - q);
    }
  }
}

// ---- aux statistics ----------------------------------------------------------------------

// Tokens per chunk: a function of N alone (so the summation order is too), about 1024 chunks.
int64_t aux_tokens_per_chunk(int64_t N) {
  int64_t tpc = ceil_div(N, 1024);
  if (tpc < 32) tpc = 32;
  return ceil_div(tpc, kAuxWarps) * kAuxWarps;
}

struct AuxLayout {
  int64_t tpc = 0, cpg = 0, chunks = 0;
  size_t scores = 0, counts = 0, lse = 0, total = 0;  // byte offsets, total size
};

AuxLayout aux_layout(int64_t N, int64_t E, int64_t G) {
  AuxLayout l;
  const int64_t per = N / G;
  l.tpc = aux_tokens_per_chunk(N);
  l.cpg = per > 0 ? ceil_div(per, l.tpc) : 1;
  l.chunks = G * l.cpg;
  l.scores = 0;
  l.counts = align256(static_cast<size_t>(l.chunks * E) * sizeof(float));
  l.lse = l.counts + align256(static_cast<size_t>(l.chunks * E) * sizeof(int));
  l.total = l.lse + align256(static_cast<size_t>(l.chunks) * sizeof(double));
  return l;
}

// One block per chunk (g, c) of group g's tokens: part_scores / part_counts (chunks, E),
// part_lse (chunks).
template <int J>
__global__ void __launch_bounds__(kAuxWarps * 32)
    aux_stats_partial_kernel(float* part_scores, int* part_counts, double* part_lse, const float* logits, int E,
                             int64_t per, int64_t tpc, int64_t cpg, int topk, bool use_sigmoid) {
  __shared__ float sm_s[kAuxWarps][kMoeMaxExperts];
  __shared__ int sm_c[kAuxWarps][kMoeMaxExperts];
  __shared__ double sm_l[kAuxWarps];
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t chunk = blockIdx.x, g = chunk / cpg, c = chunk - g * cpg;
  const int64_t t0 = g * per + c * tpc;
  const int64_t t1 = t0 + tpc < (g + 1) * per ? t0 + tpc : (g + 1) * per;
  float ssum[J];
  int cnt[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    ssum[j] = 0.f;
    cnt[j] = 0;
  }
  double l2 = 0;
  for (int64_t t = t0 + w; t < t1; t += kAuxWarps) {
    const float* zt = logits + t * E;
    float z[J], s[J];
#pragma unroll
    for (int j = 0; j < J; ++j) z[j] = j * 32 + lane < E ? zt[j * 32 + lane] : -INFINITY;
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < J; ++j) mx = fmaxf(mx, z[j]);
    mx = warp_max(mx);
    double se = 0;
#pragma unroll
    for (int j = 0; j < J; ++j)
      if (j * 32 + lane < E) se += exp(static_cast<double>(__fsub_rn(z[j], mx)));
    se = warp_sum(se);
    const float lse = mx + static_cast<float>(log(se));
    l2 += static_cast<double>(lse) * lse;
    if (use_sigmoid) {
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        s[j] = j * 32 + lane < E ? sigmoid_ref(z[j]) : 0.f;
        sum += s[j];
      }
      const float S = __fadd_rn(warp_sum(sum), 1e-20f);
#pragma unroll
      for (int j = 0; j < J; ++j) s[j] = j * 32 + lane < E ? __fdiv_rn(s[j], S) : -INFINITY;
    } else {
#pragma unroll
      for (int j = 0; j < J; ++j) s[j] = j * 32 + lane < E ? softmax_ref(z[j], mx, se) : -INFINITY;
    }
#pragma unroll
    for (int j = 0; j < J; ++j)
      if (j * 32 + lane < E) ssum[j] += s[j];
    const unsigned chosen = warp_topk<J>(s, E, topk, nullptr);
#pragma unroll
    for (int j = 0; j < J; ++j) cnt[j] += static_cast<int>((chosen >> j) & 1u);
  }
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int i = j * 32 + lane;
    if (i < E) {
      sm_s[w][i] = ssum[j];
      sm_c[w][i] = cnt[j];
    }
  }
  if (lane == 0) sm_l[w] = l2;
  __syncthreads();
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    float s = 0.f;
    int n = 0;
    for (int v = 0; v < kAuxWarps; ++v) {
      s += sm_s[v][i];
      n += sm_c[v][i];
    }
    part_scores[chunk * E + i] = s;
    part_counts[chunk * E + i] = n;
  }
  if (threadIdx.x == 0) {
    double l = 0;
    for (int v = 0; v < kAuxWarps; ++v) l += sm_l[v];
    part_lse[chunk] = l;
  }
}

// score_sums / counts (G,E): each group's chunk partials in chunk order; lse_sq: all chunks.
__global__ void aux_stats_finish_kernel(float* score_sums, float* counts, float* lse_sq, const float* part_scores,
                                        const int* part_counts, const double* part_lse, int64_t G, int E,
                                        int64_t cpg) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < G * E) {
    const int64_t g = i / E, e = i - g * E;
    float s = 0.f;
    int64_t n = 0;
    for (int64_t c = 0; c < cpg; ++c) {
      s += part_scores[(g * cpg + c) * E + e];
      n += part_counts[(g * cpg + c) * E + e];
    }
    score_sums[i] = s;
    counts[i] = static_cast<float>(n);
  }
  if (i == 0) {
    double z = 0;
    for (int64_t c = 0; c < G * cpg; ++c) z += part_lse[c];
    lse_sq[0] = static_cast<float>(z);
  }
}

// d_logits (N,E) += the aux-loss gradient of each token. One warp per token.
__global__ void __launch_bounds__(kRouteWarps * 32)
    aux_backward_kernel(float* d_logits, const float* logits, const float* score_grad, int64_t N, int E,
                        int64_t per, float z_weight, bool use_sigmoid) {
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + w;
  if (t >= N) return;
  const float* zt = logits + t * E;
  const float* ds = score_grad + (t / per) * E;  // d loss / d s[t, :]
  float* dzt = d_logits + t * E;
  float mx = -INFINITY;
  for (int i = lane; i < E; i += 32) mx = fmaxf(mx, zt[i]);
  mx = warp_max(mx);
  double se = 0;
  for (int i = lane; i < E; i += 32) se += exp(static_cast<double>(__fsub_rn(zt[i], mx)));
  se = warp_sum(se);
  const float lse = mx + static_cast<float>(log(se));
  const float zscale = 2.f * z_weight * lse;  // d/dz (w lse^2) = 2 w lse softmax(z)
  if (use_sigmoid) {  // s_i = sig_i / S: d sig_i = ds_i / S - <ds, sig> / S^2; d z = d sig sig (1 - sig)
    float sum = 0.f;
    double dot = 0;
    for (int i = lane; i < E; i += 32) {
      const float sg = sigmoid_ref(zt[i]);
      sum += sg;
      dot += static_cast<double>(ds[i]) * sg;
    }
    const float S = warp_sum(sum) + 1e-20f;
    const float fdot = static_cast<float>(warp_sum(dot));
    for (int i = lane; i < E; i += 32) {
      const float sg = sigmoid_ref(zt[i]);
      float d = dzt[i] + (ds[i] / S - fdot / (S * S)) * sg * (1.f - sg);
      if (z_weight != 0.f) d += zscale * softmax_ref(zt[i], mx, se);
      dzt[i] = d;
    }
  } else {  // s = softmax(z): d z = s (ds - <ds, s>)
    double dot = 0;
    for (int i = lane; i < E; i += 32) dot += static_cast<double>(ds[i]) * softmax_ref(zt[i], mx, se);
    const float fdot = static_cast<float>(warp_sum(dot));
    for (int i = lane; i < E; i += 32) {
      const float p = softmax_ref(zt[i], mx, se);
      float d = dzt[i] + p * (ds[i] - fdot);
      if (z_weight != 0.f) d += zscale * p;
      dzt[i] = d;
    }
  }
}

// ---- dispatch plan -----------------------------------------------------------------------

__global__ void iota_kernel(int32_t* p, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = static_cast<int32_t>(i);
}

__device__ __forceinline__ uint32_t expert_key(int32_t e, int E) {
  return e >= 0 && e < E ? static_cast<uint32_t>(e) : static_cast<uint32_t>(E);  // E: dropped
}

__global__ void expert_keys_kernel(uint32_t* keys, const int32_t* idx, int64_t Q, int E) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < Q;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x)
    keys[q] = expert_key(idx[q], E);
}

// 32 bits that sort ascending as p descends (-0 as +0: the CPU's > treats them as equal).
__device__ __forceinline__ uint32_t prob_desc_bits(float p) {
  if (p == 0.f) p = 0.f;
  uint32_t u = __float_as_uint(p);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending with p
  return ~u;
}

__global__ void expert_prob_keys_kernel(uint64_t* keys, const int32_t* idx, const float* probs, int64_t Q, int E) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < Q;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x)
    keys[q] = (static_cast<uint64_t>(expert_key(idx[q], E)) << 32) | prob_desc_bits(probs[q]);
}

// start[e] (e in [0, E]) = first sorted position whose expert (key >> SHIFT) is >= e.
template <int SHIFT, typename K>
__global__ void segment_starts_kernel(int32_t* start, const K* sorted_keys, int64_t Q, int E) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e > E) return;
  int64_t lo = 0, hi = Q;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<int64_t>(sorted_keys[mid] >> SHIFT) < e) lo = mid + 1;
    else hi = mid;
  }
  start[e] = static_cast<int32_t>(lo);
}

// drop_by_probs: in (expert, prob desc, pair asc) order the first `capacity` pairs of each
// expert are kept; the next sort's key is the expert for those, E (dropped) for the rest.
__global__ void keep_by_prob_kernel(uint32_t* keys, const uint64_t* sorted_keys, const int32_t* sorted_pairs,
                                    const int32_t* start, int64_t Q, int E, int64_t capacity) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < Q;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t e = static_cast<uint32_t>(sorted_keys[s] >> 32);
    const bool keep = e < static_cast<uint32_t>(E) && s - start[e] < capacity;
    keys[sorted_pairs[s]] = keep ? e : static_cast<uint32_t>(E);
  }
}

// One block: kept[e] = pairs kept, tokens_per_expert[e] = rows (capacity when padded),
// base[e] = first row of expert e (exclusive scan), base[E] = all rows.
constexpr int kScanThreads = 1024;
__global__ void __launch_bounds__(kScanThreads)
    plan_counts_kernel(int32_t* tokens_per_expert, int32_t* kept, int32_t* base, const int32_t* start, int E,
                       int64_t capacity, bool pad) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage temp;
  int carry = 0;
  for (int e0 = 0; e0 < E; e0 += kScanThreads) {
    const int e = e0 + static_cast<int>(threadIdx.x);
    int rows = 0;
    if (e < E) {
      const int n = start[e + 1] - start[e];
      const int kp = capacity < 0 || n <= capacity ? n : static_cast<int>(capacity);
      rows = pad ? static_cast<int>(capacity) : kp;
      kept[e] = kp;
      tokens_per_expert[e] = rows;
    }
    int excl = 0, total = 0;
    Scan(temp).ExclusiveSum(rows, excl, total);
    if (e < E) base[e] = carry + excl;
    carry += total;
    __syncthreads();  // temp is reused
  }
  if (threadIdx.x == 0) base[E] = carry;
}

// One thread per output row r < base[E]: the pair it holds (expert e's local-th kept pair in
// pair order) or -1 for padding; row_of of that pair = r.
__global__ void plan_rows_kernel(int32_t* row_of, int32_t* pair_of_row, const int32_t* sorted_pairs,
                                 const int32_t* start, const int32_t* kept, const int32_t* base, int64_t bound, int E) {
  const int64_t total = base[E] < bound ? static_cast<int64_t>(base[E]) : bound;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < total;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int lo = 0, hi = E - 1;  // the last expert whose first row is <= r (it has rows)
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (base[mid] <= r) lo = mid;
      else hi = mid - 1;
    }
    const int64_t local = r - base[lo];
    if (local < kept[lo]) {
      const int32_t q = sorted_pairs[start[lo] + local];
      pair_of_row[r] = q;
      row_of[q] = static_cast<int32_t>(r);
    } else {
      pair_of_row[r] = -1;
    }
  }
}

int key_bits(int64_t E) {  // bits of the sentinel E
  int b = 1;
  while ((int64_t{1} << b) <= E) ++b;
  return b;
}

struct PlanLayout {
  size_t keys64_in = 0, keys64_out = 0, keys_in = 0, keys_out = 0, pairs_in = 0, pairs_out = 0;
  size_t start = 0, kept = 0, base = 0, temp = 0, temp_bytes = 0, total = 0;
};

PlanLayout plan_layout(int64_t Q, int64_t E, bool by_probs) {
  PlanLayout l;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off += align256(bytes);
    return at;
  };
  const size_t q = static_cast<size_t>(Q);
  if (by_probs) {
    l.keys64_in = take(q * 8);
    l.keys64_out = take(q * 8);
  }
  l.keys_in = take(q * 4);
  l.keys_out = take(q * 4);
  l.pairs_in = take(q * 4);
  l.pairs_out = take(q * 4);
  l.start = take(static_cast<size_t>(E + 1) * 4);
  l.kept = take(static_cast<size_t>(E) * 4);
  l.base = take(static_cast<size_t>(E + 1) * 4);
  const int n = static_cast<int>(Q);
  size_t t32 = 0, t64 = 0;
  PRIMUS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, t32, static_cast<const uint32_t*>(nullptr),
                                                    static_cast<uint32_t*>(nullptr),
                                                    static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), n, 0, key_bits(E)));
  if (by_probs)
    PRIMUS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, t64, static_cast<const uint64_t*>(nullptr),
                                                      static_cast<uint64_t*>(nullptr),
                                                      static_cast<const int32_t*>(nullptr),
                                                      static_cast<int32_t*>(nullptr), n, 0, 32 + key_bits(E)));
  l.temp_bytes = align256(t32 > t64 ? t32 : t64);
  l.temp = take(l.temp_bytes);
  l.total = off;
  return l;
}

// ---- permute / unpermute -----------------------------------------------------------------

template <typename T, int VEC>
__global__ void permute_kernel(T* x_perm, const T* x, const int32_t* pair_of_row, int64_t M, int64_t C,
                               int64_t topk) {
  const int64_t per_row = C / VEC, total = M * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i - r * per_row) * VEC;
    const int32_t q = pair_of_row[r];
    float v[VEC];
    if (q < 0) {
#pragma unroll
      for (int u = 0; u < VEC; ++u) v[u] = 0.f;
    } else {
      load_vec<T, VEC>(v, x + (q / topk) * C + c);
    }
    store_vec<T, VEC>(x_perm + r * C + c, v);
  }
}

// dx[t] += sum_j d_x_perm[row_of[t,j]]; with probs, y[t] += sum_j probs[t,j] y_perm[row_of[t,j]].
template <typename T, int VEC, bool WEIGHTED>
__global__ void gather_sum_kernel(T* out, const T* src, const int32_t* row_of, const float* probs, int64_t N,
                                  int64_t k, int64_t C) {
  const int64_t per_row = C / VEC, total = N * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / per_row, c = (i - t * per_row) * VEC;
    float acc[VEC];
    load_vec<T, VEC>(acc, out + t * C + c);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = row_of[t * k + j];
      if (r < 0) continue;
      float v[VEC];
      load_vec<T, VEC>(v, src + static_cast<int64_t>(r) * C + c);
      const float wgt = WEIGHTED ? probs[t * k + j] : 1.f;
#pragma unroll
      for (int u = 0; u < VEC; ++u) acc[u] += WEIGHTED ? wgt * v[u] : v[u];
    }
    store_vec<T, VEC>(out + t * C + c, acc);
  }
}

// d_y_perm row r = probs[q] * dy[q / k] for q = pair_of_row[r], zeros for q < 0.
template <typename T, int VEC>
__global__ void unpermute_backward_rows_kernel(T* d_y_perm, const T* dy, const int32_t* pair_of_row,
                                               const float* probs, int64_t M, int64_t k, int64_t C) {
  const int64_t per_row = C / VEC, total = M * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i - r * per_row) * VEC;
    const int32_t q = pair_of_row[r];
    float v[VEC];
    if (q < 0) {
#pragma unroll
      for (int u = 0; u < VEC; ++u) v[u] = 0.f;
    } else {
      load_vec<T, VEC>(v, dy + (q / k) * C + c);
      const float wgt = probs[q];
#pragma unroll
      for (int u = 0; u < VEC; ++u) v[u] *= wgt;
    }
    store_vec<T, VEC>(d_y_perm + r * C + c, v);
  }
}

// d_probs[q] = dy[q / k] . y_perm[row_of[q]] in fp32 (0 when dropped). One warp per pair.
template <typename T, int VEC>
__global__ void unpermute_backward_probs_kernel(float* d_probs, const T* dy, const T* y_perm, const int32_t* row_of,
                                                int64_t Q, int64_t k, int64_t C) {
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x >> 5) + w;
  if (q >= Q) return;
  const int32_t r = row_of[q];
  float acc = 0.f;
  if (r >= 0) {
    const T* a = dy + (q / k) * C;
    const T* b = y_perm + static_cast<int64_t>(r) * C;
    for (int64_t c = static_cast<int64_t>(lane) * VEC; c < C; c += 32 * VEC) {
      float va[VEC], vb[VEC];
      load_vec<T, VEC>(va, a + c);
      load_vec<T, VEC>(vb, b + c);
#pragma unroll
      for (int u = 0; u < VEC; ++u) acc += va[u] * vb[u];
    }
    acc = warp_sum(acc);
  }
  if (lane == 0) d_probs[q] = acc;
}

unsigned route_blocks(int64_t N) { return static_cast<unsigned>(ceil_div(N, kRouteWarps)); }

}  // namespace

// Runs the body with J = E / 32 rounded up to a power of two (registers per lane).
#define PRIMUS_MOE_DISPATCH_J(E, J, ...) \
  if ((E) <= 32) {                       \
    constexpr int J = 1;                 \
    __VA_ARGS__;                         \
  } else if ((E) <= 64) {                \
    constexpr int J = 2;                 \
    __VA_ARGS__;                         \
  } else if ((E) <= 128) {               \
    constexpr int J = 4;                 \
    __VA_ARGS__;                         \
  } else {                               \
    constexpr int J = 8;                 \
    __VA_ARGS__;                         \
  }

void launch_moe_topk_forward(float* probs, int32_t* indices, const float* logits, const float* bias, int64_t N,
                             int64_t E, const MoeRoutingParams& r, cudaStream_t stream) {
  if (N == 0) return;
  PRIMUS_CHECK(E >= 1 && E <= kMoeMaxExperts, "moe_topk_forward: the CUDA router takes 1..{} experts, got {}",
               kMoeMaxExperts, E);
  PRIMUS_CHECK(r.topk >= 1 && r.topk <= E, "moe_topk_forward: top-k {} outside [1, {}]", r.topk, E);
  const int e = static_cast<int>(E);
  PRIMUS_MOE_DISPATCH_J(e, J, {
    topk_forward_kernel<J><<<route_blocks(N), kRouteWarps * 32, 0, stream>>>(probs, indices, logits, bias, N, e, r);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_moe_topk_backward(float* d_logits, const float* d_probs, const float* logits, const int32_t* indices,
                              int64_t N, int64_t E, const MoeRoutingParams& r, cudaStream_t stream) {
  if (N == 0 || E == 0) return;
  topk_backward_kernel<<<route_blocks(N), kRouteWarps * 32, 0, stream>>>(d_logits, d_probs, logits, indices, N,
                                                                        static_cast<int>(E), r);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

size_t moe_aux_stats_workspace_bytes(int64_t N, int64_t E, int64_t G) { return aux_layout(N, E, G).total; }

void launch_moe_aux_stats(float* score_sums, float* counts, float* lse_sq, const float* logits, int64_t N, int64_t E,
                          int64_t G, int64_t topk, bool sigmoid, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  PRIMUS_CHECK(E >= 1 && E <= kMoeMaxExperts, "moe_aux_stats: the CUDA kernel takes 1..{} experts, got {}",
               kMoeMaxExperts, E);
  PRIMUS_CHECK(G >= 1 && N % G == 0 && topk >= 1 && topk <= E, "moe_aux_stats: G={} N={} top-k={} E={}", G, N, topk,
               E);
  const AuxLayout l = aux_layout(N, E, G);
  PRIMUS_CHECK(workspace_bytes >= l.total, "moe_aux_stats: workspace of {} bytes, need {}", workspace_bytes, l.total);
  char* ws = static_cast<char*>(workspace);
  float* ps = reinterpret_cast<float*>(ws + l.scores);
  int* pc = reinterpret_cast<int*>(ws + l.counts);
  double* pl = reinterpret_cast<double*>(ws + l.lse);
  const int e = static_cast<int>(E);
  PRIMUS_MOE_DISPATCH_J(e, J, {
    aux_stats_partial_kernel<J><<<static_cast<unsigned>(l.chunks), kAuxWarps * 32, 0, stream>>>(
        ps, pc, pl, logits, e, N / G, l.tpc, l.cpg, static_cast<int>(topk), sigmoid);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
  aux_stats_finish_kernel<<<static_cast<unsigned>(ceil_div(G * E, kThreads)), kThreads, 0, stream>>>(
      score_sums, counts, lse_sq, ps, pc, pl, G, e, l.cpg);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_moe_aux_backward(float* d_logits, const float* logits, const float* score_grad, int64_t N, int64_t E,
                             int64_t G, float z_weight, bool sigmoid, cudaStream_t stream) {
  if (N == 0 || E == 0) return;
  PRIMUS_CHECK(G >= 1 && N % G == 0, "moe_aux_backward: {} groups do not divide {} tokens", G, N);
  aux_backward_kernel<<<route_blocks(N), kRouteWarps * 32, 0, stream>>>(d_logits, logits, score_grad, N,
                                                                       static_cast<int>(E), N / G, z_weight, sigmoid);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

size_t moe_dispatch_plan_workspace_bytes(int64_t N, int64_t k, int64_t E, int64_t capacity, bool drop_by_probs) {
  return plan_layout(N * k, E, drop_by_probs && capacity >= 0).total;
}

void launch_moe_dispatch_plan(int32_t* row_of, int32_t* pair_of_row, int32_t* tokens_per_expert,
                              const int32_t* indices, const float* probs, int64_t N, int64_t k, int64_t E,
                              int64_t capacity, bool drop_by_probs, bool pad, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  const int64_t Q = N * k;
  if (E == 0) return;
  PRIMUS_CHECK(Q < (int64_t{1} << 31) && E < (int64_t{1} << 30),
               "moe_dispatch_plan: {} pairs over {} experts exceed the int32 plan", Q, E);
  PRIMUS_CHECK(!pad || capacity >= 0, "moe_dispatch_plan: padding needs a capacity");
  const int64_t bound = pad ? E * capacity : capacity >= 0 ? std::min(Q, E * capacity) : Q;
  PRIMUS_CHECK(bound < (int64_t{1} << 31), "moe_dispatch_plan: {} rows exceed the int32 plan", bound);
  const bool by_probs = drop_by_probs && capacity >= 0;
  const PlanLayout l = plan_layout(Q, E, by_probs);
  PRIMUS_CHECK(workspace_bytes >= l.total, "moe_dispatch_plan: workspace of {} bytes, need {}", workspace_bytes,
               l.total);
  char* ws = static_cast<char*>(workspace);
  auto* keys_in = reinterpret_cast<uint32_t*>(ws + l.keys_in);
  auto* keys_out = reinterpret_cast<uint32_t*>(ws + l.keys_out);
  auto* pairs_in = reinterpret_cast<int32_t*>(ws + l.pairs_in);
  auto* pairs_out = reinterpret_cast<int32_t*>(ws + l.pairs_out);
  auto* start = reinterpret_cast<int32_t*>(ws + l.start);
  auto* kept = reinterpret_cast<int32_t*>(ws + l.kept);
  auto* base = reinterpret_cast<int32_t*>(ws + l.base);
  void* temp = ws + l.temp;
  const int n = static_cast<int>(Q), e = static_cast<int>(E), bits = key_bits(E);
  const unsigned starts_blocks = static_cast<unsigned>(ceil_div(E + 1, kThreads));

  if (Q > 0) PRIMUS_CUDA_CHECK(cudaMemsetAsync(row_of, 0xff, static_cast<size_t>(Q) * 4, stream));  // all -1
  if (Q > 0) {
    iota_kernel<<<grid_for(Q, kThreads), kThreads, 0, stream>>>(pairs_in, Q);
    PRIMUS_CUDA_LAUNCH_CHECK();
  }
  if (by_probs && Q > 0) {
    auto* k64_in = reinterpret_cast<uint64_t*>(ws + l.keys64_in);
    auto* k64_out = reinterpret_cast<uint64_t*>(ws + l.keys64_out);
    expert_prob_keys_kernel<<<grid_for(Q, kThreads), kThreads, 0, stream>>>(k64_in, indices, probs, Q, e);
    PRIMUS_CUDA_LAUNCH_CHECK();
    size_t tb = l.temp_bytes;
    PRIMUS_CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(temp, tb, k64_in, k64_out, pairs_in, pairs_out, n, 0, 32 + bits, stream));
    segment_starts_kernel<32, uint64_t><<<starts_blocks, kThreads, 0, stream>>>(start, k64_out, Q, e);
    PRIMUS_CUDA_LAUNCH_CHECK();
    keep_by_prob_kernel<<<grid_for(Q, kThreads), kThreads, 0, stream>>>(keys_in, k64_out, pairs_out, start, Q, e,
                                                                       capacity);
    PRIMUS_CUDA_LAUNCH_CHECK();
  } else if (Q > 0) {
    expert_keys_kernel<<<grid_for(Q, kThreads), kThreads, 0, stream>>>(keys_in, indices, Q, e);
    PRIMUS_CUDA_LAUNCH_CHECK();
  }
  if (Q > 0) {  // the input pairs are left unchanged by the first sort: still 0..Q-1
    size_t tb = l.temp_bytes;
    PRIMUS_CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(temp, tb, keys_in, keys_out, pairs_in, pairs_out, n, 0, bits, stream));
  }
  segment_starts_kernel<0, uint32_t><<<starts_blocks, kThreads, 0, stream>>>(start, keys_out, Q, e);
  PRIMUS_CUDA_LAUNCH_CHECK();
  plan_counts_kernel<<<1, kScanThreads, 0, stream>>>(tokens_per_expert, kept, base, start, e, capacity, pad);
  PRIMUS_CUDA_LAUNCH_CHECK();
  if (bound > 0) {
    plan_rows_kernel<<<grid_for(bound, kThreads), kThreads, 0, stream>>>(row_of, pair_of_row, pairs_out, start, kept,
                                                                        base, bound, e);
    PRIMUS_CUDA_LAUNCH_CHECK();
  }
}

void launch_moe_permute(void* x_perm, const void* x, const int32_t* pair_of_row, DType dt, int64_t M, int64_t C,
                        int64_t topk, cudaStream_t stream) {
  if (M == 0 || C == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (C % V == 0 && aligned16(x_perm) && aligned16(x)) {
      permute_kernel<T, V><<<grid_for(M * C / V, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(x_perm), static_cast<const T*>(x), pair_of_row, M, C, topk);
    } else {
      permute_kernel<T, 1><<<grid_for(M * C, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(x_perm), static_cast<const T*>(x), pair_of_row, M, C, topk);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

namespace {

// out (N,C) += sum_j [probs[t,j] *] src (M,C) row rows[t,j] over the kept slots (WEIGHTED: with
// probs): the shared launcher of permute's backward and unpermute.
template <bool WEIGHTED>
void launch_gather_sum(void* out, const void* src, const int32_t* rows, const float* probs, DType dt, int64_t N,
                       int64_t k, int64_t C, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (C % V == 0 && aligned16(out) && aligned16(src)) {
      gather_sum_kernel<T, V, WEIGHTED><<<grid_for(N * C / V, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(src), rows, probs, N, k, C);
    } else {
      gather_sum_kernel<T, 1, WEIGHTED><<<grid_for(N * C, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(src), rows, probs, N, k, C);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace

void launch_moe_permute_backward(void* dx, const void* d_x_perm, const int32_t* row_of, DType dt, int64_t N,
                                 int64_t k, int64_t C, cudaStream_t stream) {
  launch_gather_sum<false>(dx, d_x_perm, row_of, nullptr, dt, N, k, C, stream);
}

void launch_moe_unpermute(void* y, const void* y_perm, const int32_t* row_of, const float* probs, DType dt,
                          int64_t N, int64_t k, int64_t C, cudaStream_t stream) {
  launch_gather_sum<true>(y, y_perm, row_of, probs, dt, N, k, C, stream);
}

void launch_moe_unpermute_backward(void* d_y_perm, float* d_probs, const void* dy, const void* y_perm,
                                   const int32_t* row_of, const int32_t* pair_of_row, const float* probs, DType dt,
                                   int64_t N, int64_t k, int64_t M, int64_t C, cudaStream_t stream) {
  const int64_t Q = N * k;
  constexpr int kPairsPerBlock = kThreads / 32;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    const bool vec = C % V == 0 && aligned16(d_y_perm) && aligned16(dy) && aligned16(y_perm);
    if (M > 0 && C > 0) {
      if (vec) {
        unpermute_backward_rows_kernel<T, V><<<grid_for(M * C / V, kThreads), kThreads, 0, stream>>>(
            static_cast<T*>(d_y_perm), static_cast<const T*>(dy), pair_of_row, probs, M, k, C);
      } else {
        unpermute_backward_rows_kernel<T, 1><<<grid_for(M * C, kThreads), kThreads, 0, stream>>>(
            static_cast<T*>(d_y_perm), static_cast<const T*>(dy), pair_of_row, probs, M, k, C);
      }
      PRIMUS_CUDA_LAUNCH_CHECK();
    }
    if (Q > 0) {
      const unsigned blocks = static_cast<unsigned>(ceil_div(Q, kPairsPerBlock));
      if (vec) {
        unpermute_backward_probs_kernel<T, V><<<blocks, kThreads, 0, stream>>>(
            d_probs, static_cast<const T*>(dy), static_cast<const T*>(y_perm), row_of, Q, k, C);
      } else {
        unpermute_backward_probs_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(
            d_probs, static_cast<const T*>(dy), static_cast<const T*>(y_perm), row_of, Q, k, C);
      }
      PRIMUS_CUDA_LAUNCH_CHECK();
    }
  });
}

}  // namespace primus::cuda

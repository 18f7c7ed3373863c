// Next-token choice on the device (see sampling.h for the contract). One block of 1024
// threads per row of logits. Keys: a float's bits mapped so that unsigned order is float
// order; greedy puts NaN below -inf (infer::argmax never picks a NaN unless all are), sampling
// reads NaN as -inf (infer::sampling_distribution's value()).
#include "ops/cuda/sampling.h"

#include <climits>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::ops::cuda {

namespace {

using ::primus::cuda::block_sum;

constexpr int kThreads = 1024;  // == kSampleCandidates: one candidate per thread in the rank sort
constexpr unsigned kFull = 0xffffffffu;
static_assert(kThreads == kSampleCandidates, "the rank sort gives each candidate one thread");

__device__ __forceinline__ uint32_t float_key(float v) {
  const uint32_t u = __float_as_uint(v == 0.f ? 0.f : v);  // -0 == +0, as the host compares them
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint32_t argmax_key(float v) { return isnan(v) ? 0u : float_key(v); }
__device__ __forceinline__ float sample_value(float v) { return isnan(v) ? -INFINITY : v; }
__device__ __forceinline__ uint32_t sample_key(float v) { return float_key(sample_value(v)); }

// f(value, id) for the ids [0, vocab) of this thread (threadIdx.x, + blockDim.x, ...), in
// increasing id order per thread. `vec`: the row is 16-byte aligned, so it is read as float4
// (4 ids per load, several loads in flight) with a scalar tail.
template <typename F>
__device__ __forceinline__ void for_each_in_row(const float* row, int vocab, bool vec, F&& f) {
  int start = 0;
  if (vec) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int n4 = vocab / 4;
#pragma unroll 4
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
      const float4 v = __ldg(row4 + i);
      f(v.x, 4 * i);
      f(v.y, 4 * i + 1);
      f(v.z, 4 * i + 2);
      f(v.w, 4 * i + 3);
    }
    start = 4 * n4;
  }
  for (int i = start + static_cast<int>(threadIdx.x); i < vocab; i += blockDim.x) f(row[i], i);
}

__device__ __forceinline__ bool row_is_vec(const float* logits, int64_t ld) {
  return ld % 4 == 0 && (reinterpret_cast<uintptr_t>(logits) & 15u) == 0;
}

// (key a, id a) comes before (key b, id b): larger key, or the same key and a lower id.
__device__ __forceinline__ bool before(uint32_t ka, int32_t ia, uint32_t kb, int32_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

__device__ __forceinline__ void warp_best(uint32_t& key, int32_t& id) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t k2 = __shfl_xor_sync(kFull, key, o);
    const int32_t i2 = __shfl_xor_sync(kFull, id, o);
    if (before(k2, i2, key, id)) {
      key = k2;
      id = i2;
    }
  }
}

// The first (key, id) of the block in `before` order; every thread gets it. All threads call.
__device__ void block_best(uint32_t& key, int32_t& id) {
  __shared__ uint32_t s_key[32];
  __shared__ int32_t s_id[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  warp_best(key, id);
  __syncthreads();
  if (lane == 0) {
    s_key[warp] = key;
    s_id[warp] = id;
  }
  __syncthreads();
  key = lane < nwarps ? s_key[lane] : 0u;
  id = lane < nwarps ? s_id[lane] : INT_MAX;
  warp_best(key, id);
}

__global__ void __launch_bounds__(kThreads)
    argmax_entropy_kernel(const float* logits, int64_t ld, int vocab, float temperature, int32_t* tokens,
                          int32_t* status, float* entropy) {
  const int64_t b = blockIdx.x;
  const float* row = logits + b * ld;
  const bool vec = row_is_vec(logits, ld);
  uint32_t key = 0u;
  int32_t id = INT_MAX;
  for_each_in_row(row, vocab, vec, [&](float v, int i) {
    const uint32_t k = argmax_key(v);
    if (id == INT_MAX || k > key) {  // ids grow along a thread's walk: strict > keeps the lowest
      key = k;
      id = i;
    }
  });
  block_best(key, id);
  if (threadIdx.x == 0) {
    tokens[b] = id;
    status[b] = 0;
  }
  if (entropy == nullptr) return;
  // The entropy of softmax(z / T) over the non-NaN logits (infer::generate's entropy_of).
  const float vmax = row[id];
  const double inv_t = 1.0 / static_cast<double>(temperature);
  const double zmax = static_cast<double>(vmax) * inv_t;
  if (isnan(vmax) || !isfinite(zmax)) {  // the same for the whole block (vmax is shared)
    if (threadIdx.x == 0) entropy[b] = 0.f;
    return;
  }
  double total = 0, weighted = 0;
  for_each_in_row(row, vocab, vec, [&](float v, int) {
    if (isnan(v)) return;
    const double a = static_cast<double>(v) * inv_t - zmax, e = exp(a);
    total += e;
    weighted += e * a;
  });
  __shared__ double red[32];
  total = block_sum(total, red);
  weighted = block_sum(weighted, red);
  if (threadIdx.x == 0) entropy[b] = static_cast<float>(log(total) - weighted / total);
}

// The float whose float_key is `key` (keys of -0 give +0; NaN never reaches here).
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// In the sampling order (value descending, lower id first on ties) over the ids [0, vocab)
// with weights w = exp(value * inv_t - zmax): the first id at which the running sum of w
// exceeds `target` (strict) or reaches it (!strict), found without sorting: a radix select on
// the keys, 8 bits per pass from the top, by the weight of each digit (a shared-memory
// histogram of double sums), then the tie index among the ids of the chosen value, by a block
// scan in id order. *cum_out: the running sum including that id. -1 when the whole row's
// weight does not reach the target (rounding). Called by all threads; all get the result.
__device__ int32_t mass_crossing(const float* row, int vocab, bool vec, double inv_t, double zmax, double target,
                                 bool strict, double* cum_out) {
  constexpr int kCopies = 8;  // histogram copies (warp % 8): fewer same-address atomics on flat rows
  __shared__ double hmass[kCopies][256];
  __shared__ uint32_t s_prefix;
  __shared__ double s_acc;
  __shared__ int s_found, s_taken, s_id, s_count[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (blockDim.x + 31) >> 5;
  uint32_t prefix = 0u, mask = 0u;
  double acc = 0;  // weight of the keys above the digits chosen so far
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < kCopies * 256; i += blockDim.x) hmass[i / 256][i % 256] = 0.0;
    __syncthreads();
    // As in sample_kernel's count pass: a thread sums its run of equal bins in a register and
    // adds the run when the bin changes (the atomics' order was never fixed).
    uint32_t run_bin = 0u;
    double run_w = 0.0;
    for_each_in_row(row, vocab, vec, [&](float v, int) {
      const uint32_t k = sample_key(v);
      if ((k & mask) != prefix) return;
      const double w = exp(static_cast<double>(sample_value(v)) * inv_t - zmax);
      if (!(w > 0.0)) return;
      const uint32_t bin = (k >> shift) & 0xFFu;
      if (bin != run_bin && run_w > 0.0) {
        atomicAdd(&hmass[warp % kCopies][run_bin], run_w);
        run_w = 0.0;
      }
      run_bin = bin;
      run_w += w;
    });
    if (run_w > 0.0) atomicAdd(&hmass[warp % kCopies][run_bin], run_w);
    __syncthreads();
    if (tid == 0) {
      double a = acc;
      int d = 255, found = 0;
      for (; d >= 0; --d) {
        double h = 0.0;
        for (int c = 0; c < kCopies; ++c) h += hmass[c][d];
        if (h > 0.0 && (strict ? a + h > target : a + h >= target)) {
          found = 1;
          break;
        }
        a += h;
      }
      s_found = found;
      s_prefix = prefix | (static_cast<uint32_t>(found ? d : 0) << shift);
      s_acc = a;
    }
    __syncthreads();
    if (!s_found) return -1;  // one value for the block
    prefix = s_prefix;
    acc = s_acc;
    mask |= 0xFFu << shift;
    __syncthreads();  // s_found / s_prefix are rewritten by the next pass
  }
  // The ids of value key_value(prefix), each of weight w: the crossing is the j-th of them.
  const double w = exp(static_cast<double>(key_value(prefix)) * inv_t - zmax);
  const double steps = (target - acc) / w;
  double jd = strict ? floor(steps) : ceil(steps) - 1.0;
  if (!(jd >= 0.0)) jd = 0.0;
  int count = 0;
  for_each_in_row(row, vocab, vec, [&](float v, int) { count += sample_key(v) == prefix ? 1 : 0; });
  count = block_sum(count, s_count);
  const int j = static_cast<int>(jd < static_cast<double>(count - 1) ? jd : static_cast<double>(count - 1));
  if (tid == 0) {
    s_taken = 0;
    s_id = -1;
  }
  __syncthreads();
  for (int base = 0; base < vocab; base += blockDim.x) {
    const int taken = s_taken;  // one value for the block (written before the last barrier)
    if (taken > j) break;
    const int i = base + tid;
    const bool flag = i < vocab && sample_key(row[i]) == prefix;
    const unsigned ballot = __ballot_sync(kFull, flag);
    if (lane == 0) s_count[warp] = __popc(ballot);
    __syncthreads();
    int earlier = 0, total = 0;
    for (int wi = 0; wi < nwarps; ++wi) {
      const int c = s_count[wi];
      if (wi < warp) earlier += c;
      total += c;
    }
    if (flag && taken + earlier + __popc(ballot & ((1u << lane) - 1u)) == j) s_id = i;
    __syncthreads();
    if (tid == 0) s_taken = taken + total;
    __syncthreads();
  }
  *cum_out = acc + static_cast<double>(j + 1) * w;
  return s_id;
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(const float* logits, int64_t ld, int vocab, float temperature, int64_t top_k, float top_p,
                  const double* uniforms, int32_t* tokens, int32_t* status) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix, s_remaining, s_count;
  __shared__ int s_taken;
  __shared__ int s_warp_count[32];
  __shared__ uint32_t cand_key[kThreads];
  __shared__ int32_t cand_id[kThreads];
  __shared__ int32_t sorted_id[kThreads];
  __shared__ double sorted_p[kThreads];
  __shared__ double red[32];

  const int64_t b = blockIdx.x;
  const float* row = logits + b * ld;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (blockDim.x + 31) >> 5;
  const int64_t K = top_k > 0 && top_k < vocab ? top_k : vocab;
  if (K > kThreads && K < vocab) {  // a top-k set larger than the candidates: the host samples it
    if (tid == 0) {
      tokens[b] = 0;
      status[b] = 1;
    }
    return;
  }
  const int M = static_cast<int>(K < kThreads ? K : kThreads);  // candidates kept
  const bool vec = row_is_vec(logits, ld);

  // Radix select, 8 bits per pass from the top: thr = the M-th largest key; `remaining` of the
  // ids whose key equals thr complete the M candidates after the keys above thr.
  uint32_t prefix = 0u, mask = 0u, remaining = static_cast<uint32_t>(M);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    // Logits of one row share their top key bits, so nearly every id falls in one or two bins:
    // one shared atomic per id serialised on them. Each thread counts its run of equal bins in
    // a register and adds the run when the bin changes (the same integer counts).
    uint32_t run_bin = 0u, run_n = 0u;
    for_each_in_row(row, vocab, vec, [&](float v, int) {
      const uint32_t k = sample_key(v);
      if ((k & mask) != prefix) return;
      const uint32_t bin = (k >> shift) & 0xFFu;
      if (bin != run_bin && run_n > 0u) {
        atomicAdd(&hist[run_bin], run_n);
        run_n = 0u;
      }
      run_bin = bin;
      ++run_n;
    });
    if (run_n > 0u) atomicAdd(&hist[run_bin], run_n);
    __syncthreads();
    if (tid == 0) {
      uint32_t above = 0u;
      int d = 255;
      for (; d > 0; --d) {
        if (above + hist[d] >= remaining) break;
        above += hist[d];
      }
      s_prefix = prefix | (static_cast<uint32_t>(d) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 0xFFu << shift;
  }
  const uint32_t thr = prefix;
  const int n_above = M - static_cast<int>(remaining);

  // The keys above thr, in any order (the rank sort orders them).
  if (tid == 0) {
    s_count = 0u;
    s_taken = 0;
  }
  __syncthreads();
  for_each_in_row(row, vocab, vec, [&](float v, int i) {
    const uint32_t k = sample_key(v);
    if (k > thr) {
      const uint32_t slot = atomicAdd(&s_count, 1u);
      if (slot < static_cast<uint32_t>(n_above)) {
        cand_key[slot] = k;
        cand_id[slot] = i;
      }
    }
  });
  // The lowest `remaining` ids whose key is thr, by a block scan in id order.
  for (int base = 0; base < vocab; base += blockDim.x) {
    const int taken = s_taken;  // written by thread 0 before the last barrier: one value for all
    if (taken >= static_cast<int>(remaining)) break;
    const int i = base + tid;
    const bool flag = i < vocab && sample_key(row[i]) == thr;
    const unsigned ballot = __ballot_sync(kFull, flag);
    if (lane == 0) s_warp_count[warp] = __popc(ballot);
    __syncthreads();
    int earlier = 0, total = 0;
    for (int w = 0; w < nwarps; ++w) {
      const int c = s_warp_count[w];
      if (w < warp) earlier += c;
      total += c;
    }
    const int slot = taken + earlier + __popc(ballot & ((1u << lane) - 1u));
    if (flag && slot < static_cast<int>(remaining)) {
      cand_key[n_above + slot] = thr;
      cand_id[n_above + slot] = i;
    }
    __syncthreads();  // every thread has read s_taken and s_warp_count
    if (tid == 0) s_taken = taken + total;
    __syncthreads();
  }
  __syncthreads();

  // Rank sort: most likely first, lower id first on ties.
  if (tid < M) {
    const uint32_t k = cand_key[tid];
    const int32_t id = cand_id[tid];
    int rank = 0;
    for (int j = 0; j < M; ++j) rank += before(cand_key[j], cand_id[j], k, id) ? 1 : 0;
    sorted_id[rank] = id;
  }
  __syncthreads();

  const double inv_t = 1.0 / static_cast<double>(temperature);
  const double zmax = static_cast<double>(sample_value(row[sorted_id[0]])) * inv_t;
  if (!isfinite(zmax)) {  // one value for the block
    if (tid == 0) {
      tokens[b] = 0;
      status[b] = 2;
    }
    return;
  }
  if (tid < M) sorted_p[tid] = exp(static_cast<double>(sample_value(row[sorted_id[tid]])) * inv_t - zmax);
  const bool all_kept = K <= M;  // the candidates are the whole top-k set
  double row_total = 0;
  if (!all_kept) {  // softmax over the whole row (top-k off)
    for_each_in_row(row, vocab, vec,
                    [&](float v, int) { row_total += exp(static_cast<double>(sample_value(v)) * inv_t - zmax); });
    row_total = block_sum(row_total, red);
  }
  __shared__ int s_need;  // 0: decided; 1: the top-p boundary lies past the candidates; 2: the draw does
  __shared__ double s_total;
  __syncthreads();
  if (tid == 0) {
    // The host's arithmetic, in its order (infer::sampling_distribution + sample_token).
    s_need = 0;
    double total = row_total;
    if (all_kept) {
      total = 0;
      for (int i = 0; i < M; ++i) total += sorted_p[i];
    }
    s_total = total;
    int n_keep = M;
    bool exact = all_kept;  // the kept set lies within the candidates
    double kept = 1.0;
    const bool nucleus = top_p < 1.f;
    bool decided = false;
    if (nucleus) {
      double before_mass = 0;
      int k = 0;
      while (k < M && (k == 0 || before_mass < static_cast<double>(top_p))) before_mass += sorted_p[k++] / total;
      if (k == M && before_mass < static_cast<double>(top_p) && !exact) {
        s_need = 1;
        decided = true;
      } else {
        n_keep = k;
        exact = true;
        kept = 0;
        for (int i = 0; i < k; ++i) kept += sorted_p[i] / total;
      }
    }
    if (!decided) {
      const double u = uniforms[b];
      double cum = 0;
      for (int i = 0; i < n_keep && !decided; ++i) {
        double p = sorted_p[i] / total;
        if (nucleus) p /= kept;
        cum += p;
        if (u < cum) {
          tokens[b] = sorted_id[i];
          status[b] = 0;
          decided = true;
        }
      }
      if (!decided) {
        if (exact) {  // u within rounding of 1: the last kept id (sample_token's dist.back())
          tokens[b] = sorted_id[n_keep - 1];
          status[b] = 0;
        } else {
          s_need = 2;
        }
      }
    }
  }
  __syncthreads();
  const int need = s_need;  // one value for the block
  if (need == 0) return;
  // Past the candidates (top-k off, a flat distribution): the same order and sums over the
  // whole row, by weight-radix selects instead of a sort.
  const double total = s_total, u = uniforms[b];
  double target = u * total;  // the draw: the first id whose running sum of w exceeds u * total
  if (need == 1) {            // top-p: keep up to the first id whose running sum reaches top_p * total
    double kept_w = 0;
    const int32_t last = mass_crossing(row, vocab, vec, inv_t, zmax, static_cast<double>(top_p) * total, false, &kept_w);
    if (last < 0) {
      if (tid == 0) {
        tokens[b] = 0;
        status[b] = 1;
      }
      return;
    }
    target = u * kept_w;  // u < cum / kept  <=>  running sum of w > u * kept_w
  }
  double cum_w = 0;
  const int32_t id = mass_crossing(row, vocab, vec, inv_t, zmax, target, true, &cum_w);
  if (tid == 0) {
    tokens[b] = id < 0 ? 0 : id;
    status[b] = id < 0 ? 1 : 0;
  }
}

__global__ void advance_positions_kernel(int32_t* positions, int64_t B) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < B) positions[i] += 1;
}

void check_sizes(const char* who, int64_t B, int64_t ld, int64_t vocab) {
  PRIMUS_CHECK(B > 0 && B <= INT_MAX, "{}: batch {} must be in [1, {}]", who, B, INT_MAX);
  PRIMUS_CHECK(vocab >= 1 && vocab <= ld && vocab < INT_MAX, "{}: vocab {} must be in [1, row length {}]", who, vocab,
               ld);
}

}  // namespace

void launch_argmax_entropy(const float* logits, int64_t B, int64_t ld, int64_t vocab, float entropy_temperature,
                           int32_t* tokens, int32_t* status, float* entropy, cudaStream_t stream) {
  check_sizes("argmax (CUDA)", B, ld, vocab);
  PRIMUS_CHECK(entropy == nullptr || entropy_temperature > 0.f, "argmax (CUDA): entropy temperature {} must be > 0",
               entropy_temperature);
  argmax_entropy_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      logits, ld, static_cast<int>(vocab), entropy_temperature, tokens, status, entropy);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_sample_tokens(const float* logits, int64_t B, int64_t ld, int64_t vocab, float temperature, int64_t top_k,
                          float top_p, const double* uniforms, int32_t* tokens, int32_t* status, cudaStream_t stream) {
  check_sizes("sampling (CUDA)", B, ld, vocab);
  PRIMUS_CHECK(temperature > 0.f && top_k >= 0 && top_p > 0.f && top_p <= 1.f,
               "sampling (CUDA): temperature {} must be > 0, top_k {} >= 0, top_p {} in (0, 1]", temperature, top_k,
               top_p);
  sample_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(logits, ld, static_cast<int>(vocab), temperature,
                                                                   top_k, top_p, uniforms, tokens, status);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_advance_positions(int32_t* positions, int64_t B, cudaStream_t stream) {
  if (B <= 0) return;
  constexpr int kBlock = 128;
  advance_positions_kernel<<<static_cast<unsigned>((B + kBlock - 1) / kBlock), kBlock, 0, stream>>>(positions, B);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::ops::cuda

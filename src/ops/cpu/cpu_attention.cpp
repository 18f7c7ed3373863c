// Scaled-dot-product attention with grouped-query heads on CPU, causal or not, optionally
// document-masked (packed sequences).
//
// For one batch b and query head h (kv head g = h / (Hq/Hkv)), with Q (T,D), K (T,D),
// V (T,Dv) the strided head slices of q, k, v:
//   S = scale * Q K^T,  S[i,j] = -inf unless key j is visible to query i:
//     j in [lo(i), hi(i)) with lo(i) = the first token of i's document (0 without segments),
//     hi(i) = i + 1 (causal) or one past the last token of i's document (T without segments);
//   lse[i] = log sum_j exp(S[i,j]),  P = exp(S - lse),  O = P V.
// Segments are non-decreasing, so a document is one contiguous run of tokens and the visible
// keys of a query are one interval.
// Backward (P recomputed from S and the saved lse, never stored):
//   dV = P^T dO,  dP = dO V^T,  Delta[i] = sum_d dO[i,d] O[i,d],
//   dS = P * (dP - Delta),  dQ = scale * dS K,  dK = scale * dS^T Q.
// dK/dV of a kv head sum over the Hq/Hkv query heads that share it.
//
// Query rows are processed in blocks of kRowBlock; a block [i0, i0 + rows) only needs keys
// [lo(i0), max hi) (the union of its rows' intervals), which skips most of the masked upper
// triangle and the other documents while every product is still one cblas_sgemm on the
// strided head slices (no copies).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/vec_math.h"

namespace primus::ops::cpu {

namespace {

constexpr int64_t kRowBlock = 128;

struct Dims {
  int64_t B, T, Hq, Hkv, D, Dv;
  int64_t group() const { return Hq / Hkv; }
};

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
}

// Row-major GEMM on raw pointers: C (M,N) = alpha * op(A) op(B) + beta * C.
inline void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* Bm, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), Bm, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

// The visible keys [lo[i], hi[i]) of every query i of one batch row (see the header comment).
struct KeyRanges {
  std::vector<int64_t> lo, hi;
};

KeyRanges key_ranges(const int32_t* seg, int64_t T, bool causal) {
  KeyRanges r{std::vector<int64_t>(static_cast<size_t>(T)), std::vector<int64_t>(static_cast<size_t>(T))};
  int64_t start = 0;
  for (int64_t i = 0; i < T; ++i) {
    if (seg && i > 0 && seg[i] != seg[i - 1]) start = i;
    r.lo[static_cast<size_t>(i)] = start;
  }
  int64_t end = T;
  for (int64_t i = T - 1; i >= 0; --i) {
    if (seg && i + 1 < T && seg[i] != seg[i + 1]) end = i + 1;
    r.hi[static_cast<size_t>(i)] = causal ? i + 1 : end;
  }
  return r;
}

void check_segments(const Tensor* segments, int64_t B, int64_t T, const char* op) {
  if (!segments) return;
  const int32_t* s = segments->data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 1; t < T; ++t)
      PRIMUS_CHECK(s[b * T + t] >= s[b * T + t - 1],
                   "{}: segments must be non-decreasing along each row, but row {} has {} at {} after {}", op, b,
                   s[b * T + t], t, s[b * T + t - 1]);
}

// Keys [k0, k1) that the query block [i0, i0 + rows) needs.
inline void block_keys(const KeyRanges& kr, int64_t i0, int64_t rows, int64_t& k0, int64_t& k1) {
  k0 = kr.lo[static_cast<size_t>(i0)];
  k1 = 0;
  for (int64_t r = 0; r < rows; ++r) k1 = std::max(k1, kr.hi[static_cast<size_t>(i0 + r)]);
}

}  // namespace

void CpuBackend::attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                                   float scale, bool causal, const Tensor* segments) {
  require_f32_all("attention_forward", out, lse, q, k, v);
  const Dims d = dims_of(q, k, v);
  check_segments(segments, d.B, d.T, "attention_forward");
  const int64_t ldq = d.Hq * d.D, ldk = d.Hkv * d.D, ldv = d.Hkv * d.Dv, ldo = d.Hq * d.Dv;
  std::vector<float> scores(static_cast<size_t>(std::min(kRowBlock, d.T) * d.T));
  for (int64_t b = 0; b < d.B; ++b) {
    const KeyRanges kr = key_ranges(segments ? segments->data<int32_t>() + b * d.T : nullptr, d.T, causal);
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t g = h / d.group();
      const float* Q = q.data<float>() + b * d.T * ldq + h * d.D;
      const float* K = k.data<float>() + b * d.T * ldk + g * d.D;
      const float* V = v.data<float>() + b * d.T * ldv + g * d.Dv;
      float* O = out.data<float>() + b * d.T * ldo + h * d.Dv;
      float* L = lse.data<float>() + (b * d.Hq + h) * d.T;
      for (int64_t i0 = 0; i0 < d.T; i0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, d.T - i0);
        int64_t k0 = 0, k1 = 0;
        block_keys(kr, i0, rows, k0, k1);
        const int64_t keys = k1 - k0;
        float* S = scores.data();
        sgemm(false, true, rows, keys, d.D, scale, Q + i0 * ldq, ldq, K + k0 * ldk, ldk, 0.f, S, keys);
        pool_.parallel_for(rows, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            float* s = S + r * keys;
            const int64_t lo = kr.lo[static_cast<size_t>(i0 + r)] - k0, hi = kr.hi[static_cast<size_t>(i0 + r)] - k0;
            const float mx = row_max(s + lo, hi - lo);
            const double sum = exp_shift(s + lo, s + lo, hi - lo, mx);
            const float inv = static_cast<float>(1.0 / sum);
            for (int64_t j = lo; j < hi; ++j) s[j] *= inv;
            for (int64_t j = 0; j < lo; ++j) s[j] = 0.f;
            for (int64_t j = hi; j < keys; ++j) s[j] = 0.f;
            L[i0 + r] = mx + static_cast<float>(std::log(sum));
          }
        }, 16);
        sgemm(false, false, rows, d.Dv, keys, 1.f, S, keys, V + k0 * ldv, ldv, 0.f, O + i0 * ldo, ldo);
      }
    }
  }
}

void CpuBackend::attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                                    const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                                    float scale, bool causal, const Tensor* segments) {
  require_f32_all("attention_backward", dq, dk, dv, dout, q, k, v, out, lse);
  const Dims d = dims_of(q, k, v);
  check_segments(segments, d.B, d.T, "attention_backward");
  const int64_t ldq = d.Hq * d.D, ldk = d.Hkv * d.D, ldv = d.Hkv * d.Dv, ldo = d.Hq * d.Dv;
  dk.zero_();
  dv.zero_();
  const size_t block = static_cast<size_t>(std::min(kRowBlock, d.T) * d.T);
  std::vector<float> probs(block), dprobs(block), delta(static_cast<size_t>(d.T));
  for (int64_t b = 0; b < d.B; ++b) {
    const KeyRanges kr = key_ranges(segments ? segments->data<int32_t>() + b * d.T : nullptr, d.T, causal);
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t g = h / d.group();
      const float* Q = q.data<float>() + b * d.T * ldq + h * d.D;
      const float* K = k.data<float>() + b * d.T * ldk + g * d.D;
      const float* V = v.data<float>() + b * d.T * ldv + g * d.Dv;
      const float* O = out.data<float>() + b * d.T * ldo + h * d.Dv;
      const float* dO = dout.data<float>() + b * d.T * ldo + h * d.Dv;
      const float* L = lse.data<float>() + (b * d.Hq + h) * d.T;
      float* dQ = dq.data<float>() + b * d.T * ldq + h * d.D;
      float* dK = dk.data<float>() + b * d.T * ldk + g * d.D;
      float* dV = dv.data<float>() + b * d.T * ldv + g * d.Dv;
      for (int64_t i = 0; i < d.T; ++i) {
        double acc = 0;
        for (int64_t c = 0; c < d.Dv; ++c) acc += static_cast<double>(dO[i * ldo + c]) * O[i * ldo + c];
        delta[i] = static_cast<float>(acc);
      }
      for (int64_t i0 = 0; i0 < d.T; i0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, d.T - i0);
        int64_t k0 = 0, k1 = 0;
        block_keys(kr, i0, rows, k0, k1);
        const int64_t keys = k1 - k0;
        float *P = probs.data(), *dP = dprobs.data();
        sgemm(false, true, rows, keys, d.D, scale, Q + i0 * ldq, ldq, K + k0 * ldk, ldk, 0.f, P, keys);
        sgemm(false, true, rows, keys, d.Dv, 1.f, dO + i0 * ldo, ldo, V + k0 * ldv, ldv, 0.f, dP, keys);
        pool_.parallel_for(rows, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            float *p = P + r * keys, *dp = dP + r * keys;
            const int64_t lo = kr.lo[static_cast<size_t>(i0 + r)] - k0, hi = kr.hi[static_cast<size_t>(i0 + r)] - k0;
            const float l = L[i0 + r], dl = delta[i0 + r];
            exp_shift(p + lo, p + lo, hi - lo, l);  // P = exp(S - lse)
            for (int64_t j = lo; j < hi; ++j) dp[j] = p[j] * (dp[j] - dl);
            for (int64_t j = 0; j < lo; ++j) p[j] = dp[j] = 0.f;
            for (int64_t j = hi; j < keys; ++j) p[j] = dp[j] = 0.f;
          }
        }, 16);
        sgemm(false, false, rows, d.D, keys, scale, dP, keys, K + k0 * ldk, ldk, 0.f, dQ + i0 * ldq, ldq);
        sgemm(true, false, keys, d.D, rows, scale, dP, keys, Q + i0 * ldq, ldq, 1.f, dK + k0 * ldk, ldk);
        sgemm(true, false, keys, d.Dv, rows, 1.f, P, keys, dO + i0 * ldo, ldo, 1.f, dV + k0 * ldv, ldv);
      }
    }
  }
}

// Softmax over the union of two disjoint key sets from each set's (out, lse): see the header of
// Backend::attention_merge. Weights are computed in double so that a row merged many times
// (one part per ring step) keeps fp32 accuracy.
void CpuBackend::attention_merge(Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                                 int64_t t0) {
  require_f32_all("attention_merge", acc_out, acc_lse, part_out, part_lse);
  const int64_t B = acc_out.size(0), T = acc_out.size(1), H = acc_out.size(2), Dv = acc_out.size(3);
  const int64_t Tp = part_out.size(1);
  float* O = acc_out.data<float>();
  float* L = acc_lse.data<float>();
  const float* P = part_out.data<float>();
  const float* l = part_lse.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tp; ++i) {
        const int64_t t = t0 + i;
        float& La = L[(b * H + h) * T + t];
        const float lb = l[(b * H + h) * Tp + i];
        if (std::isinf(lb) && lb < 0) continue;  // the part saw no key: nothing to add
        float* o = O + ((b * T + t) * H + h) * Dv;
        const float* p = P + ((b * Tp + i) * H + h) * Dv;
        if (std::isinf(La) && La < 0) {  // nothing accumulated yet: take the part
          std::copy(p, p + Dv, o);
          La = lb;
          continue;
        }
        const double m = std::max<double>(La, lb);
        const double ea = std::exp(static_cast<double>(La) - m), eb = std::exp(static_cast<double>(lb) - m);
        const double lse = m + std::log(ea + eb);
        const double wa = ea / (ea + eb), wb = eb / (ea + eb);
        for (int64_t c = 0; c < Dv; ++c) o[c] = static_cast<float>(wa * o[c] + wb * p[c]);
        La = static_cast<float>(lse);
      }
}

}  // namespace primus::ops::cpu

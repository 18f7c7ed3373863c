// Mixture-of-experts ops on CPU: router top-k and its backward, the load-balancing
// statistics, the dispatch plan, permute / unpermute. The math of each is in backend.h;
// everything is fp32 (activations of the permutes: the CPU path's fp32), loops over tokens
// in parallel where the outputs are per token, and in a fixed order where they are sums.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

namespace {

// Indices of the k largest of v[0..n) (ties: lower index), in descending order of value.
void topk_of(const float* v, int64_t n, int64_t k, int32_t* out) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  std::copy(idx.begin(), idx.begin() + k, out);
}

void softmax_row(const float* z, int64_t n, float* out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, z[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(z[i] - mx));
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(std::exp(static_cast<double>(z[i] - mx)) / sum);
}

float logsumexp_row(const float* z, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, z[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(z[i] - mx));
  return mx + static_cast<float>(std::log(sum));
}

float sigmoid(float z) { return 1.f / (1.f + std::exp(-z)); }

// Top-k of the selection scores `sel` (E) of one token, group-limited when configured. A group's
// score sums its `take` best scores: 1 (its maximum) with group_max, else k / group_topk.
void select_experts(const float* sel, int64_t E, const Backend::MoeRouting& r, int32_t* out) {
  if (r.num_groups <= 0) return topk_of(sel, E, r.topk, out);
  const int64_t G = r.num_groups, per = E / G, take = r.group_max ? 1 : r.topk / r.group_topk;
  std::vector<float> group_score(static_cast<size_t>(G));
  std::vector<int32_t> best(static_cast<size_t>(take));
  for (int64_t g = 0; g < G; ++g) {
    topk_of(sel + g * per, per, take, best.data());
    float s = 0;
    for (int32_t i : best) s += sel[g * per + i];
    group_score[static_cast<size_t>(g)] = s;
  }
  std::vector<int32_t> groups(static_cast<size_t>(r.group_topk));
  topk_of(group_score.data(), G, r.group_topk, groups.data());
  std::vector<float> masked(static_cast<size_t>(E), -std::numeric_limits<float>::infinity());
  for (int32_t g : groups)
    for (int64_t i = 0; i < per; ++i) masked[static_cast<size_t>(g * per + i)] = sel[g * per + i];
  topk_of(masked.data(), E, r.topk, out);
}

}  // namespace

void CpuBackend::moe_topk_forward(Tensor& probs, Tensor& indices, const Tensor& logits, const Tensor& bias,
                                  const MoeRouting& r) {
  const int64_t N = logits.size(0), E = logits.size(1), k = r.topk;
  const float* z = logits.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  float* p = probs.data<float>();
  int32_t* idx = indices.data<int32_t>();
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
    for (int64_t t = t0; t < t1; ++t) {
      const float* zt = z + t * E;
      int32_t* it = idx + t * k;
      float* pt = p + t * k;
      if (!r.sigmoid && r.pre_softmax) {
        softmax_row(zt, E, s.data());
        select_experts(s.data(), E, r, it);
        for (int64_t j = 0; j < k; ++j) pt[j] = s[static_cast<size_t>(it[j])];
      } else if (!r.sigmoid) {
        select_experts(zt, E, r, it);
        float chosen[256];
        for (int64_t j = 0; j < k; ++j) chosen[j] = zt[it[j]];
        softmax_row(chosen, k, pt);
      } else {
        for (int64_t i = 0; i < E; ++i) {
          s[static_cast<size_t>(i)] = sigmoid(zt[i]);
          sel[static_cast<size_t>(i)] = s[static_cast<size_t>(i)] + (b != nullptr ? b[i] : 0.f);
        }
        select_experts(sel.data(), E, r, it);
        float sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += pt[j] = s[static_cast<size_t>(it[j])];
        if (k > 1)
          for (int64_t j = 0; j < k; ++j) pt[j] /= sum + 1e-20f;
      }
      for (int64_t j = 0; j < k; ++j) pt[j] *= r.scaling;
    }
  }, 16);
}

void CpuBackend::moe_topk_backward(Tensor& d_logits, const Tensor& d_probs, const Tensor& logits,
                                   const Tensor& indices, const MoeRouting& r) {
  const int64_t N = logits.size(0), E = logits.size(1), k = r.topk;
  const float *z = logits.data<float>(), *dp = d_probs.data<float>();
  const int32_t* idx = indices.data<int32_t>();
  float* dz = d_logits.data<float>();
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(static_cast<size_t>(E)), ds(static_cast<size_t>(E));
    for (int64_t t = t0; t < t1; ++t) {
      const float* zt = z + t * E;
      const int32_t* it = idx + t * k;
      const float* dpt = dp + t * k;
      float* dzt = dz + t * E;
      std::fill(dzt, dzt + E, 0.f);
      if (!r.sigmoid && r.pre_softmax) {  // p_j = a s[i_j], s = softmax(z): dz = s (ds - <ds, s>)
        softmax_row(zt, E, s.data());
        std::fill(ds.begin(), ds.end(), 0.f);
        for (int64_t j = 0; j < k; ++j) ds[static_cast<size_t>(it[j])] += r.scaling * dpt[j];
        double dot = 0;
        for (int64_t i = 0; i < E; ++i) dot += static_cast<double>(ds[static_cast<size_t>(i)]) * s[static_cast<size_t>(i)];
        for (int64_t i = 0; i < E; ++i)
          dzt[i] = s[static_cast<size_t>(i)] * (ds[static_cast<size_t>(i)] - static_cast<float>(dot));
      } else if (!r.sigmoid) {  // p = a softmax(z[i]): d z[i] = q (dq - <dq, q>), dq = a dp
        float q[256], chosen[256];
        for (int64_t j = 0; j < k; ++j) chosen[j] = zt[it[j]];
        softmax_row(chosen, k, q);
        double dot = 0;
        for (int64_t j = 0; j < k; ++j) dot += static_cast<double>(r.scaling * dpt[j]) * q[j];
        for (int64_t j = 0; j < k; ++j) dzt[it[j]] += q[j] * (r.scaling * dpt[j] - static_cast<float>(dot));
      } else {  // q_j = sigmoid(z[i_j]); p = a q / (sum q + 1e-20) when k > 1
        float q[256], dq[256];
        float sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += q[j] = sigmoid(zt[it[j]]);
        if (k > 1) {
          const float S = sum + 1e-20f;
          double dot = 0;
          for (int64_t j = 0; j < k; ++j) dot += static_cast<double>(dpt[j]) * q[j];
          for (int64_t j = 0; j < k; ++j) dq[j] = r.scaling * (dpt[j] / S - static_cast<float>(dot) / (S * S));
        } else {
          dq[0] = r.scaling * dpt[0];
        }
        for (int64_t j = 0; j < k; ++j) dzt[it[j]] += dq[j] * q[j] * (1.f - q[j]);
      }
    }
  }, 16);
}

void CpuBackend::moe_aux_stats(Tensor& score_sums, Tensor& counts, Tensor& lse_sq, const Tensor& logits,
                               int64_t topk, bool use_sigmoid) {
  const int64_t N = logits.size(0), E = logits.size(1), G = score_sums.size(0), per = N / G;
  const float* z = logits.data<float>();
  // Per token in parallel, then sums in token order (deterministic).
  std::vector<float> s(static_cast<size_t>(N * E));
  std::vector<int32_t> top(static_cast<size_t>(N * topk));
  std::vector<float> lse(static_cast<size_t>(N));
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* zt = z + t * E;
      float* st = s.data() + t * E;
      lse[static_cast<size_t>(t)] = logsumexp_row(zt, E);
      if (use_sigmoid) {
        float sum = 0;
        for (int64_t i = 0; i < E; ++i) sum += st[i] = sigmoid(zt[i]);
        for (int64_t i = 0; i < E; ++i) st[i] /= sum + 1e-20f;
      } else {
        softmax_row(zt, E, st);
      }
      topk_of(st, E, topk, top.data() + t * topk);
    }
  }, 16);
  float* ss = score_sums.data<float>();
  float* cn = counts.data<float>();
  std::fill(ss, ss + G * E, 0.f);
  std::fill(cn, cn + G * E, 0.f);
  double z2 = 0;
  for (int64_t t = 0; t < N; ++t) {
    const int64_t g = t / per;
    for (int64_t i = 0; i < E; ++i) ss[g * E + i] += s[static_cast<size_t>(t * E + i)];
    for (int64_t j = 0; j < topk; ++j) cn[g * E + top[static_cast<size_t>(t * topk + j)]] += 1.f;
    z2 += static_cast<double>(lse[static_cast<size_t>(t)]) * lse[static_cast<size_t>(t)];
  }
  lse_sq.data<float>()[0] = static_cast<float>(z2);
}

void CpuBackend::moe_aux_backward(Tensor& d_logits, const Tensor& logits, const Tensor& score_grad, float z_weight,
                                  bool use_sigmoid) {
  const int64_t N = logits.size(0), E = logits.size(1), G = score_grad.size(0), per = N / G;
  const float *z = logits.data<float>(), *sg = score_grad.data<float>();
  float* dz = d_logits.data<float>();
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    std::vector<float> p(static_cast<size_t>(E)), sig(static_cast<size_t>(E));
    for (int64_t t = t0; t < t1; ++t) {
      const float* zt = z + t * E;
      const float* ds = sg + (t / per) * E;  // d loss / d s[t, :]
      float* dzt = dz + t * E;
      softmax_row(zt, E, p.data());
      if (use_sigmoid) {  // s_i = sig_i / S: d sig_i = ds_i / S - <ds, sig> / S^2; d z = d sig sig (1 - sig)
        float sum = 0;
        for (int64_t i = 0; i < E; ++i) sum += sig[static_cast<size_t>(i)] = sigmoid(zt[i]);
        const float S = sum + 1e-20f;
        double dot = 0;
        for (int64_t i = 0; i < E; ++i) dot += static_cast<double>(ds[i]) * sig[static_cast<size_t>(i)];
        for (int64_t i = 0; i < E; ++i) {
          const float si = sig[static_cast<size_t>(i)];
          dzt[i] += (ds[i] / S - static_cast<float>(dot) / (S * S)) * si * (1.f - si);
        }
      } else {  // s = softmax(z): d z = s (ds - <ds, s>)
        double dot = 0;
        for (int64_t i = 0; i < E; ++i) dot += static_cast<double>(ds[i]) * p[static_cast<size_t>(i)];
        for (int64_t i = 0; i < E; ++i) dzt[i] += p[static_cast<size_t>(i)] * (ds[i] - static_cast<float>(dot));
      }
      if (z_weight != 0.f) {  // d/dz (w lse^2) = 2 w lse softmax(z)
        const float lse = logsumexp_row(zt, E);
        for (int64_t i = 0; i < E; ++i) dzt[i] += 2.f * z_weight * lse * p[static_cast<size_t>(i)];
      }
    }
  }, 16);
}

void CpuBackend::moe_dispatch_plan(Tensor& row_of, Tensor& pair_of_row, Tensor& tokens_per_expert,
                                   const Tensor& indices, const Tensor& probs, int64_t capacity, bool drop_by_probs,
                                   bool pad) {
  const int64_t N = indices.size(0), k = indices.size(1), E = tokens_per_expert.size(0);
  const int32_t* idx = indices.data<int32_t>();
  const float* p = probs.data<float>();
  // The pairs of each expert in token order.
  std::vector<std::vector<int32_t>> pairs(static_cast<size_t>(E));
  for (int64_t q = 0; q < N * k; ++q) pairs[static_cast<size_t>(idx[q])].push_back(static_cast<int32_t>(q));
  int32_t* rows = row_of.data<int32_t>();
  std::fill(rows, rows + N * k, -1);
  int32_t* por = pair_of_row.data<int32_t>();
  int32_t* count = tokens_per_expert.data<int32_t>();
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int32_t>& list = pairs[static_cast<size_t>(e)];
    if (capacity >= 0 && static_cast<int64_t>(list.size()) > capacity) {
      if (drop_by_probs) {  // keep the highest probs (ties: the earlier token), in token order
        std::vector<int32_t> keep = list;
        std::stable_sort(keep.begin(), keep.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
        keep.resize(static_cast<size_t>(capacity));
        std::sort(keep.begin(), keep.end());
        list = keep;
      } else {
        list.resize(static_cast<size_t>(capacity));
      }
    }
    for (int32_t q : list) {
      rows[q] = static_cast<int32_t>(r);
      por[r++] = q;
    }
    int64_t n = static_cast<int64_t>(list.size());
    if (pad && capacity >= 0)
      for (; n < capacity; ++n) por[r++] = -1;
    count[e] = static_cast<int32_t>(n);
  }
}

void CpuBackend::moe_permute(Tensor& x_perm, const Tensor& x, const Tensor& pair_of_row, int64_t topk) {
  require_f32_all("moe_permute", x_perm, x);
  const int64_t C = x.size(1), M = pair_of_row.numel();
  const float* xs = x.data<float>();
  const int32_t* por = pair_of_row.data<int32_t>();
  float* out = x_perm.data<float>();
  pool_.parallel_for(M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (por[r] < 0) std::fill(out + r * C, out + (r + 1) * C, 0.f);
      else std::copy_n(xs + (por[r] / topk) * C, C, out + r * C);
    }
  }, 16);
}

void CpuBackend::moe_permute_backward(Tensor& dx, const Tensor& d_x_perm, const Tensor& row_of) {
  require_f32_all("moe_permute_backward", dx, d_x_perm);
  const int64_t N = row_of.size(0), k = row_of.size(1), C = dx.size(1);
  const float* dp = d_x_perm.data<float>();
  const int32_t* rows = row_of.data<int32_t>();
  float* d = dx.data<float>();
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = rows[t * k + j];
        if (r < 0) continue;
        for (int64_t c = 0; c < C; ++c) d[t * C + c] += dp[r * C + c];
      }
  }, 16);
}

void CpuBackend::moe_unpermute(Tensor& y, const Tensor& y_perm, const Tensor& row_of, const Tensor& probs) {
  require_f32_all("moe_unpermute", y, y_perm);
  const int64_t N = row_of.size(0), k = row_of.size(1), C = y.size(1);
  const float *yp = y_perm.data<float>(), *p = probs.data<float>();
  const int32_t* rows = row_of.data<int32_t>();
  float* out = y.data<float>();
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = rows[t * k + j];
        if (r < 0) continue;
        const float w = p[t * k + j];
        for (int64_t c = 0; c < C; ++c) out[t * C + c] += w * yp[r * C + c];
      }
  }, 16);
}

void CpuBackend::moe_unpermute_backward(Tensor& d_y_perm, Tensor& d_probs, const Tensor& dy, const Tensor& y_perm,
                                        const Tensor& row_of, const Tensor& pair_of_row, const Tensor& probs) {
  require_f32_all("moe_unpermute_backward", d_y_perm, dy, y_perm);
  const int64_t N = row_of.size(0), k = row_of.size(1), C = dy.size(1), M = pair_of_row.numel();
  const float *g = dy.data<float>(), *yp = y_perm.data<float>(), *p = probs.data<float>();
  const int32_t *rows = row_of.data<int32_t>(), *por = pair_of_row.data<int32_t>();
  float *dyp = d_y_perm.data<float>(), *dp = d_probs.data<float>();
  pool_.parallel_for(M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* out = dyp + r * C;
      if (por[r] < 0) {
        std::fill(out, out + C, 0.f);
        continue;
      }
      const float w = p[por[r]];
      const float* gt = g + (por[r] / k) * C;
      for (int64_t c = 0; c < C; ++c) out[c] = w * gt[c];
    }
  }, 16);
  pool_.parallel_for(N, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = rows[t * k + j];
        double dot = 0;
        if (r >= 0)
          for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(g[t * C + c]) * yp[r * C + c];
        dp[t * k + j] = static_cast<float>(dot);
      }
  }, 16);
}

}  // namespace primus::ops::cpu

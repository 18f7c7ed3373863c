// Rotary position embedding on CPU (Su et al. 2021), rotate-half convention: within the
// first R dims of a head, dim i pairs with dim i + R/2 (i < R/2) and the pair is rotated
// by the angle t * inv_freq[i]:
//   out[i] = x[i] cos - x[i+R/2] sin,   out[i+R/2] = x[i+R/2] cos + x[i] sin.
// Dims >= R pass through. The backward is the transposed rotation (angle -> -angle).
// Token n = b*T + t uses table row n % P of cos/sin (P, R/2): P == T shares the rows over the
// batch, P == B*T gives every token its own row (backend.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

namespace {

// Rotates one head vector of D values; direction +1 forward, -1 for the adjoint.
inline void rotate_head(float* out, const float* x, const float* cos, const float* sin, int64_t half,
                        int64_t D, float direction) {
  for (int64_t i = 0; i < half; ++i) {
    const float c = cos[i], s = direction * sin[i];
    const float x1 = x[i], x2 = x[i + half];
    out[i] = x1 * c - x2 * s;
    out[i + half] = x2 * c + x1 * s;
  }
  if (out != x)
    for (int64_t i = 2 * half; i < D; ++i) out[i] = x[i];
}

// Applies rotate_head to x (B,T,H,D) -> out; cos/sin (P, half), token r uses row r % P.
void rope_apply(ThreadPool& pool, Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin,
                float direction) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = cos.size(1), P = cos.size(0);
  const float *px = x.data<float>(), *pc = cos.data<float>(), *ps = sin.data<float>();
  float* po = out.data<float>();
  pool.parallel_for(B * T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % P;
      for (int64_t h = 0; h < H; ++h)
        rotate_head(po + (r * H + h) * D, px + (r * H + h) * D, pc + t * half, ps + t * half, half, D, direction);
    }
  }, 16);
}

}  // namespace

void CpuBackend::rope_forward(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  require_f32_all("rope_forward", out, x, cos, sin);
  rope_apply(pool_, out, x, cos, sin, 1.f);
}

void CpuBackend::rope_backward(Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) {
  require_f32_all("rope_backward", dx, dout, cos, sin);
  rope_apply(pool_, dx, dout, cos, sin, -1.f);
}

void CpuBackend::rope_gather_tables(Tensor& cos_out, Tensor& sin_out, const Tensor& cos_table,
                                    const Tensor& sin_table, const Tensor& positions) {
  require_f32_all("rope_gather_tables", cos_out, sin_out, cos_table, sin_table);
  const int64_t N = positions.numel(), P = cos_table.size(0), half = cos_table.size(1);
  const int32_t* pos = positions.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    PRIMUS_CHECK(pos[n] >= 0 && pos[n] < P, "rope_gather_tables: positions[{}] = {} is outside the table's {} rows", n,
                 pos[n], P);
  const size_t bytes = static_cast<size_t>(half) * sizeof(float);
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(cos_out.data<float>() + n * half, cos_table.data<float>() + pos[n] * half, bytes);
    std::memcpy(sin_out.data<float>() + n * half, sin_table.data<float>() + pos[n] * half, bytes);
  }
}

// qkv row r = [q heads (Hq*D) | k heads (Hkv*D) | v heads (Hkv*D)].
void CpuBackend::qkv_split_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv, const Tensor& cos,
                                        const Tensor& sin) {
  require_f32_all("qkv_split_rope_forward", q, k, v, qkv, cos, sin);
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2), half = cos.size(1);
  const int64_t W = (Hq + 2 * Hkv) * D, P = cos.size(0);
  const float *src = qkv.data<float>(), *pc = cos.data<float>(), *ps = sin.data<float>();
  float *pq = q.data<float>(), *pk = k.data<float>(), *pv = v.data<float>();
  pool_.parallel_for(B * T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % P;
      const float* row = src + r * W;
      for (int64_t h = 0; h < Hq; ++h)
        rotate_head(pq + (r * Hq + h) * D, row + h * D, pc + t * half, ps + t * half, half, D, 1.f);
      for (int64_t h = 0; h < Hkv; ++h)
        rotate_head(pk + (r * Hkv + h) * D, row + (Hq + h) * D, pc + t * half, ps + t * half, half, D, 1.f);
      std::memcpy(pv + r * Hkv * D, row + (Hq + Hkv) * D, Hkv * D * sizeof(float));
    }
  }, 16);
}

void CpuBackend::qkv_split_rope_backward(Tensor& dqkv, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                         const Tensor& cos, const Tensor& sin) {
  require_f32_all("qkv_split_rope_backward", dqkv, dq, dk, dv, cos, sin);
  const int64_t B = dq.size(0), T = dq.size(1), Hq = dq.size(2), D = dq.size(3), Hkv = dk.size(2);
  const int64_t half = cos.size(1), W = (Hq + 2 * Hkv) * D, P = cos.size(0);
  const float *pc = cos.data<float>(), *ps = sin.data<float>();
  const float *pq = dq.data<float>(), *pk = dk.data<float>(), *pv = dv.data<float>();
  float* dst = dqkv.data<float>();
  pool_.parallel_for(B * T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % P;
      float* row = dst + r * W;
      for (int64_t h = 0; h < Hq; ++h)
        rotate_head(row + h * D, pq + (r * Hq + h) * D, pc + t * half, ps + t * half, half, D, -1.f);
      for (int64_t h = 0; h < Hkv; ++h)
        rotate_head(row + (Hq + h) * D, pk + (r * Hkv + h) * D, pc + t * half, ps + t * half, half, D, -1.f);
      std::memcpy(row + (Hq + Hkv) * D, pv + r * Hkv * D, Hkv * D * sizeof(float));
    }
  }, 16);
}

// Multi-latent attention: per row (token) and head, q = [q_nope | rope(q_pe)] from q_proj,
// k = [k_nope | rope(k_pe)] with k_nope from kv_up and the one k_pe from kv_down's last Dr
// columns, v from kv_up (backend.h has the layouts).
void CpuBackend::mla_qkv_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                                      const Tensor& kv_down, const Tensor& cos, const Tensor& sin) {
  require_f32_all("mla_qkv_rope_forward", q, k, v, q_proj, kv_up, kv_down, cos, sin);
  const int64_t T = q.size(1), H = q.size(2), Dq = q.size(3), Dv = v.size(3), half = cos.size(1), P = cos.size(0);
  const int64_t Dr = 2 * half, Dn = Dq - Dr, Wkv = Dn + Dv, Wd = kv_down.size(1), L = Wd - Dr;
  const int64_t rows = q.size(0) * T;
  const float *pqp = q_proj.data<float>(), *pkv = kv_up.data<float>(), *pkd = kv_down.data<float>();
  const float *pc = cos.data<float>(), *ps = sin.data<float>();
  float *pq = q.data<float>(), *pk = k.data<float>(), *pv = v.data<float>();
  pool_.parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> kpe(static_cast<size_t>(Dr));
    for (int64_t r = r0; r < r1; ++r) {
      const float *c = pc + (r % P) * half, *s = ps + (r % P) * half;
      rotate_head(kpe.data(), pkd + r * Wd + L, c, s, half, Dr, 1.f);
      for (int64_t h = 0; h < H; ++h) {
        const float* src_q = pqp + (r * H + h) * Dq;
        float* dq = pq + (r * H + h) * Dq;
        std::memcpy(dq, src_q, static_cast<size_t>(Dn) * sizeof(float));
        rotate_head(dq + Dn, src_q + Dn, c, s, half, Dr, 1.f);
        const float* src_kv = pkv + (r * H + h) * Wkv;
        float* dk = pk + (r * H + h) * Dq;
        std::memcpy(dk, src_kv, static_cast<size_t>(Dn) * sizeof(float));
        std::memcpy(dk + Dn, kpe.data(), static_cast<size_t>(Dr) * sizeof(float));
        std::memcpy(pv + (r * H + h) * Dv, src_kv + Dn, static_cast<size_t>(Dv) * sizeof(float));
      }
    }
  }, 16);
}

void CpuBackend::mla_qkv_rope_backward(Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq,
                                       const Tensor& dk, const Tensor& dv, const Tensor& cos, const Tensor& sin) {
  require_f32_all("mla_qkv_rope_backward", dq_proj, dkv_up, dk_pe, dq, dk, dv, cos, sin);
  const int64_t T = dq.size(1), H = dq.size(2), Dq = dq.size(3), Dv = dv.size(3), half = cos.size(1), P = cos.size(0);
  const int64_t Dr = 2 * half, Dn = Dq - Dr, Wkv = Dn + Dv;
  const int64_t rows = dq.size(0) * T;
  const float *pdq = dq.data<float>(), *pdk = dk.data<float>(), *pdv = dv.data<float>();
  const float *pc = cos.data<float>(), *ps = sin.data<float>();
  float *out_q = dq_proj.data<float>(), *out_kv = dkv_up.data<float>(), *out_pe = dk_pe.data<float>();
  pool_.parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> sum(static_cast<size_t>(Dr)), one(static_cast<size_t>(Dr));
    for (int64_t r = r0; r < r1; ++r) {
      const float *c = pc + (r % P) * half, *s = ps + (r % P) * half;
      std::fill(sum.begin(), sum.end(), 0.f);
      for (int64_t h = 0; h < H; ++h) {
        const float* g_q = pdq + (r * H + h) * Dq;
        float* o_q = out_q + (r * H + h) * Dq;
        std::memcpy(o_q, g_q, static_cast<size_t>(Dn) * sizeof(float));
        rotate_head(o_q + Dn, g_q + Dn, c, s, half, Dr, -1.f);
        const float* g_k = pdk + (r * H + h) * Dq;
        float* o_kv = out_kv + (r * H + h) * Wkv;
        std::memcpy(o_kv, g_k, static_cast<size_t>(Dn) * sizeof(float));
        std::memcpy(o_kv + Dn, pdv + (r * H + h) * Dv, static_cast<size_t>(Dv) * sizeof(float));
        rotate_head(one.data(), g_k + Dn, c, s, half, Dr, -1.f);
        for (int64_t i = 0; i < Dr; ++i) sum[static_cast<size_t>(i)] += one[static_cast<size_t>(i)];
      }
      std::memcpy(out_pe + r * Dr, sum.data(), static_cast<size_t>(Dr) * sizeof(float));
    }
  }, 16);
}

}  // namespace primus::ops::cpu

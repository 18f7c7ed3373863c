// Rotary position embedding on CPU (Su et al. 2021), rotate-half convention: within the
// first R dims of a head, dim i pairs with dim i + R/2 (i < R/2) and the pair is rotated
// by the angle t * inv_freq[i]:
//   out[i] = x[i] cos - x[i+R/2] sin,   out[i+R/2] = x[i+R/2] cos + x[i] sin.
// Dims >= R pass through. The backward is the transposed rotation (angle -> -angle).
#include <cstring>

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

// Applies rotate_head to x (B,T,H,D) -> out; cos/sin (T, half).
void rope_apply(ThreadPool& pool, Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin,
                float direction) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = cos.size(1);
  const float *px = x.data<float>(), *pc = cos.data<float>(), *ps = sin.data<float>();
  float* po = out.data<float>();
  pool.parallel_for(B * T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T;
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

// qkv row r = [q heads (Hq*D) | k heads (Hkv*D) | v heads (Hkv*D)].
void CpuBackend::qkv_split_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv, const Tensor& cos,
                                        const Tensor& sin) {
  require_f32_all("qkv_split_rope_forward", q, k, v, qkv, cos, sin);
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2), half = cos.size(1);
  const int64_t W = (Hq + 2 * Hkv) * D;
  const float *src = qkv.data<float>(), *pc = cos.data<float>(), *ps = sin.data<float>();
  float *pq = q.data<float>(), *pk = k.data<float>(), *pv = v.data<float>();
  pool_.parallel_for(B * T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T;
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
  const int64_t half = cos.size(1), W = (Hq + 2 * Hkv) * D;
  const float *pc = cos.data<float>(), *ps = sin.data<float>();
  const float *pq = dq.data<float>(), *pk = dk.data<float>(), *pv = dv.data<float>();
  float* dst = dqkv.data<float>();
  pool_.parallel_for(B * T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T;
      float* row = dst + r * W;
      for (int64_t h = 0; h < Hq; ++h)
        rotate_head(row + h * D, pq + (r * Hq + h) * D, pc + t * half, ps + t * half, half, D, -1.f);
      for (int64_t h = 0; h < Hkv; ++h)
        rotate_head(row + (Hq + h) * D, pk + (r * Hkv + h) * D, pc + t * half, ps + t * half, half, D, -1.f);
      std::memcpy(row + (Hq + Hkv) * D, pv + r * Hkv * D, Hkv * D * sizeof(float));
    }
  }, 16);
}

}  // namespace primus::ops::cpu

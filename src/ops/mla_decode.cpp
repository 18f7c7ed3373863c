#include "ops/mla_decode.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/mla_decode.h"
#endif

namespace primus::ops {

namespace {

void same_place(const Context& ctx, const Tensor& ref, std::initializer_list<const Tensor*> ts, const char* op) {
  PRIMUS_CHECK(ref.device() == ctx.device(), "{}: {} is not on the backend's device ({})", op, ref.describe(),
               device_name(ctx.device()));
  for (const Tensor* t : ts)
    PRIMUS_CHECK(t->dtype() == ref.dtype() && t->device() == ref.device(), "{}: {} must have the dtype and device of {}",
                 op, t->describe(), ref.describe());
  PRIMUS_CHECK(ctx.device() != Device::CPU || ref.dtype() == DType::F32, "{}: the CPU path computes in fp32, got {}",
               op, ref.describe());
}

#ifdef PRIMUS_WITH_CUDA
cudaStream_t stream_of(Context& ctx, const char* op) {
  ::primus::cuda::CudaBackend* cb = ::primus::cuda::as_cuda_backend(ctx.backend());
  PRIMUS_CHECK(cb != nullptr, "{}: the CUDA context has no CudaBackend", op);
  return cb->stream();
}
#endif

}  // namespace

void mla_absorb_query(Context& ctx, Tensor& q_lat, const Tensor& q, const Tensor& w, int64_t Dn) {
  PRIMUS_CHECK(q.ndim() == 3 && q_lat.ndim() == 3 && w.ndim() == 2, "mla_absorb_query: q {}, q_lat {}, w {}",
               q.describe(), q_lat.describe(), w.describe());
  const int64_t B = q.size(0), H = q.size(1), Dq = q.size(2), L = w.size(1);
  PRIMUS_CHECK(Dn >= 0 && Dn <= Dq && w.size(0) % H == 0 && w.size(0) / H >= Dn,
               "mla_absorb_query: w {} does not hold {} heads of {} key rows", w.describe(), H, Dn);
  const int64_t Dv = w.size(0) / H - Dn;
  PRIMUS_CHECK(q_lat.shape() == Shape({B, H, L}), "mla_absorb_query: q_lat {} must be [{}, {}, {}]",
               q_lat.describe(), B, H, L);
  same_place(ctx, q, {&q_lat, &w}, "mla_absorb_query");
  if (ctx.device() == Device::CPU) {
    const float *pq = q.data<float>(), *pw = w.data<float>();
    float* o = q_lat.data<float>();
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const float* wh = pw + (bh % H) * (Dn + Dv) * L;
      float* out = o + bh * L;
      std::fill(out, out + L, 0.f);
      for (int64_t i = 0; i < Dn; ++i) {
        const float qi = pq[bh * Dq + i];
        for (int64_t l = 0; l < L; ++l) out[l] += qi * wh[i * L + l];
      }
    }
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  cuda::launch_mla_absorb_query(q_lat.raw(), q.raw(), w.raw(), q.dtype(), B, H, Dq, Dn, Dv, L,
                                stream_of(ctx, "mla_absorb_query"));
#endif
}

void mla_absorb_output(Context& ctx, Tensor& out, const Tensor& o_lat, const Tensor& w, int64_t Dn) {
  PRIMUS_CHECK(out.ndim() == 3 && o_lat.ndim() == 3 && w.ndim() == 2, "mla_absorb_output: out {}, o_lat {}, w {}",
               out.describe(), o_lat.describe(), w.describe());
  const int64_t B = o_lat.size(0), H = o_lat.size(1), L = o_lat.size(2), Dv = out.size(2);
  PRIMUS_CHECK(w.shape() == Shape({H * (Dn + Dv), L}) && out.shape() == Shape({B, H, Dv}),
               "mla_absorb_output: w {} must be [{} x ({} + {}), {}] and out {} [{}, {}, {}]", w.describe(), H, Dn, Dv,
               L, out.describe(), B, H, Dv);
  same_place(ctx, o_lat, {&out, &w}, "mla_absorb_output");
  if (ctx.device() == Device::CPU) {
    const float *po = o_lat.data<float>(), *pw = w.data<float>();
    float* pout = out.data<float>();
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t j = 0; j < Dv; ++j) {
        const float* row = pw + ((bh % H) * (Dn + Dv) + Dn + j) * L;
        float acc = 0.f;
        for (int64_t l = 0; l < L; ++l) acc += po[bh * L + l] * row[l];
        pout[bh * Dv + j] = acc;
      }
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  cuda::launch_mla_absorb_output(out.raw(), o_lat.raw(), w.raw(), out.dtype(), B, H, Dn, Dv, L,
                                 stream_of(ctx, "mla_absorb_output"));
#endif
}

void mla_decode_attention(Context& ctx, Tensor& o_lat, Tensor& scores, const Tensor& q_lat, const Tensor& q,
                          const Tensor& c_new, const Tensor& pe_new, Tensor& cache_c, Tensor& cache_pe,
                          const Tensor& positions, float scale) {
  const char* op = "mla_decode_attention";
  PRIMUS_CHECK(q_lat.ndim() == 3 && q.ndim() == 3 && cache_c.ndim() == 3 && cache_pe.ndim() == 3,
               "{}: q_lat {}, q {}, cache_c {}, cache_pe {} must be 3-D", op, q_lat.describe(), q.describe(),
               cache_c.describe(), cache_pe.describe());
  const int64_t B = q_lat.size(0), H = q_lat.size(1), L = q_lat.size(2), Dq = q.size(2);
  const int64_t Lmax = cache_c.size(1), Dr = cache_pe.size(2);
  PRIMUS_CHECK(q.size(0) == B && q.size(1) == H && Dq >= Dr, "{}: q {} must be [{}, {}, >= {}]", op, q.describe(), B,
               H, Dr);
  PRIMUS_CHECK(cache_c.shape() == Shape({B, Lmax, L}) && cache_pe.shape() == Shape({B, Lmax, Dr}),
               "{}: caches {} / {} must be [{}, Lmax, {}] / [{}, Lmax, {}]", op, cache_c.describe(),
               cache_pe.describe(), B, L, B, Dr);
  PRIMUS_CHECK(c_new.shape() == Shape({B, L}) && pe_new.shape() == Shape({B, Dr}) && o_lat.shape() == q_lat.shape(),
               "{}: c_new {}, pe_new {}, o_lat {} do not match [{}, {}], [{}, {}], {}", op, c_new.describe(),
               pe_new.describe(), o_lat.describe(), B, L, B, Dr, shape_str(q_lat.shape()));
  PRIMUS_CHECK(scores.dtype() == DType::F32 && scores.numel() >= B * H * Lmax && scores.device() == ctx.device(),
               "{}: scores must be fp32 with >= {} elements on {}, got {}", op, B * H * Lmax,
               device_name(ctx.device()), scores.describe());
  PRIMUS_CHECK(positions.dtype() == DType::I32 && positions.numel() == B && positions.device() == ctx.device(),
               "{}: positions must be int32 [{}] on {}, got {}", op, B, device_name(ctx.device()),
               positions.describe());
  same_place(ctx, q_lat, {&o_lat, &q, &c_new, &pe_new, &cache_c, &cache_pe}, op);
  if (ctx.device() == Device::CPU) {
    const int32_t* pos = positions.data<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      PRIMUS_CHECK(pos[b] >= 0 && pos[b] < Lmax, "{}: position {} of sequence {} is outside the cache [0, {})", op,
                   pos[b], b, Lmax);
      std::copy_n(c_new.data<float>() + b * L, L, cache_c.data<float>() + (b * Lmax + pos[b]) * L);
      std::copy_n(pe_new.data<float>() + b * Dr, Dr, cache_pe.data<float>() + (b * Lmax + pos[b]) * Dr);
    }
    std::vector<float> s;
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, n = pos[b] + 1;
      const float* ql = q_lat.data<float>() + bh * L;
      const float* qp = q.data<float>() + bh * Dq + (Dq - Dr);
      const float* C = cache_c.data<float>() + b * Lmax * L;
      const float* P = cache_pe.data<float>() + b * Lmax * Dr;
      s.assign(static_cast<size_t>(n), 0.f);
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        float dot = 0.f;
        for (int64_t l = 0; l < L; ++l) dot += ql[l] * C[j * L + l];
        for (int64_t r = 0; r < Dr; ++r) dot += qp[r] * P[j * Dr + r];
        s[static_cast<size_t>(j)] = dot * scale;
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      double sum = 0;
      for (float& v : s) {
        v = std::exp(v - mx);
        sum += v;
      }
      float* o = o_lat.data<float>() + bh * L;
      std::fill(o, o + L, 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const float wj = static_cast<float>(s[static_cast<size_t>(j)] / sum);
        for (int64_t l = 0; l < L; ++l) o[l] += wj * C[j * L + l];
      }
    }
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  cuda::launch_mla_decode_attention(o_lat.raw(), scores.data<float>(), q_lat.raw(), q.raw(), c_new.raw(),
                                    pe_new.raw(), cache_c.raw(), cache_pe.raw(), positions.data<int32_t>(),
                                    q.dtype(), B, H, Dq, L, Dr, Lmax, scale, stream_of(ctx, op));
#else
  fail("{}: {} tensors need the CUDA build of primus", op, device_name(ctx.device()));
#endif
}

}  // namespace primus::ops

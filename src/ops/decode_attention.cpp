#include "ops/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/decode_attention.h"
#include "ops/cuda/cuda_backend.h"
#endif

namespace primus::ops {

namespace {

struct Dims {
  int64_t B, Lmax, Hq, Hkv, D;
};

Dims check(const Tensor& out, const Tensor& q, const Tensor& k_new, const Tensor& v_new, const Tensor& k_cache,
           const Tensor& v_cache) {
  PRIMUS_CHECK(q.ndim() == 3, "decode_attention: q must be (B, Hq, D), got {}", q.describe());
  PRIMUS_CHECK(k_cache.ndim() == 4, "decode_attention: k_cache must be (B, Lmax, Hkv, D), got {}",
               k_cache.describe());
  const Dims d{q.size(0), k_cache.size(1), q.size(1), k_cache.size(2), q.size(2)};
  PRIMUS_CHECK(k_cache.shape() == Shape({d.B, d.Lmax, d.Hkv, d.D}),
               "decode_attention: k_cache {} must be [{}, Lmax, Hkv, {}] for q {}", k_cache.describe(), d.B, d.D,
               q.describe());
  PRIMUS_CHECK(v_cache.shape() == k_cache.shape(), "decode_attention: v_cache {} must match k_cache {}",
               v_cache.describe(), k_cache.describe());
  PRIMUS_CHECK(k_new.shape() == Shape({d.B, d.Hkv, d.D}) && v_new.shape() == k_new.shape(),
               "decode_attention: k_new {} and v_new {} must be [{}, {}, {}]", k_new.describe(), v_new.describe(),
               d.B, d.Hkv, d.D);
  PRIMUS_CHECK(out.shape() == q.shape(), "decode_attention: out {} must match q {}", out.describe(), q.describe());
  PRIMUS_CHECK(d.Hkv > 0 && d.Hq % d.Hkv == 0, "decode_attention: {} query heads are not a multiple of {} kv heads",
               d.Hq, d.Hkv);
  for (const Tensor* t : {&out, &k_new, &v_new, &k_cache, &v_cache})
    PRIMUS_CHECK(t->dtype() == q.dtype() && t->device() == q.device(),
                 "decode_attention: {} must have q's dtype and device ({})", t->describe(), q.describe());
  return d;
}

}  // namespace

void decode_attention_cpu(Tensor& out, const Tensor& q, const Tensor& k_new, const Tensor& v_new, Tensor& k_cache,
                          Tensor& v_cache, const int32_t* positions, float scale) {
  const Dims d = check(out, q, k_new, v_new, k_cache, v_cache);
  PRIMUS_CHECK(q.dtype() == DType::F32 && q.device() == Device::CPU,
               "decode_attention_cpu: tensors must be fp32 on the CPU, got q {}", q.describe());
  const int64_t row = d.Hkv * d.D;  // one position of one sequence in the cache
  for (int64_t b = 0; b < d.B; ++b) {
    const int64_t p = positions[b];
    PRIMUS_CHECK(p >= 0 && p < d.Lmax, "decode_attention: position {} of sequence {} is outside the cache [0, {})",
                 p, b, d.Lmax);
    std::copy_n(k_new.data<float>() + b * row, row, k_cache.data<float>() + (b * d.Lmax + p) * row);
    std::copy_n(v_new.data<float>() + b * row, row, v_cache.data<float>() + (b * d.Lmax + p) * row);
  }
  const int64_t group = d.Hq / d.Hkv;
  auto one_head = [&](int64_t bh, std::vector<float>& s) {
    const int64_t b = bh / d.Hq, h = bh % d.Hq, g = h / group, n = positions[b] + 1;
    const float* qh = q.data<float>() + (b * d.Hq + h) * d.D;
    const float* K = k_cache.data<float>() + b * d.Lmax * row + g * d.D;
    const float* V = v_cache.data<float>() + b * d.Lmax * row + g * d.D;
    s.resize(static_cast<size_t>(n));
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      float dot = 0.f;
      for (int64_t i = 0; i < d.D; ++i) dot += qh[i] * K[j * row + i];
      s[static_cast<size_t>(j)] = dot * scale;
      mx = std::max(mx, s[static_cast<size_t>(j)]);
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx);
      sum += s[static_cast<size_t>(j)];
    }
    const float inv = static_cast<float>(1.0 / sum);
    float* o = out.data<float>() + (b * d.Hq + h) * d.D;
    std::fill(o, o + d.D, 0.f);
    for (int64_t j = 0; j < n; ++j) {
      const float w = s[static_cast<size_t>(j)] * inv;
      const float* vj = V + j * row;
      for (int64_t i = 0; i < d.D; ++i) o[i] += w * vj[i];
    }
  };
  std::vector<float> scores;
  for (int64_t bh = 0; bh < d.B * d.Hq; ++bh) one_head(bh, scores);
}

void decode_attention(ops::Context& ctx, Tensor& out, const Tensor& q, const Tensor& k_new, const Tensor& v_new,
                      Tensor& k_cache, Tensor& v_cache, const Tensor& positions, float scale) {
  const Dims d = check(out, q, k_new, v_new, k_cache, v_cache);
  PRIMUS_CHECK(q.device() == ctx.device(), "decode_attention: q {} is not on the backend's device ({})",
               q.describe(), device_name(ctx.device()));
  PRIMUS_CHECK(positions.dtype() == DType::I32 && positions.numel() == d.B && positions.device() == ctx.device(),
               "decode_attention: positions must be int32 [{}] on {}, got {}", d.B, device_name(ctx.device()),
               positions.describe());
  if (ctx.device() == Device::CPU) {
    decode_attention_cpu(out, q, k_new, v_new, k_cache, v_cache, positions.data<int32_t>(), scale);
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  ::primus::cuda::CudaBackend* cb = ::primus::cuda::as_cuda_backend(ctx.backend());
  PRIMUS_CHECK(cb != nullptr, "decode_attention: the CUDA context has no CudaBackend");
  PRIMUS_CHECK(d.D <= cuda::kDecodeAttentionMaxHeadDim, "decode_attention: head dim {} > {} is not supported on CUDA",
               d.D, cuda::kDecodeAttentionMaxHeadDim);
  cuda::launch_kv_append(k_cache.raw(), v_cache.raw(), k_new.raw(), v_new.raw(), positions.data<int32_t>(),
                         q.dtype(), d.B, d.Lmax, d.Hkv, d.D, cb->stream());
  const size_t ws = cuda::decode_attention_workspace_bytes(q.dtype(), d.B, d.Lmax, d.Hq, d.Hkv, d.D);
  cuda::launch_decode_attention(out.raw(), q.raw(), k_cache.raw(), v_cache.raw(), positions.data<int32_t>(),
                                q.dtype(), d.B, d.Lmax, d.Hq, d.Hkv, d.D, scale, ws > 0 ? cb->scratch(ws) : nullptr, ws,
                                cb->stream());
#else
  fail("decode_attention: {} tensors need the CUDA build of primus", device_name(ctx.device()));
#endif
}

}  // namespace primus::ops

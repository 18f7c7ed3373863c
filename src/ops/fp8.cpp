#include "ops/fp8.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/fp8_bits.h"
#include "core/fp8_scale.h"
#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fp8.h"
#endif

namespace primus::ops {

namespace {

const Fp8Encoding& encoding(DType t) {
  PRIMUS_CHECK(t == DType::F8E4M3 || t == DType::F8E5M2, "fp8: {} is not an fp8 dtype", dtype_name(t));
  return t == DType::F8E4M3 ? kE4M3 : kE5M2;
}

DType role_dtype(const Fp8Options& o, int role) { return role == kFp8GradOutput ? o.grad_dtype() : o.forward_dtype(); }

int64_t rows_of(const Tensor& t) { return t.ndim() == 0 ? 1 : t.numel() / t.size(-1); }

Tensor as_2d(const Tensor& t) { return t.view({rows_of(t), t.size(-1)}); }

void check_meta(const Fp8Options& o, const Tensor& meta, const Tensor& x) {
  PRIMUS_CHECK(meta.dtype() == DType::F32 && meta.numel() == 3 * o.meta_cols() && meta.device() == x.device(),
               "fp8: the scaling state {} must be fp32 (3, {}) on {}'s device", meta.describe(), o.meta_cols(),
               x.describe());
}

#ifdef PRIMUS_WITH_CUDA
cuda::CudaBackend& cuda_backend(Context& ctx) {
  cuda::CudaBackend* cb = cuda::as_cuda_backend(ctx.backend());
  PRIMUS_CHECK(cb != nullptr, "fp8: the CUDA context has no CudaBackend");
  return *cb;
}
#endif

void check_cuda_operand(const Tensor& t, const char* what) {
  PRIMUS_CHECK(t.dtype() == DType::BF16, "fp8 on CUDA: {} {} must be bf16 (train with bf16: true)", what,
               t.describe());
  PRIMUS_CHECK(t.size(-1) % 16 == 0 && rows_of(t) % 16 == 0,
               "fp8 on CUDA: {} {} has a dimension that is not a multiple of 16 (FP8 GEMMs need every dimension "
               "a multiple of 16)", what, t.describe());
}

}  // namespace

Tensor fp8_scale_inv(const Fp8Options& o, const Tensor& meta, int role) {
  const int64_t at = role * o.meta_cols() + o.scale_inv_col();
  return meta.view({meta.numel()}).rows(at, at + 1);
}

void fp8_cast(Context& ctx, const Fp8Options& o, Tensor& meta, int role, Tensor& out, Tensor& out_t, const Tensor& x,
              bool record_amax) {
  check_meta(o, meta, x);
  const int64_t R = rows_of(x), C = x.size(-1);
  const DType fp8 = role_dtype(o, role);
  const Fp8Encoding& enc = encoding(fp8);
  if (out.defined())
    PRIMUS_CHECK(out.dtype() == fp8 && out.numel() == R * C && out.device() == x.device(),
                 "fp8_cast: out {} must be {} with x's {} elements", out.describe(), dtype_name(fp8), x.numel());
  if (out_t.defined())
    PRIMUS_CHECK(out_t.dtype() == fp8 && out_t.numel() == R * C && out_t.device() == x.device(),
                 "fp8_cast: out_t {} must be {} with x's {} elements", out_t.describe(), dtype_name(fp8), x.numel());
  const bool tensorwise = o.recipe == Fp8Recipe::Tensorwise;
  if (x.device() == Device::CPU) {
    PRIMUS_CHECK(x.dtype() == DType::F32, "fp8_cast on the CPU: x {} must be fp32", x.describe());
    float* m = meta.data<float>() + role * o.meta_cols();
    const float* xs = x.data<float>();
    float amax = 0.f;
    for (int64_t i = 0; i < R * C; ++i) amax = std::max(amax, std::fabs(xs[i]));
    float s;
    if (tensorwise) {
      s = fp8_scale_from_amax(enc.max_finite, amax, o.margin);
      m[0] = amax;
      m[o.scale_col()] = s;
      m[o.scale_inv_col()] = 1.f / s;
    } else {
      s = m[o.scale_col()];
      if (record_amax) m[0] = std::max(m[0], amax);
    }
    auto* o8 = out.defined() ? out.data<uint8_t>() : nullptr;
    auto* ot8 = out_t.defined() ? out_t.data<uint8_t>() : nullptr;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const uint8_t b = fp32_to_fp8_bits(xs[r * C + c] * s, enc);
        if (o8) o8[r * C + c] = b;
        if (ot8) ot8[c * R + r] = b;
      }
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  check_cuda_operand(x, "the tensor to cast");
  cuda::CudaBackend& cb = cuda_backend(ctx);
  float* m = meta.data<float>() + role * o.meta_cols();
  cuda::Fp8CastArgs a;
  a.scale = m + o.scale_col();
  a.scale_inv = m + o.scale_inv_col();
  a.amax = m;
  a.e5m2 = fp8 == DType::F8E5M2;
  a.fmax = enc.max_finite;
  a.margin = o.margin;
  if (tensorwise) {
    PRIMUS_CUDA_CHECK(cudaMemsetAsync(m, 0, sizeof(float), cb.stream()));
    cuda::launch_bf16_amax(x.raw(), x.numel(), m, cb.stream());
    a.scale_from_amax = true;
  } else {
    a.record_amax = record_amax;
  }
  cuda::launch_fp8_cast_transpose(x.raw(), R, C, out.defined() ? out.raw() : nullptr,
                                  out_t.defined() ? out_t.raw() : nullptr, a, cb.stream());
#else
  (void)ctx;
  fail("fp8_cast: a CUDA tensor in a build without CUDA");
#endif
}

void fp8_gemm_nt(Context& ctx, Tensor& out, const Tensor& p, const Tensor& p_scale_inv, const Tensor& q,
                 const Tensor& q_scale_inv, float beta, const Tensor* c, bool fast_accum) {
  const int64_t M = rows_of(p), K = p.size(-1), N = rows_of(q);
  PRIMUS_CHECK(q.size(-1) == K && out.numel() == M * N && rows_of(out) == M,
               "fp8_gemm_nt: out {} = p {} @ q {}^T does not fit", out.describe(), p.describe(), q.describe());
  PRIMUS_CHECK(!(p.dtype() == DType::F8E5M2 && q.dtype() == DType::F8E5M2),
               "fp8_gemm_nt: both operands are E5M2 (at most one may be)");
  if (c != nullptr)
    PRIMUS_CHECK(c->numel() == out.numel() && c->dtype() == out.dtype() && c->raw() != out.raw(),
                 "fp8_gemm_nt: c {} must be out's shape and dtype in another buffer ({})", c->describe(),
                 out.describe());
  if (out.device() == Device::CPU) {
    const Fp8Encoding &ep = encoding(p.dtype()), &eq = encoding(q.dtype());
    auto dequant = [](const Tensor& t, const Fp8Encoding& e, float s_inv) {
      Tensor f = Tensor::empty({rows_of(t), t.size(-1)}, DType::F32);
      const auto* b = t.data<uint8_t>();
      float* d = f.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) d[i] = fp8_bits_to_fp32(b[i], e) * s_inv;
      return f;
    };
    const Tensor pf = dequant(p, ep, p_scale_inv.data<float>()[0]);
    const Tensor qf = dequant(q, eq, q_scale_inv.data<float>()[0]);
    Tensor o2 = as_2d(out);
    if (c != nullptr) copy_cast(ctx, o2, as_2d(*c));
    matmul(ctx, o2, pf, Transpose::No, qf, Transpose::Yes, 1.f, beta);
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  PRIMUS_CHECK(out.dtype() == DType::BF16 || out.dtype() == DType::F32, "fp8_gemm_nt: out {} must be bf16 or fp32",
               out.describe());
  PRIMUS_CHECK(M % 16 == 0 && N % 16 == 0 && K % 16 == 0,
               "fp8_gemm_nt: m={} n={} k={}: FP8 GEMMs need every dimension a multiple of 16", M, N, K);
  cuda_backend(ctx).gemm().matmul_fp8(out.raw(), out.dtype(), p.raw(), p.dtype(), q.raw(), q.dtype(), M, N, K,
                                      p_scale_inv.data<float>(), q_scale_inv.data<float>(), beta,
                                      c != nullptr ? c->raw() : nullptr, fast_accum);
#else
  fail("fp8_gemm_nt: a CUDA tensor in a build without CUDA");
#endif
}

namespace {

// The weight's casts for the current weights (once per optimizer step). Its amax is recorded
// whatever the caller: the weights are the same in evaluation.
void ensure_weight(Context& ctx, Fp8Linear& l, const Tensor& w) {
  const Fp8Options& o = *l.options;
  if (l.cast_generation == o.weights_generation && l.w8.defined()) return;
  const int64_t N = w.size(0), K = w.size(1);
  if (!l.w8.defined() || l.w8.numel() != w.numel()) {
    l.w8 = Tensor::empty({N, K}, o.forward_dtype(), w.device());
    l.wt8 = Tensor::empty({K, N}, o.forward_dtype(), w.device());
  }
  fp8_cast(ctx, o, l.meta, kFp8Weight, l.w8, l.wt8, w, true);
  l.cast_generation = o.weights_generation;
}

}  // namespace

void fp8_linear_forward(Context& ctx, Fp8Linear& l, Arena& arena, Tensor& y, const Tensor& x, const Tensor& w,
                        const Tensor* residual, bool record_amax) {
  PRIMUS_CHECK(l.options != nullptr, "fp8_linear_forward: the linear has no fp8 options");
  const Fp8Options& o = *l.options;
  const int64_t M = rows_of(x), K = x.size(-1), N = w.size(0);
  PRIMUS_CHECK(w.ndim() == 2 && w.size(1) == K && y.numel() == M * N,
               "fp8_linear_forward: y {} = x {} @ w {}^T does not fit", y.describe(), x.describe(), w.describe());
  PRIMUS_CHECK(x.dtype() == w.dtype() && y.dtype() == w.dtype(),
               "fp8_linear_forward: x {}, w {} and y {} must share a dtype", x.describe(), w.describe(), y.describe());
  if (x.device() == Device::CUDA) {
    check_cuda_operand(x, "x");
    check_cuda_operand(w, "w");
  }
  ensure_weight(ctx, l, w);
  const Arena::Mark mark = arena.mark();
  Tensor x8 = arena.alloc({M, K}, o.forward_dtype()), none;
  fp8_cast(ctx, o, l.meta, kFp8Input, x8, none, x, record_amax);
  Tensor y2 = y.view({M, N});
  const Tensor r2 = residual != nullptr ? residual->view({M, N}) : Tensor();
  fp8_gemm_nt(ctx, y2, x8, fp8_scale_inv(o, l.meta, kFp8Input), l.w8, fp8_scale_inv(o, l.meta, kFp8Weight),
              residual != nullptr ? 1.f : 0.f, residual != nullptr ? &r2 : nullptr, /*fast_accum=*/true);
  arena.release(mark);
}

void fp8_linear_backward(Context& ctx, Fp8Linear& l, Arena& arena, Tensor* dx, Tensor& dw, const Tensor& dy,
                         const Tensor& x, const Tensor& w, bool accumulate_dw) {
  PRIMUS_CHECK(l.options != nullptr, "fp8_linear_backward: the linear has no fp8 options");
  const Fp8Options& o = *l.options;
  const int64_t M = rows_of(x), K = x.size(-1), N = w.size(0);
  PRIMUS_CHECK(rows_of(dy) == M && dy.size(-1) == N && w.size(1) == K,
               "fp8_linear_backward: dy {} / x {} do not match w {}", dy.describe(), x.describe(), w.describe());
  const bool need_dx = dx != nullptr && dx->defined(), need_dw = dw.defined();
  if (need_dx) PRIMUS_CHECK(dx->numel() == M * K, "fp8_linear_backward: dx {} must have x's shape {}", dx->describe(),
                            x.describe());
  if (need_dw) PRIMUS_CHECK(dw.numel() == N * K, "fp8_linear_backward: dw {} must have w's shape {}", dw.describe(),
                            w.describe());
  if (dy.device() == Device::CUDA) check_cuda_operand(dy, "dy");
  ensure_weight(ctx, l, w);
  const Arena::Mark mark = arena.mark();
  Tensor dy8 = need_dx ? arena.alloc({M, N}, o.grad_dtype()) : Tensor();
  Tensor dyt8 = need_dw ? arena.alloc({N, M}, o.grad_dtype()) : Tensor();
  fp8_cast(ctx, o, l.meta, kFp8GradOutput, dy8, dyt8, dy, true);
  if (need_dx) {
    Tensor dx2 = dx->view({M, K});
    fp8_gemm_nt(ctx, dx2, dy8, fp8_scale_inv(o, l.meta, kFp8GradOutput), l.wt8,
                fp8_scale_inv(o, l.meta, kFp8Weight), 0.f, nullptr, false);
  }
  if (need_dw) {
    // x^T in fp8 with the forward's scale (delayed: unchanged within the step; tensorwise: the
    // same amax, recomputed).
    Tensor xt8 = arena.alloc({K, M}, o.forward_dtype()), none;
    fp8_cast(ctx, o, l.meta, kFp8Input, none, xt8, x, false);
    Tensor dw2 = dw.view({N, K});
    fp8_gemm_nt(ctx, dw2, dyt8, fp8_scale_inv(o, l.meta, kFp8GradOutput), xt8, fp8_scale_inv(o, l.meta, kFp8Input),
                accumulate_dw ? 1.f : 0.f, nullptr, false);
  }
  arena.release(mark);
}

void fp8_update_scales(Context& ctx, const Fp8Options& o, Tensor& metas) {
  if (o.recipe != Fp8Recipe::Delayed || metas.numel() == 0) return;
  const int H = o.amax_history_len;
  PRIMUS_CHECK(metas.dtype() == DType::F32 && metas.numel() % (3 * o.meta_cols()) == 0,
               "fp8_update_scales: metas {} must be fp32 (L, 3, {})", metas.describe(), o.meta_cols());
  const int64_t rows = metas.numel() / o.meta_cols();
  const float fwd_max = kE4M3.max_finite, grad_max = encoding(o.grad_dtype()).max_finite;
  if (metas.device() == Device::CPU) {
    for (int64_t r = 0; r < rows; ++r) {
      float* m = metas.data<float>() + r * o.meta_cols();
      float amax = m[0];
      if (o.amax_max)
        for (int j = 1; j < H; ++j) amax = std::max(amax, m[j]);
      if (amax > 0.f && std::isfinite(amax)) {
        const float s = fp8_scale_from_amax(r % 3 == kFp8GradOutput ? grad_max : fwd_max, amax, o.margin);
        m[o.scale_col()] = s;
        m[o.scale_inv_col()] = 1.f / s;
      }
      for (int j = H - 1; j > 0; --j) m[j] = m[j - 1];
      m[0] = 0.f;
    }
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  cuda::launch_fp8_update_scales(metas.data<float>(), rows, H, o.meta_cols(), o.scale_col(), o.scale_inv_col(),
                                 fwd_max, grad_max, o.margin, o.amax_max, cuda_backend(ctx).stream());
#else
  (void)ctx;
  fail("fp8_update_scales: a CUDA tensor in a build without CUDA");
#endif
}

}  // namespace primus::ops

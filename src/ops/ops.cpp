// ops.h's free functions: one check of shapes, dtypes and devices per op (each message
// names the op, the tensor, what was seen and what was expected), then the backend call.
#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include <fmt/format.h>

#include "ops/cpu/cpu_backend.h"
#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace primus::ops {

Context Context::cpu() { return Context(make_cpu_backend()); }

Context Context::cuda(int device_index) {
#ifdef PRIMUS_WITH_CUDA
  return Context(make_cuda_backend(device_index));
#else
  (void)device_index;
  fail("the CUDA backend was requested but this primus was built without CUDA: rebuild on a "
       "machine with nvcc (cmake -DPRIMUS_CUDA=ON), or run on the CPU backend");
#endif
}

std::shared_ptr<Backend> make_cpu_backend(int num_threads) {
  return std::make_shared<cpu::CpuBackend>(num_threads);
}

namespace {

// A tensor argument of op `op`: defined, on the context's device.
void arg(const Context& ctx, const Tensor& t, const char* op, const char* name) {
  PRIMUS_CHECK(t.defined(), "{}: tensor '{}' is undefined", op, name);
  PRIMUS_CHECK(t.device() == ctx.device(), "{}: tensor '{}' is {} but the backend runs on {}", op, name,
               t.describe(), device_name(ctx.device()));
}
void arg_shape(const Context& ctx, const Tensor& t, const Shape& shape, const char* op, const char* name) {
  arg(ctx, t, op, name);
  PRIMUS_CHECK(t.shape() == shape, "{}: tensor '{}' has shape {}, expected {}", op, name, shape_str(t.shape()),
               shape_str(shape));
}
void arg_ndim(const Context& ctx, const Tensor& t, int ndim, const char* op, const char* name) {
  arg(ctx, t, op, name);
  PRIMUS_CHECK(t.ndim() == ndim, "{}: tensor '{}' must have {} dims, got {}", op, name, ndim, t.describe());
}
void float_dtype(const Tensor& t, const char* op, const char* name) {
  PRIMUS_CHECK(is_float(t.dtype()), "{}: tensor '{}' must be fp32/bf16/fp16, got {}", op, name, t.describe());
}
void dtype_is(const Tensor& t, DType d, const char* op, const char* name) {
  PRIMUS_CHECK(t.dtype() == d, "{}: tensor '{}' must be {}, got {}", op, name, dtype_name(d), t.describe());
}
void same_dtype(const Tensor& a, const Tensor& b, const char* op, const char* na, const char* nb) {
  PRIMUS_CHECK(a.dtype() == b.dtype(), "{}: '{}' ({}) and '{}' ({}) must share a dtype", op, na, a.describe(),
               nb, b.describe());
}
// Rows x columns of a tensor seen as a matrix over its last dim.
int64_t rows_of(const Tensor& t) { return t.ndim() == 0 || t.size(-1) == 0 ? 0 : t.numel() / t.size(-1); }

}  // namespace

// ---- elementwise / memory ----------------------------------------------------------

void fill(Context& ctx, Tensor& t, float value) {
  arg(ctx, t, "fill", "t");
  ctx.backend().fill(t, value);
}

void fill_normal(Context& ctx, Tensor& t, uint64_t seed, uint64_t stream, float mean, float std,
                 const std::vector<Backend::NormalRun>& runs) {
  arg(ctx, t, "fill_normal", "t");
  int64_t covered = 0;
  for (const auto& r : runs) {
    PRIMUS_CHECK(r.numel >= 0 && r.local_offset >= 0 && r.local_offset + r.numel <= t.numel(),
                 "fill_normal: run [{}, {}) outside the tensor {}", r.local_offset, r.local_offset + r.numel,
                 t.describe());
    covered += r.numel;
  }
  PRIMUS_CHECK(covered == t.numel(), "fill_normal: runs cover {} of the {} elements of {}", covered, t.numel(),
               t.describe());
  ctx.backend().fill_normal(t, seed, stream, mean, std, runs);
}

void copy_cast(Context& ctx, Tensor& dst, const Tensor& src) {
  arg(ctx, dst, "copy_cast", "dst");
  arg(ctx, src, "copy_cast", "src");
  PRIMUS_CHECK(dst.numel() == src.numel(), "copy_cast: dst {} and src {} differ in size", dst.describe(),
               src.describe());
  ctx.backend().copy_cast(dst, src);
}

void copy_columns(Context& ctx, Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  arg_ndim(ctx, dst, 2, "copy_columns", "dst");
  arg_ndim(ctx, src, 2, "copy_columns", "src");
  same_dtype(dst, src, "copy_columns", "dst", "src");
  PRIMUS_CHECK(dst.size(0) == src.size(0), "copy_columns: dst {} and src {} differ in rows", dst.describe(),
               src.describe());
  PRIMUS_CHECK(width >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + width <= dst.size(1) &&
                   src_col + width <= src.size(1),
               "copy_columns: columns [{}, {}) of dst {} / [{}, {}) of src {} out of range", dst_col,
               dst_col + width, dst.describe(), src_col, src_col + width, src.describe());
  if (width == 0 || dst.size(0) == 0) return;
  ctx.backend().copy_columns(dst, dst_col, src, src_col, width);
}

void add(Context& ctx, Tensor& out, const Tensor& a, const Tensor& b) {
  arg(ctx, out, "add", "out");
  arg_shape(ctx, a, out.shape(), "add", "a");
  arg_shape(ctx, b, out.shape(), "add", "b");
  same_dtype(out, a, "add", "out", "a");
  same_dtype(out, b, "add", "out", "b");
  ctx.backend().add(out, a, b);
}

void scale(Context& ctx, Tensor& t, float alpha) {
  arg(ctx, t, "scale", "t");
  float_dtype(t, "scale", "t");
  ctx.backend().scale(t, alpha);
}

// ---- GEMM ----------------------------------------------------------------------------

void matmul(Context& ctx, Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, float alpha,
            float beta) {
  arg_ndim(ctx, out, 2, "matmul", "out");
  arg_ndim(ctx, a, 2, "matmul", "a");
  arg_ndim(ctx, b, 2, "matmul", "b");
  same_dtype(a, b, "matmul", "a", "b");
  float_dtype(a, "matmul", "a");
  PRIMUS_CHECK(out.dtype() == a.dtype() || out.dtype() == DType::F32,
               "matmul: out must be the inputs' dtype ({}) or fp32, got {}", dtype_name(a.dtype()), out.describe());
  const bool at = ta == Transpose::Yes, bt = tb == Transpose::Yes;
  const int64_t M = at ? a.size(1) : a.size(0), K = at ? a.size(0) : a.size(1);
  const int64_t Kb = bt ? b.size(1) : b.size(0), N = bt ? b.size(0) : b.size(1);
  PRIMUS_CHECK(K == Kb && out.size(0) == M && out.size(1) == N,
               "matmul: shapes do not chain: op(a) is [{}, {}] (a {}{}), op(b) is [{}, {}] (b {}{}), out {}", M, K,
               a.describe(), at ? " transposed" : "", Kb, N, b.describe(), bt ? " transposed" : "", out.describe());
  ctx.backend().matmul(out, a, ta, b, tb, alpha, beta);
}

namespace {

// The operands of y = x @ w^T (+ ...): devices, w 2-D, x's features and y's shape.
void check_linear_forward(Context& ctx, const Tensor& y, const Tensor& x, const Tensor& w, const char* op) {
  arg_ndim(ctx, w, 2, op, "w");
  arg(ctx, x, op, "x");
  arg(ctx, y, op, "y");
  PRIMUS_CHECK(x.size(-1) == w.size(1), "{}: x {} has {} input features but w {} expects {}", op, x.describe(),
               x.size(-1), w.describe(), w.size(1));
  PRIMUS_CHECK(y.size(-1) == w.size(0) && rows_of(y) == rows_of(x), "{}: y {} must be [{}, {}] for x {} and w {}", op,
               y.describe(), rows_of(x), w.size(0), x.describe(), w.describe());
}

}  // namespace

void linear_forward(Context& ctx, Tensor& y, const Tensor& x, const Tensor& w) {
  check_linear_forward(ctx, y, x, w, "linear_forward");
  Tensor y2 = y.view({rows_of(y), y.size(-1)});
  matmul(ctx, y2, x.view({rows_of(x), x.size(-1)}), Transpose::No, w, Transpose::Yes, 1.f, 0.f);
}

void linear_forward_add(Context& ctx, Tensor& y, const Tensor& x, const Tensor& w, const Tensor& residual) {
  arg_shape(ctx, residual, y.shape(), "linear_forward_add", "residual");
  same_dtype(y, residual, "linear_forward_add", "y", "residual");
  PRIMUS_CHECK(residual.raw() != y.raw(), "linear_forward_add: residual {} must not be y's buffer {}",
               residual.describe(), y.describe());
  check_linear_forward(ctx, y, x, w, "linear_forward_add");
  Tensor y2 = y.view({rows_of(y), y.size(-1)});
  // Backend::matmul_add bypasses ops::matmul, so its dtype rules are checked here.
  same_dtype(x, w, "linear_forward_add", "x", "w");
  same_dtype(y, x, "linear_forward_add", "y", "x");
  const Tensor r2 = residual.view({rows_of(residual), residual.size(-1)});
  ctx.backend().matmul_add(y2, x.view({rows_of(x), x.size(-1)}), Transpose::No, w, Transpose::Yes, r2);
}

void linear_backward(Context& ctx, Tensor* dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                     bool accumulate_dw) {
  if (dw.defined()) arg_shape(ctx, dw, w.shape(), "linear_backward", "dw");
  arg(ctx, dy, "linear_backward", "dy");
  PRIMUS_CHECK(dy.size(-1) == w.size(0) && x.size(-1) == w.size(1) && rows_of(dy) == rows_of(x),
               "linear_backward: dy {} / x {} do not match w {}", dy.describe(), x.describe(), w.describe());
  const Tensor dy2 = dy.view({rows_of(dy), dy.size(-1)});
  if (dx != nullptr && dx->defined()) {
    PRIMUS_CHECK(dx->numel() == x.numel(), "linear_backward: dx {} must have x's shape {}", dx->describe(),
                 x.describe());
    Tensor dx2 = dx->view({rows_of(x), x.size(-1)});
    matmul(ctx, dx2, dy2, Transpose::No, w, Transpose::No, 1.f, 0.f);
  }
  if (!dw.defined()) return;  // a frozen weight (LoRA's base): d x only
  matmul(ctx, dw, dy2, Transpose::Yes, x.view({rows_of(x), x.size(-1)}), Transpose::No, 1.f,
         accumulate_dw ? 1.f : 0.f);
}

// ---- embedding -----------------------------------------------------------------------

void embedding_forward(Context& ctx, Tensor& out, const Tensor& ids, const Tensor& table) {
  arg_ndim(ctx, table, 2, "embedding_forward", "table");
  arg(ctx, ids, "embedding_forward", "ids");
  dtype_is(ids, DType::I32, "embedding_forward", "ids");
  arg_shape(ctx, out, {ids.numel(), table.size(1)}, "embedding_forward", "out");
  same_dtype(out, table, "embedding_forward", "out", "table");
  ctx.backend().embedding_forward(out, ids, table);
}

void embedding_backward(Context& ctx, Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  arg_ndim(ctx, dtable, 2, "embedding_backward", "dtable");
  dtype_is(dtable, DType::F32, "embedding_backward", "dtable");
  arg(ctx, ids, "embedding_backward", "ids");
  dtype_is(ids, DType::I32, "embedding_backward", "ids");
  arg_shape(ctx, dout, {ids.numel(), dtable.size(1)}, "embedding_backward", "dout");
  ctx.backend().embedding_backward(dtable, dout, ids);
}

// ---- RMSNorm -------------------------------------------------------------------------

void rmsnorm_forward(Context& ctx, Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, float eps) {
  arg_ndim(ctx, x, 2, "rmsnorm_forward", "x");
  float_dtype(x, "rmsnorm_forward", "x");
  arg_shape(ctx, y, x.shape(), "rmsnorm_forward", "y");
  same_dtype(y, x, "rmsnorm_forward", "y", "x");
  arg_shape(ctx, w, {x.size(1)}, "rmsnorm_forward", "w");
  arg_shape(ctx, rstd, {x.size(0)}, "rmsnorm_forward", "rstd");
  dtype_is(rstd, DType::F32, "rmsnorm_forward", "rstd");
  PRIMUS_CHECK(eps > 0.f, "rmsnorm_forward: eps must be > 0, got {}", eps);
  ctx.backend().rmsnorm_forward(y, rstd, x, w, eps);
}

void rmsnorm_backward(Context& ctx, Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                      const Tensor& rstd) {
  arg_ndim(ctx, x, 2, "rmsnorm_backward", "x");
  arg_shape(ctx, dx, x.shape(), "rmsnorm_backward", "dx");
  arg_shape(ctx, dy, x.shape(), "rmsnorm_backward", "dy");
  arg_shape(ctx, w, {x.size(1)}, "rmsnorm_backward", "w");
  arg_shape(ctx, dw, {x.size(1)}, "rmsnorm_backward", "dw");
  dtype_is(dw, DType::F32, "rmsnorm_backward", "dw");
  arg_shape(ctx, rstd, {x.size(0)}, "rmsnorm_backward", "rstd");
  dtype_is(rstd, DType::F32, "rmsnorm_backward", "rstd");
  ctx.backend().rmsnorm_backward(dx, dw, dy, x, w, rstd);
}

// ---- RoPE ----------------------------------------------------------------------------

namespace {
// cos, sin (P, R/2) fp32 for tokens (B,T) of head dim D: P == T (row t) or P == B*T (row b*T + t).
void check_rope_tables(const Context& ctx, const Tensor& cos, const Tensor& sin, int64_t B, int64_t T, int64_t D,
                       const char* op) {
  arg_ndim(ctx, cos, 2, op, "cos");
  arg_shape(ctx, sin, cos.shape(), op, "sin");
  dtype_is(cos, DType::F32, op, "cos");
  dtype_is(sin, DType::F32, op, "sin");
  PRIMUS_CHECK(cos.size(0) == T || cos.size(0) == B * T,
               "{}: rope tables have {} rows, expected T = {} (positions shared by the batch) or B*T = {} (one row "
               "per token)",
               op, cos.size(0), T, B * T);
  PRIMUS_CHECK(2 * cos.size(1) <= D, "{}: rope tables rotate {} dims but heads have only {}", op,
               2 * cos.size(1), D);
}
}  // namespace

void rope_forward(Context& ctx, Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  arg_ndim(ctx, x, 4, "rope_forward", "x");
  arg_shape(ctx, out, x.shape(), "rope_forward", "out");
  same_dtype(out, x, "rope_forward", "out", "x");
  check_rope_tables(ctx, cos, sin, x.size(0), x.size(1), x.size(3), "rope_forward");
  ctx.backend().rope_forward(out, x, cos, sin);
}

void rope_backward(Context& ctx, Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) {
  arg_ndim(ctx, dout, 4, "rope_backward", "dout");
  arg_shape(ctx, dx, dout.shape(), "rope_backward", "dx");
  same_dtype(dx, dout, "rope_backward", "dx", "dout");
  check_rope_tables(ctx, cos, sin, dout.size(0), dout.size(1), dout.size(3), "rope_backward");
  ctx.backend().rope_backward(dx, dout, cos, sin);
}

void rope_gather_tables(Context& ctx, Tensor& cos_out, Tensor& sin_out, const Tensor& cos_table,
                        const Tensor& sin_table, const Tensor& positions) {
  const char* op = "rope_gather_tables";
  arg_ndim(ctx, cos_table, 2, op, "cos_table");
  arg_shape(ctx, sin_table, cos_table.shape(), op, "sin_table");
  dtype_is(cos_table, DType::F32, op, "cos_table");
  dtype_is(sin_table, DType::F32, op, "sin_table");
  arg(ctx, positions, op, "positions");
  dtype_is(positions, DType::I32, op, "positions");
  PRIMUS_CHECK(positions.ndim() == 1 || positions.ndim() == 2, "{}: tensor 'positions' must be (N) or (B,T), got {}",
               op, positions.describe());
  const int64_t N = positions.numel(), half = cos_table.size(1);
  arg_shape(ctx, cos_out, {N, half}, op, "cos_out");
  arg_shape(ctx, sin_out, {N, half}, op, "sin_out");
  dtype_is(cos_out, DType::F32, op, "cos_out");
  dtype_is(sin_out, DType::F32, op, "sin_out");
  ctx.backend().rope_gather_tables(cos_out, sin_out, cos_table, sin_table, positions);
}

namespace {
void check_qkv(const Context& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& qkv,
               const Tensor& cos, const Tensor& sin, const char* op, const char* prefix) {
  const std::string nq = std::string(prefix) + "q", nk = std::string(prefix) + "k", nv = std::string(prefix) + "v";
  const std::string nqkv = std::string(prefix) + "qkv";
  arg_ndim(ctx, q, 4, op, nq.c_str());
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  arg_ndim(ctx, k, 4, op, nk.c_str());
  const int64_t Hkv = k.size(2);
  arg_shape(ctx, k, {B, T, Hkv, D}, op, nk.c_str());
  arg_shape(ctx, v, {B, T, Hkv, D}, op, nv.c_str());
  arg_shape(ctx, qkv, {B * T, (Hq + 2 * Hkv) * D}, op, nqkv.c_str());
  same_dtype(q, k, op, nq.c_str(), nk.c_str());
  same_dtype(q, v, op, nq.c_str(), nv.c_str());
  same_dtype(q, qkv, op, nq.c_str(), nqkv.c_str());
  check_rope_tables(ctx, cos, sin, B, T, D, op);
}
}  // namespace

void qkv_split_rope_forward(Context& ctx, Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv, const Tensor& cos,
                            const Tensor& sin) {
  check_qkv(ctx, q, k, v, qkv, cos, sin, "qkv_split_rope_forward", "");
  ctx.backend().qkv_split_rope_forward(q, k, v, qkv, cos, sin);
}

void qkv_split_rope_backward(Context& ctx, Tensor& dqkv, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                             const Tensor& cos, const Tensor& sin) {
  check_qkv(ctx, dq, dk, dv, dqkv, cos, sin, "qkv_split_rope_backward", "d");
  ctx.backend().qkv_split_rope_backward(dqkv, dq, dk, dv, cos, sin);
}

namespace {
// q, k (B,T,H,Dq), v (B,T,H,Dv), q_proj (N, H*Dq), kv_up (N, H*(Dn+Dv)), kv_down (N, L+Dr) with
// Dr = 2 * cos.size(1) <= Dq and L >= 0.
void check_mla(const Context& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_proj,
               const Tensor& kv_up, int64_t kv_down_width, const Tensor& cos, const Tensor& sin, const char* op,
               const char* p) {
  const std::string nq = std::string(p) + "q", nk = std::string(p) + "k", nv = std::string(p) + "v";
  const std::string nqp = std::string(p) + "q_proj", nkv = std::string(p) + "kv_up";
  arg_ndim(ctx, q, 4, op, nq.c_str());
  arg_ndim(ctx, v, 4, op, nv.c_str());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dq = q.size(3), Dv = v.size(3);
  arg_shape(ctx, k, q.shape(), op, nk.c_str());
  arg_shape(ctx, v, {B, T, H, Dv}, op, nv.c_str());
  check_rope_tables(ctx, cos, sin, B, T, Dq, op);
  const int64_t Dr = 2 * cos.size(1), Dn = Dq - Dr;
  PRIMUS_CHECK(Dr > 0, "{}: the rope tables rotate no dims", op);
  arg_shape(ctx, q_proj, {B * T, H * Dq}, op, nqp.c_str());
  arg_shape(ctx, kv_up, {B * T, H * (Dn + Dv)}, op, nkv.c_str());
  PRIMUS_CHECK(kv_down_width >= Dr, "{}: kv_down has {} columns, fewer than the {} rotary key dims", op,
               kv_down_width, Dr);
  for (const Tensor* t : {&k, &v, &q_proj, &kv_up}) same_dtype(q, *t, op, nq.c_str(), "the other tensors");
}
}  // namespace

void mla_qkv_rope_forward(Context& ctx, Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                          const Tensor& kv_down, const Tensor& cos, const Tensor& sin) {
  arg_ndim(ctx, kv_down, 2, "mla_qkv_rope_forward", "kv_down");
  check_mla(ctx, q, k, v, q_proj, kv_up, kv_down.size(1), cos, sin, "mla_qkv_rope_forward", "");
  PRIMUS_CHECK(kv_down.size(0) == q_proj.size(0), "mla_qkv_rope_forward: kv_down {} needs {} rows",
               kv_down.describe(), q_proj.size(0));
  same_dtype(q, kv_down, "mla_qkv_rope_forward", "q", "kv_down");
  ctx.backend().mla_qkv_rope_forward(q, k, v, q_proj, kv_up, kv_down, cos, sin);
}

void mla_qkv_rope_backward(Context& ctx, Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq,
                           const Tensor& dk, const Tensor& dv, const Tensor& cos, const Tensor& sin) {
  arg_ndim(ctx, dk_pe, 2, "mla_qkv_rope_backward", "dk_pe");
  check_mla(ctx, dq, dk, dv, dq_proj, dkv_up, dk_pe.size(1), cos, sin, "mla_qkv_rope_backward", "d");
  arg_shape(ctx, dk_pe, {dq_proj.size(0), 2 * cos.size(1)}, "mla_qkv_rope_backward", "dk_pe");
  same_dtype(dq, dk_pe, "mla_qkv_rope_backward", "dq", "dk_pe");
  ctx.backend().mla_qkv_rope_backward(dq_proj, dkv_up, dk_pe, dq, dk, dv, cos, sin);
}

// ---- attention -----------------------------------------------------------------------

namespace {
void check_attention(const Context& ctx, const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                     const Tensor& v, const Tensor* segments, const char* op) {
  arg_ndim(ctx, q, 4, op, "q");
  arg_ndim(ctx, k, 4, op, "k");
  arg_ndim(ctx, v, 4, op, "v");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2), Dv = v.size(3);
  float_dtype(q, op, "q");
  arg_shape(ctx, k, {B, T, Hkv, D}, op, "k");
  arg_shape(ctx, v, {B, T, Hkv, Dv}, op, "v");
  PRIMUS_CHECK(Hkv > 0 && Hq % Hkv == 0, "{}: {} query heads are not a multiple of {} kv heads", op, Hq, Hkv);
  arg_shape(ctx, out, {B, T, Hq, Dv}, op, "out");
  arg_shape(ctx, lse, {B, Hq, T}, op, "lse");
  dtype_is(lse, DType::F32, op, "lse");
  same_dtype(q, k, op, "q", "k");
  same_dtype(q, v, op, "q", "v");
  same_dtype(q, out, op, "q", "out");
  if (segments) {
    arg_shape(ctx, *segments, {B, T}, op, "segments");
    dtype_is(*segments, DType::I32, op, "segments");
  }
}
}  // namespace

void attention_forward(Context& ctx, Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       float scale, bool causal, const Tensor* segments) {
  check_attention(ctx, out, lse, q, k, v, segments, "attention_forward");
  ctx.backend().attention_forward(out, lse, q, k, v, scale, causal, segments);
}

void attention_backward(Context& ctx, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, float scale,
                        bool causal, const Tensor* segments) {
  check_attention(ctx, out, lse, q, k, v, segments, "attention_backward");
  arg_shape(ctx, dout, out.shape(), "attention_backward", "dout");
  arg_shape(ctx, dq, q.shape(), "attention_backward", "dq");
  arg_shape(ctx, dk, k.shape(), "attention_backward", "dk");
  arg_shape(ctx, dv, v.shape(), "attention_backward", "dv");
  for (auto [t, name] : {std::pair{&dout, "dout"}, {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}})
    same_dtype(q, *t, "attention_backward", "q", name);
  ctx.backend().attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale, causal, segments);
}

void attention_merge(Context& ctx, Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                     int64_t t0) {
  const char* op = "attention_merge";
  arg_ndim(ctx, acc_out, 4, op, "acc_out");
  arg_ndim(ctx, part_out, 4, op, "part_out");
  const int64_t B = acc_out.size(0), T = acc_out.size(1), H = acc_out.size(2), Dv = acc_out.size(3);
  const int64_t Tp = part_out.size(1);
  float_dtype(acc_out, op, "acc_out");
  PRIMUS_CHECK(t0 >= 0 && t0 + Tp <= T, "{}: rows [{}, {}) of part_out do not fit the {} rows of acc_out", op, t0,
               t0 + Tp, T);
  arg_shape(ctx, part_out, {B, Tp, H, Dv}, op, "part_out");
  arg_shape(ctx, acc_lse, {B, H, T}, op, "acc_lse");
  arg_shape(ctx, part_lse, {B, H, Tp}, op, "part_lse");
  dtype_is(acc_lse, DType::F32, op, "acc_lse");
  dtype_is(part_lse, DType::F32, op, "part_lse");
  same_dtype(acc_out, part_out, op, "acc_out", "part_out");
  ctx.backend().attention_merge(acc_out, acc_lse, part_out, part_lse, t0);
}

// ---- SwiGLU --------------------------------------------------------------------------

void swiglu_forward(Context& ctx, Tensor& out, const Tensor& gate_up) {
  arg(ctx, gate_up, "swiglu_forward", "gate_up");
  arg(ctx, out, "swiglu_forward", "out");
  PRIMUS_CHECK(gate_up.ndim() >= 1 && gate_up.size(-1) == 2 * out.size(-1) && rows_of(gate_up) == rows_of(out),
               "swiglu_forward: gate_up {} must be [N, 2F] for out {} [N, F]", gate_up.describe(), out.describe());
  same_dtype(out, gate_up, "swiglu_forward", "out", "gate_up");
  ctx.backend().swiglu_forward(out, gate_up);
}

void swiglu_backward(Context& ctx, Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) {
  arg(ctx, gate_up, "swiglu_backward", "gate_up");
  arg(ctx, dout, "swiglu_backward", "dout");
  arg_shape(ctx, dgate_up, gate_up.shape(), "swiglu_backward", "dgate_up");
  PRIMUS_CHECK(gate_up.size(-1) == 2 * dout.size(-1) && rows_of(gate_up) == rows_of(dout),
               "swiglu_backward: gate_up {} must be [N, 2F] for dout {} [N, F]", gate_up.describe(), dout.describe());
  ctx.backend().swiglu_backward(dgate_up, dout, gate_up);
}

// ---- cross-entropy ---------------------------------------------------------------------

void cross_entropy_forward(Context& ctx, Tensor& losses, const Tensor& logits, const Tensor& targets) {
  arg_ndim(ctx, logits, 2, "cross_entropy_forward", "logits");
  arg_shape(ctx, losses, {logits.size(0)}, "cross_entropy_forward", "losses");
  dtype_is(losses, DType::F32, "cross_entropy_forward", "losses");
  arg(ctx, targets, "cross_entropy_forward", "targets");
  dtype_is(targets, DType::I32, "cross_entropy_forward", "targets");
  PRIMUS_CHECK(targets.numel() == logits.size(0), "cross_entropy_forward: {} targets for {} rows of logits",
               targets.numel(), logits.size(0));
  ctx.backend().cross_entropy_forward(losses, logits, targets);
}

void cross_entropy_fused(Context& ctx, Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                         const Tensor& dloss) {
  arg_ndim(ctx, logits_to_grad, 2, "cross_entropy_fused", "logits_to_grad");
  const int64_t N = logits_to_grad.size(0);
  arg_shape(ctx, losses, {N}, "cross_entropy_fused", "losses");
  dtype_is(losses, DType::F32, "cross_entropy_fused", "losses");
  arg(ctx, targets, "cross_entropy_fused", "targets");
  dtype_is(targets, DType::I32, "cross_entropy_fused", "targets");
  PRIMUS_CHECK(targets.numel() == N, "cross_entropy_fused: {} targets for {} rows of logits", targets.numel(), N);
  arg(ctx, dloss, "cross_entropy_fused", "dloss");
  dtype_is(dloss, DType::F32, "cross_entropy_fused", "dloss");
  PRIMUS_CHECK(dloss.numel() == N, "cross_entropy_fused: {} dloss values for {} rows of logits", dloss.numel(), N);
  ctx.backend().cross_entropy_fused(losses, logits_to_grad, targets, dloss);
}

void cross_entropy_shard_stats(Context& ctx, Tensor& stats, const Tensor& logits, const Tensor& targets) {
  arg_ndim(ctx, logits, 2, "cross_entropy_shard_stats", "logits");
  float_dtype(logits, "cross_entropy_shard_stats", "logits");
  const int64_t N = logits.size(0);
  arg_shape(ctx, stats, {3, N}, "cross_entropy_shard_stats", "stats");
  dtype_is(stats, DType::F32, "cross_entropy_shard_stats", "stats");
  arg(ctx, targets, "cross_entropy_shard_stats", "targets");
  dtype_is(targets, DType::I32, "cross_entropy_shard_stats", "targets");
  PRIMUS_CHECK(targets.numel() == N, "cross_entropy_shard_stats: {} targets for {} rows of logits", targets.numel(),
               N);
  ctx.backend().cross_entropy_shard_stats(stats, logits, targets);
}

void cross_entropy_shard_finish(Context& ctx, Tensor& losses, Tensor* logits_to_grad, const Tensor& gathered_stats,
                                const Tensor& targets, const Tensor& dloss) {
  arg_ndim(ctx, gathered_stats, 3, "cross_entropy_shard_finish", "gathered_stats");
  dtype_is(gathered_stats, DType::F32, "cross_entropy_shard_finish", "gathered_stats");
  const int64_t N = gathered_stats.size(2);
  PRIMUS_CHECK(gathered_stats.size(1) == 3, "cross_entropy_shard_finish: gathered_stats {} must be [ranks, 3, N]",
               gathered_stats.describe());
  arg_shape(ctx, losses, {N}, "cross_entropy_shard_finish", "losses");
  dtype_is(losses, DType::F32, "cross_entropy_shard_finish", "losses");
  arg(ctx, targets, "cross_entropy_shard_finish", "targets");
  dtype_is(targets, DType::I32, "cross_entropy_shard_finish", "targets");
  PRIMUS_CHECK(targets.numel() == N, "cross_entropy_shard_finish: {} targets for {} rows", targets.numel(), N);
  if (logits_to_grad != nullptr) {
    arg_ndim(ctx, *logits_to_grad, 2, "cross_entropy_shard_finish", "logits_to_grad");
    float_dtype(*logits_to_grad, "cross_entropy_shard_finish", "logits_to_grad");
    PRIMUS_CHECK(logits_to_grad->size(0) == N, "cross_entropy_shard_finish: logits_to_grad {} must have {} rows",
                 logits_to_grad->describe(), N);
    arg(ctx, dloss, "cross_entropy_shard_finish", "dloss");
    dtype_is(dloss, DType::F32, "cross_entropy_shard_finish", "dloss");
    PRIMUS_CHECK(dloss.numel() == N, "cross_entropy_shard_finish: {} dloss values for {} rows", dloss.numel(), N);
  }
  ctx.backend().cross_entropy_shard_finish(losses, logits_to_grad, gathered_stats, targets, dloss);
}

// ---- optimizer -------------------------------------------------------------------------

// ---- mixture of experts ---------------------------------------------------------------

namespace {

void check_routing(const Context& ctx, const Tensor& logits, const MoeRouting& r, const char* op) {
  arg_ndim(ctx, logits, 2, op, "logits");
  dtype_is(logits, DType::F32, op, "logits");
  const int64_t E = logits.size(1);
  PRIMUS_CHECK(r.topk >= 1 && r.topk <= E && r.topk <= 256, "{}: top-k {} must be in [1, min(num_experts {}, 256)]",
               op, r.topk, E);
  if (r.num_groups > 0 && !r.group_max)
    PRIMUS_CHECK(E % r.num_groups == 0 && r.group_topk >= 1 && r.group_topk <= r.num_groups &&
                     r.topk % r.group_topk == 0 && r.topk / r.group_topk <= E / r.num_groups,
                 "{}: group-limited routing of top-{} over {} experts in {} groups, {} groups per token does not fit "
                 "(groups must divide the experts, group_topk the top-k, and each chosen group must hold top-k / "
                 "group_topk experts)",
                 op, r.topk, E, r.num_groups, r.group_topk);
  if (r.num_groups > 0 && r.group_max)
    PRIMUS_CHECK(E % r.num_groups == 0 && r.group_topk >= 1 && r.group_topk <= r.num_groups &&
                     r.topk <= r.group_topk * (E / r.num_groups),
                 "{}: group-limited routing (groups scored by their best expert) of top-{} over {} experts in {} "
                 "groups, {} groups per token does not fit (groups must divide the experts and the chosen groups "
                 "must hold at least top-k experts)",
                 op, r.topk, E, r.num_groups, r.group_topk);
}

void check_pairs(const Context& ctx, const Tensor& t, int64_t N, int64_t k, DType d, const char* op, const char* name) {
  arg_shape(ctx, t, {N, k}, op, name);
  dtype_is(t, d, op, name);
}

}  // namespace

void moe_topk_forward(Context& ctx, Tensor& probs, Tensor& indices, const Tensor& logits, const Tensor& bias,
                      const MoeRouting& r) {
  check_routing(ctx, logits, r, "moe_topk_forward");
  const int64_t N = logits.size(0), E = logits.size(1);
  check_pairs(ctx, probs, N, r.topk, DType::F32, "moe_topk_forward", "probs");
  check_pairs(ctx, indices, N, r.topk, DType::I32, "moe_topk_forward", "indices");
  if (bias.defined()) {
    arg_shape(ctx, bias, {E}, "moe_topk_forward", "bias");
    dtype_is(bias, DType::F32, "moe_topk_forward", "bias");
    PRIMUS_CHECK(r.sigmoid, "moe_topk_forward: an expert bias needs sigmoid scores (Megatron applies it there only)");
  }
  ctx.backend().moe_topk_forward(probs, indices, logits, bias, r);
}

void moe_topk_backward(Context& ctx, Tensor& d_logits, const Tensor& d_probs, const Tensor& logits,
                       const Tensor& indices, const MoeRouting& r) {
  check_routing(ctx, logits, r, "moe_topk_backward");
  const int64_t N = logits.size(0);
  arg_shape(ctx, d_logits, logits.shape(), "moe_topk_backward", "d_logits");
  dtype_is(d_logits, DType::F32, "moe_topk_backward", "d_logits");
  check_pairs(ctx, d_probs, N, r.topk, DType::F32, "moe_topk_backward", "d_probs");
  check_pairs(ctx, indices, N, r.topk, DType::I32, "moe_topk_backward", "indices");
  ctx.backend().moe_topk_backward(d_logits, d_probs, logits, indices, r);
}

void moe_aux_stats(Context& ctx, Tensor& score_sums, Tensor& counts, Tensor& lse_sq, const Tensor& logits,
                   int64_t topk, bool sigmoid) {
  arg_ndim(ctx, logits, 2, "moe_aux_stats", "logits");
  dtype_is(logits, DType::F32, "moe_aux_stats", "logits");
  const int64_t N = logits.size(0), E = logits.size(1);
  arg_ndim(ctx, score_sums, 2, "moe_aux_stats", "score_sums");
  const int64_t G = score_sums.size(0);
  PRIMUS_CHECK(G >= 1 && N % G == 0 && score_sums.size(1) == E, "moe_aux_stats: score_sums {} must be (G, {}) with G "
               "dividing the {} tokens", score_sums.describe(), E, N);
  arg_shape(ctx, counts, score_sums.shape(), "moe_aux_stats", "counts");
  arg_shape(ctx, lse_sq, {1}, "moe_aux_stats", "lse_sq");
  for (const Tensor* t : {&score_sums, &counts, &lse_sq}) dtype_is(*t, DType::F32, "moe_aux_stats", "statistics");
  PRIMUS_CHECK(topk >= 1 && topk <= E, "moe_aux_stats: top-k {} outside [1, {}]", topk, E);
  ctx.backend().moe_aux_stats(score_sums, counts, lse_sq, logits, topk, sigmoid);
}

void moe_aux_backward(Context& ctx, Tensor& d_logits, const Tensor& logits, const Tensor& score_grad, float z_weight,
                      bool sigmoid) {
  arg_ndim(ctx, logits, 2, "moe_aux_backward", "logits");
  arg_shape(ctx, d_logits, logits.shape(), "moe_aux_backward", "d_logits");
  arg_ndim(ctx, score_grad, 2, "moe_aux_backward", "score_grad");
  PRIMUS_CHECK(score_grad.size(1) == logits.size(1) && logits.size(0) % score_grad.size(0) == 0,
               "moe_aux_backward: score_grad {} must be (G, E) for logits {}", score_grad.describe(), logits.describe());
  for (const Tensor* t : std::initializer_list<const Tensor*>{&d_logits, &logits, &score_grad})
    dtype_is(*t, DType::F32, "moe_aux_backward", "tensors");
  ctx.backend().moe_aux_backward(d_logits, logits, score_grad, z_weight, sigmoid);
}

void moe_dispatch_plan(Context& ctx, Tensor& row_of, Tensor& pair_of_row, Tensor& tokens_per_expert,
                       const Tensor& indices, const Tensor& probs, int64_t capacity, bool drop_by_probs, bool pad) {
  arg_ndim(ctx, indices, 2, "moe_dispatch_plan", "indices");
  const int64_t N = indices.size(0), k = indices.size(1);
  check_pairs(ctx, indices, N, k, DType::I32, "moe_dispatch_plan", "indices");
  check_pairs(ctx, probs, N, k, DType::F32, "moe_dispatch_plan", "probs");
  check_pairs(ctx, row_of, N, k, DType::I32, "moe_dispatch_plan", "row_of");
  arg_ndim(ctx, tokens_per_expert, 1, "moe_dispatch_plan", "tokens_per_expert");
  arg_ndim(ctx, pair_of_row, 1, "moe_dispatch_plan", "pair_of_row");
  dtype_is(tokens_per_expert, DType::I32, "moe_dispatch_plan", "tokens_per_expert");
  dtype_is(pair_of_row, DType::I32, "moe_dispatch_plan", "pair_of_row");
  const int64_t E = tokens_per_expert.size(0);
  PRIMUS_CHECK(!pad || capacity >= 0, "moe_dispatch_plan: padding to capacity needs a capacity");
  const int64_t most = pad ? E * capacity : capacity >= 0 ? std::min(N * k, E * capacity) : N * k;
  PRIMUS_CHECK(pair_of_row.size(0) >= most, "moe_dispatch_plan: pair_of_row holds {} rows, the plan may need {}",
               pair_of_row.size(0), most);
  ctx.backend().moe_dispatch_plan(row_of, pair_of_row, tokens_per_expert, indices, probs, capacity, drop_by_probs,
                                  pad);
}

void moe_permute(Context& ctx, Tensor& x_perm, const Tensor& x, const Tensor& pair_of_row, int64_t topk) {
  arg_ndim(ctx, x, 2, "moe_permute", "x");
  arg_shape(ctx, x_perm, {pair_of_row.numel(), x.size(1)}, "moe_permute", "x_perm");
  arg(ctx, pair_of_row, "moe_permute", "pair_of_row");
  dtype_is(pair_of_row, DType::I32, "moe_permute", "pair_of_row");
  same_dtype(x_perm, x, "moe_permute", "x_perm", "x");
  PRIMUS_CHECK(topk >= 1, "moe_permute: top-k must be >= 1, got {}", topk);
  ctx.backend().moe_permute(x_perm, x, pair_of_row, topk);
}

void moe_permute_backward(Context& ctx, Tensor& dx, const Tensor& d_x_perm, const Tensor& row_of) {
  arg_ndim(ctx, dx, 2, "moe_permute_backward", "dx");
  arg_ndim(ctx, d_x_perm, 2, "moe_permute_backward", "d_x_perm");
  check_pairs(ctx, row_of, dx.size(0), row_of.size(1), DType::I32, "moe_permute_backward", "row_of");
  PRIMUS_CHECK(d_x_perm.size(1) == dx.size(1), "moe_permute_backward: d_x_perm {} and dx {} differ in width",
               d_x_perm.describe(), dx.describe());
  same_dtype(dx, d_x_perm, "moe_permute_backward", "dx", "d_x_perm");
  ctx.backend().moe_permute_backward(dx, d_x_perm, row_of);
}

void moe_unpermute(Context& ctx, Tensor& y, const Tensor& y_perm, const Tensor& row_of, const Tensor& probs) {
  arg_ndim(ctx, y, 2, "moe_unpermute", "y");
  arg_ndim(ctx, y_perm, 2, "moe_unpermute", "y_perm");
  check_pairs(ctx, row_of, y.size(0), row_of.size(1), DType::I32, "moe_unpermute", "row_of");
  check_pairs(ctx, probs, y.size(0), row_of.size(1), DType::F32, "moe_unpermute", "probs");
  PRIMUS_CHECK(y_perm.size(1) == y.size(1), "moe_unpermute: y_perm {} and y {} differ in width", y_perm.describe(),
               y.describe());
  same_dtype(y, y_perm, "moe_unpermute", "y", "y_perm");
  ctx.backend().moe_unpermute(y, y_perm, row_of, probs);
}

void moe_unpermute_backward(Context& ctx, Tensor& d_y_perm, Tensor& d_probs, const Tensor& dy, const Tensor& y_perm,
                            const Tensor& row_of, const Tensor& pair_of_row, const Tensor& probs) {
  arg_ndim(ctx, dy, 2, "moe_unpermute_backward", "dy");
  const int64_t N = dy.size(0), k = row_of.size(1);
  arg_shape(ctx, y_perm, {pair_of_row.numel(), dy.size(1)}, "moe_unpermute_backward", "y_perm");
  arg_shape(ctx, d_y_perm, y_perm.shape(), "moe_unpermute_backward", "d_y_perm");
  check_pairs(ctx, row_of, N, k, DType::I32, "moe_unpermute_backward", "row_of");
  check_pairs(ctx, probs, N, k, DType::F32, "moe_unpermute_backward", "probs");
  check_pairs(ctx, d_probs, N, k, DType::F32, "moe_unpermute_backward", "d_probs");
  dtype_is(pair_of_row, DType::I32, "moe_unpermute_backward", "pair_of_row");
  same_dtype(dy, y_perm, "moe_unpermute_backward", "dy", "y_perm");
  same_dtype(d_y_perm, y_perm, "moe_unpermute_backward", "d_y_perm", "y_perm");
  ctx.backend().moe_unpermute_backward(d_y_perm, d_probs, dy, y_perm, row_of, pair_of_row, probs);
}

namespace {

void check_grouped(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& y,
                   const std::vector<int64_t>& rows, const char* op) {
  arg_ndim(ctx, w, 3, op, "w");
  arg_ndim(ctx, x, 2, op, "x");
  arg_ndim(ctx, y, 2, op, "y");
  same_dtype(x, w, op, "x", "w");
  float_dtype(x, op, "x");
  PRIMUS_CHECK(static_cast<int64_t>(rows.size()) == w.size(0), "{}: {} row counts for {} experts (w {})", op,
               rows.size(), w.size(0), w.describe());
  int64_t total = 0;
  for (int64_t r : rows) {
    PRIMUS_CHECK(r >= 0, "{}: a negative row count {}", op, r);
    total += r;
  }
  PRIMUS_CHECK(x.size(1) == w.size(2) && y.size(1) == w.size(1) && total <= x.size(0) && x.size(0) == y.size(0),
               "{}: x {} and y {} do not match w {} for {} rows", op, x.describe(), y.describe(), w.describe(), total);
}

}  // namespace

void grouped_linear_forward(Context& ctx, Tensor& y, const Tensor& x, const Tensor& w,
                            const std::vector<int64_t>& rows) {
  check_grouped(ctx, x, w, y, rows, "grouped_linear_forward");
  same_dtype(y, x, "grouped_linear_forward", "y", "x");
  ctx.backend().grouped_linear_forward(y, x, w, rows);
}

void grouped_linear_backward(Context& ctx, Tensor* dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                             const std::vector<int64_t>& rows, bool accumulate_dw) {
  check_grouped(ctx, x, w, dy, rows, "grouped_linear_backward");
  if (!dw.defined()) {  // a frozen expert weight (LoRA's base): d x only, dx_e = dy_e w_e
    if (dx == nullptr || !dx->defined()) return;
    arg_shape(ctx, *dx, x.shape(), "grouped_linear_backward", "dx");
    const int64_t out_f = w.size(1), in_f = w.size(2);
    int64_t r0 = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      const int64_t r1 = r0 + rows[e];
      if (r1 > r0) {
        Tensor dxe = dx->rows(r0, r1);
        const Tensor we = w.rows(static_cast<int64_t>(e), static_cast<int64_t>(e) + 1).view({out_f, in_f});
        matmul(ctx, dxe, dy.rows(r0, r1), Transpose::No, we, Transpose::No, 1.f, 0.f);
      }
      r0 = r1;
    }
    return;
  }
  arg_shape(ctx, dw, w.shape(), "grouped_linear_backward", "dw");
  PRIMUS_CHECK(dw.dtype() == DType::F32 || dw.dtype() == w.dtype(),
               "grouped_linear_backward: dw {} must be fp32 or w's dtype", dw.describe());
  Tensor none;
  Tensor& dx_ref = dx != nullptr ? *dx : none;
  if (dx_ref.defined()) arg_shape(ctx, dx_ref, x.shape(), "grouped_linear_backward", "dx");
  ctx.backend().grouped_linear_backward(dx_ref, dw, dy, x, w, rows, accumulate_dw);
}

void adamw_step(Context& ctx, std::vector<AdamWTensor>& params, const AdamWParams& p) {
  PRIMUS_CHECK(p.step >= 1, "adamw_step: step is 1-based, got {}", p.step);
  for (size_t i = 0; i < params.size(); ++i) {
    const AdamWTensor& t = params[i];
    const std::string what = fmt::format("adamw_step (param #{})", i);
    const bool split = t.master_remainder.defined();
    // The parameter's shape: of its fp32 master, or of the bf16 model weight holding its high half.
    const Tensor& shape_of = split ? t.model : t.master;
    if (split) {
      PRIMUS_CHECK(!t.master.defined(), "{}: give either an fp32 master or master_remainder, not both", what);
      PRIMUS_CHECK(t.model.defined(), "{}: master_remainder needs the bf16 model weight that holds the master's high "
                   "half", what);
      arg(ctx, t.model, what.c_str(), "model");
      dtype_is(t.model, DType::BF16, what.c_str(), "model");
      arg_shape(ctx, t.master_remainder, t.model.shape(), what.c_str(), "master_remainder");
      dtype_is(t.master_remainder, DType::I16, what.c_str(), "master_remainder");
    } else {
      arg(ctx, t.master, what.c_str(), "master");
      dtype_is(t.master, DType::F32, what.c_str(), "master");
    }
    for (auto [x, name] : {std::pair{&t.grad, "grad"}, {&t.exp_avg, "exp_avg"}, {&t.exp_avg_sq, "exp_avg_sq"}})
      arg_shape(ctx, *x, shape_of.shape(), what.c_str(), name);
    for (auto [x, name] : {std::pair{&t.exp_avg, "exp_avg"}, {&t.exp_avg_sq, "exp_avg_sq"}})
      PRIMUS_CHECK(x->dtype() == DType::F32 || x->dtype() == DType::BF16, "{}: tensor '{}' must be fp32 or bf16, got {}",
                   what, name, x->describe());
    // The CUDA backend also reads bf16 gradients (grad_reduce_in_bf16).
    const bool cuda = ctx.device() == Device::CUDA;
    PRIMUS_CHECK(t.grad.dtype() == DType::F32 || (cuda && t.grad.dtype() == DType::BF16),
                 "{}: tensor 'grad' must be fp32{}, got {}", what, cuda ? " or bf16" : "", t.grad.describe());
    if (t.model.defined() && !split) {
      arg(ctx, t.model, what.c_str(), "model");
      PRIMUS_CHECK(t.model.numel() == t.master.numel(), "{}: model copy {} does not match master {}", what,
                   t.model.describe(), t.master.describe());
    }
  }
  ctx.backend().adamw_step(params, p);
}

double sum_of_squares(Context& ctx, const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) arg(ctx, t, "sum_of_squares", "tensors[i]");
  return ctx.backend().sum_of_squares(tensors);
}

int64_t count_zeros(Context& ctx, const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) arg(ctx, t, "count_zeros", "tensors[i]");
  return ctx.backend().count_zeros(tensors);
}

// ---- RoPE tables -------------------------------------------------------------------------

// Llama 3.1 frequency scaling (facts from Meta's release): with wavelength 2*pi/f and
// L = original_max_position_embeddings, frequencies whose wavelength is shorter than
// L/high_freq_factor are kept, longer than L/low_freq_factor are divided by `factor`,
// and in between interpolated with smooth = (L/wavelength - low) / (high - low):
//   f' = (1 - smooth) * f / factor + smooth * f.
std::vector<float> rope_inv_freq(int64_t rotary_dim, float base, const RopeScaling& scaling) {
  PRIMUS_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, "rope_inv_freq: rotary dim must be even and > 0, got {}",
               rotary_dim);
  PRIMUS_CHECK(base > 0.f, "rope_inv_freq: rotary_base must be > 0, got {}", base);
  PRIMUS_CHECK(!(scaling.enabled && scaling.yarn), "rope_inv_freq: Llama 3.1 scaling and YaRN are exclusive");
  std::vector<float> inv(static_cast<size_t>(rotary_dim / 2));
  // YaRN (DeepSeek's reference): the dim whose wavelength makes `rotations` turns over the
  // original context is R ln(L / (rotations 2 pi)) / (2 ln base); the ramp runs from the
  // floor of beta_fast's to the ceiling of beta_slow's, clamped to [0, R - 1].
  double ramp_low = 0, ramp_high = 0;
  if (scaling.yarn) {
    PRIMUS_CHECK(scaling.yarn_factor >= 1.f && scaling.beta_fast > 0.f && scaling.beta_slow > 0.f,
                 "YaRN: need rotary_scaling_factor >= 1 ({}) and beta_fast ({}), beta_slow ({}) > 0",
                 scaling.yarn_factor, scaling.beta_fast, scaling.beta_slow);
    const double R = static_cast<double>(rotary_dim), L = static_cast<double>(scaling.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return R * std::log(L / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(static_cast<double>(base)));
    };
    ramp_low = std::max(std::floor(correction_dim(scaling.beta_fast)), 0.0);
    ramp_high = std::min(std::ceil(correction_dim(scaling.beta_slow)), R - 1);
    if (ramp_high == ramp_low) ramp_high += 0.001;
  }
  for (int64_t i = 0; i < rotary_dim / 2; ++i) {
    double f = std::pow(static_cast<double>(base), -static_cast<double>(2 * i) / static_cast<double>(rotary_dim));
    if (scaling.yarn) {
      // extrapolate (keep f) below ramp_low, interpolate (f / factor) above ramp_high
      const double ramp = std::clamp((static_cast<double>(i) - ramp_low) / (ramp_high - ramp_low), 0.0, 1.0);
      f = f / scaling.yarn_factor * ramp + f * (1.0 - ramp);
    }
    if (scaling.enabled) {
      PRIMUS_CHECK(scaling.high_freq_factor > scaling.low_freq_factor && scaling.factor > 0.f,
                   "rope scaling: need high_freq_factor ({}) > low_freq_factor ({}) and factor ({}) > 0",
                   scaling.high_freq_factor, scaling.low_freq_factor, scaling.factor);
      const double L = static_cast<double>(scaling.original_max_position_embeddings);
      const double wavelen = 2.0 * std::numbers::pi / f;
      const double low_wavelen = L / scaling.low_freq_factor, high_wavelen = L / scaling.high_freq_factor;
      if (wavelen > low_wavelen) {
        f /= scaling.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (L / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }
    }
    inv[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv;
}

double yarn_mscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

// cos/sin (T, R/2) of the angle t * inv_freq[i], evaluated in double and rounded once
// (an fp32 angle would lose ~1e-5 rad at position 100s).
void rope_tables(Tensor& cos, Tensor& sin, int64_t seq_len, const std::vector<float>& inv_freq, float scale) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  Tensor c = Tensor::empty({seq_len, half}, DType::F32), s = Tensor::empty({seq_len, half}, DType::F32);
  for (int64_t t = 0; t < seq_len; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(t) * static_cast<double>(inv_freq[static_cast<size_t>(i)]);
      c.data<float>()[t * half + i] = static_cast<float>(std::cos(angle) * scale);
      s.data<float>()[t * half + i] = static_cast<float>(std::sin(angle) * scale);
    }
  const Device dev = cos.defined() ? cos.device() : Device::CPU;
  if (!cos.defined() || cos.shape() != c.shape()) cos = Tensor::empty({seq_len, half}, DType::F32, dev);
  if (!sin.defined() || sin.shape() != s.shape()) sin = Tensor::empty({seq_len, half}, DType::F32, dev);
  cos.copy_from(c);
  sin.copy_from(s);
}

}  // namespace primus::ops

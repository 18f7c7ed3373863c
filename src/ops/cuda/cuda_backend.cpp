// CudaBackend: turns the Tensor-level Backend calls into the raw-pointer launchers of the
// kernel files (one per op family). Shapes were checked by ops.cpp; here we derive the sizes,
// check what only this backend requires (CUDA tensors, supported dtypes) and launch.
#include "ops/cuda/cuda_backend.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/cuda/adamw.h"
#include "ops/cuda/attention_merge.h"
#include "ops/cuda/attention_simple.h"
#include "ops/cuda/init_normal.h"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/cross_entropy_shards.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/reduce.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/swiglu.h"

namespace primus::ops {

std::shared_ptr<Backend> make_cuda_backend(int device_index) {
  return std::make_shared<cuda::CudaBackend>(device_index);
}

}  // namespace primus::ops

namespace primus::cuda {

namespace {

void require_cuda(const Tensor& t, const char* op, const char* name) {
  PRIMUS_CHECK(t.is_cuda(), "{}: tensor '{}' is {}, the CUDA backend needs it on the GPU", op, name, t.describe());
}


int64_t last_dim(const Tensor& t) { return t.ndim() == 0 ? 1 : t.size(-1); }
int64_t rows_of(const Tensor& t) {
  const int64_t c = last_dim(t);
  return c == 0 ? 0 : t.numel() / c;
}

// The attention inputs as a cuDNN plan-cache key: q (B,T,Hq,Dqk), k (B,T,Hkv,Dqk), v (B,T,Hkv,Dv).
CudnnAttentionShape cudnn_shape(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), q.dtype(), causal};
}

}  // namespace

CudaBackendOptions CudaBackendOptions::from_env() {
  CudaBackendOptions o;
  o.gemm_tuning = GemmTuningConfig::from_env();
  return o;
}

void CudaBackend::set_cudnn_attention_options(const CudnnAttentionOptions& o) {
  PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // no queued cuDNN work may still use the old engine
  cudnn_attention_ = std::make_unique<CudnnAttention>(device_, stream_, o);
}

CudaBackend::CudaBackend(int device_index, CudaBackendOptions options)
    : device_(device_index), options_(std::move(options)) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    count = 0;
  }
  PRIMUS_CHECK(count > 0, "the CUDA backend needs a GPU, but none is visible (CUDA_VISIBLE_DEVICES='{}')",
               std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "");
  PRIMUS_CHECK(device_index >= 0 && device_index < count, "CUDA device {} requested but only {} visible",
               device_index, count);
  PRIMUS_CUDA_CHECK(cudaSetDevice(device_index));
  PRIMUS_CUDA_CHECK(cudaStreamCreate(&stream_));
  try {
    PRIMUS_CUDA_CHECK(cudaMalloc(&result_dev_, 256));
    PRIMUS_CUDA_CHECK(cudaMallocHost(&result_host_, 256));
    gemm_ = std::make_unique<GemmEngine>(device_index, stream_, options_.gemm_tuning);
    cudnn_attention_ = std::make_unique<CudnnAttention>(device_index, stream_);  // cuDNN loads on first use
  } catch (...) {  // e.g. stage 3 without a table: release what was made, then report
    if (result_dev_) cudaFree(result_dev_);
    if (result_host_) cudaFreeHost(result_host_);
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  if (stream_) cudaStreamSynchronize(stream_);
  gemm_.reset();
  cudnn_attention_.reset();
  if (scratch_) cudaFree(scratch_);
  if (result_dev_) cudaFree(result_dev_);
  if (result_host_) cudaFreeHost(result_host_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::synchronize() { PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void* CudaBackend::scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  // Kernels already queued may still read the old buffer: wait before freeing it.
  PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (scratch_) PRIMUS_CUDA_CHECK(cudaFree(scratch_));
  scratch_ = nullptr;
  const size_t grown = bytes + bytes / 4;
  const cudaError_t e = cudaMalloc(&scratch_, grown);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    scratch_bytes_ = 0;
    fail("CUDA backend: out of GPU memory allocating {:.1f} MiB of scratch", grown / 1048576.0);
  }
  scratch_bytes_ = grown;
  return scratch_;
}

// ---- elementwise ---------------------------------------------------------------------

void CudaBackend::fill_normal(Tensor& t, uint64_t seed, uint64_t stream_id, float mean, float std,
                              const std::vector<NormalRun>& runs) {
  require_cuda(t, "fill_normal", "t");
  std::vector<cuda::NormalRun> pieces;
  pieces.reserve(runs.size());
  for (const auto& r : runs) pieces.push_back({r.local_offset, r.full_offset, r.numel});
  launch_fill_normal_runs(t.raw(), t.dtype(), pieces, seed, stream_id, mean, std, stream_);
}

void CudaBackend::fill(Tensor& t, float value) {
  require_cuda(t, "fill", "t");
  launch_fill(t.raw(), t.dtype(), t.numel(), value, stream_);
}

void CudaBackend::copy_cast(Tensor& dst, const Tensor& src) {
  require_cuda(dst, "copy_cast", "dst");
  require_cuda(src, "copy_cast", "src");
  if (dst.dtype() == src.dtype()) {
    PRIMUS_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
    return;
  }
  launch_copy_cast(dst.raw(), dst.dtype(), src.raw(), src.dtype(), src.numel(), stream_);
}

void CudaBackend::copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  require_cuda(dst, "copy_columns", "dst");
  require_cuda(src, "copy_columns", "src");
  const size_t es = dtype_size(dst.dtype());
  PRIMUS_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(dst.raw()) + dst_col * es, dst.size(1) * es,
                                      static_cast<const char*>(src.raw()) + src_col * es, src.size(1) * es,
                                      static_cast<size_t>(width) * es, static_cast<size_t>(dst.size(0)),
                                      cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  require_cuda(out, "add", "out");
  launch_add(out.raw(), a.raw(), b.raw(), out.dtype(), out.numel(), stream_);
}

void CudaBackend::scale(Tensor& t, float alpha) {
  require_cuda(t, "scale", "t");
  launch_scale(t.raw(), t.dtype(), t.numel(), alpha, stream_);
}

// ---- GEMM ------------------------------------------------------------------------------

void CudaBackend::matmul(Tensor& out, const Tensor& a, ops::Transpose ta, const Tensor& b, ops::Transpose tb,
                         float alpha, float beta) {
  require_cuda(out, "matmul", "out");
  require_cuda(a, "matmul", "a");
  require_cuda(b, "matmul", "b");
  const bool ta_ = ta == ops::Transpose::Yes, tb_ = tb == ops::Transpose::Yes;
  const int64_t M = rows_of(out), N = last_dim(out);
  const int64_t K = ta_ ? rows_of(a) : last_dim(a);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: out = beta * out
    if (beta == 0.f) launch_fill(out.raw(), out.dtype(), out.numel(), 0.f, stream_);
    else if (beta != 1.f) launch_scale(out.raw(), out.dtype(), out.numel(), beta, stream_);
    return;
  }
  gemm_->matmul(out.raw(), out.dtype(), a.raw(), b.raw(), a.dtype(), M, N, K, ta_, tb_, alpha, beta);
}

// The residual add in the epilogue: D = op(a) @ op(b) + C with C = c, D = out.
void CudaBackend::matmul_add(Tensor& out, const Tensor& a, ops::Transpose ta, const Tensor& b, ops::Transpose tb,
                             const Tensor& c) {
  require_cuda(c, "matmul_add", "c");
  const int64_t K = ta == ops::Transpose::Yes ? rows_of(a) : last_dim(a);
  if (K == 0 || rows_of(out) == 0 || last_dim(out) == 0) return ops::Backend::matmul_add(out, a, ta, b, tb, c);
  require_cuda(out, "matmul_add", "out");
  require_cuda(a, "matmul_add", "a");
  require_cuda(b, "matmul_add", "b");
  gemm_->matmul(out.raw(), out.dtype(), a.raw(), b.raw(), a.dtype(), rows_of(out), last_dim(out), K,
                ta == ops::Transpose::Yes, tb == ops::Transpose::Yes, 1.f, 1.f, c.raw());
}

// ---- embedding ---------------------------------------------------------------------------

void CudaBackend::embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  require_cuda(out, "embedding_forward", "out");
  require_cuda(ids, "embedding_forward", "ids");
  require_cuda(table, "embedding_forward", "table");
  launch_embedding_forward(out.raw(), out.dtype(), ids.data<int32_t>(), table.raw(), table.dtype(), ids.numel(),
                           last_dim(table), stream_);
}

void CudaBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  require_cuda(dtable, "embedding_backward", "dtable");
  require_cuda(dout, "embedding_backward", "dout");
  require_cuda(ids, "embedding_backward", "ids");
  PRIMUS_CHECK(dtable.dtype() == DType::F32, "embedding_backward: dtable must be fp32, got {}", dtable.describe());
  const int64_t N = ids.numel(), V = rows_of(dtable), C = last_dim(dtable);
  const size_t ws = embedding_backward_workspace_bytes(N, V);
  launch_embedding_backward(dtable.data<float>(), dout.raw(), dout.dtype(), ids.data<int32_t>(), N, C, V,
                            scratch(ws), ws, stream_);
}

// ---- RMSNorm ---------------------------------------------------------------------------

void CudaBackend::rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, float eps) {
  require_cuda(y, "rmsnorm_forward", "y");
  require_cuda(x, "rmsnorm_forward", "x");
  require_cuda(w, "rmsnorm_forward", "w");
  PRIMUS_CHECK(rstd.dtype() == DType::F32 && rstd.is_cuda(), "rmsnorm_forward: rstd must be fp32 on CUDA, got {}",
               rstd.describe());
  launch_rmsnorm_forward(y.raw(), rstd.data<float>(), x.raw(), w.raw(), x.dtype(), w.dtype(), rows_of(x),
                         last_dim(x), eps, stream_);
}

void CudaBackend::rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                   const Tensor& rstd) {
  require_cuda(dx, "rmsnorm_backward", "dx");
  require_cuda(dy, "rmsnorm_backward", "dy");
  PRIMUS_CHECK(dw.dtype() == DType::F32 && dw.is_cuda(), "rmsnorm_backward: dw must be fp32 on CUDA, got {}",
               dw.describe());
  PRIMUS_CHECK(dx.dtype() == x.dtype() && dy.dtype() == x.dtype(),
               "rmsnorm_backward: dx {} and dy {} must have x's dtype {}", dx.describe(), dy.describe(),
               dtype_name(x.dtype()));
  const int64_t N = rows_of(x), C = last_dim(x);
  const size_t ws = rmsnorm_backward_workspace_bytes(N, C);
  launch_rmsnorm_backward(dx.raw(), dw.data<float>(), dy.raw(), x.raw(), w.raw(), rstd.data<float>(), x.dtype(),
                          w.dtype(), N, C, scratch(ws), ws, stream_);
}

// ---- RoPE ------------------------------------------------------------------------------

void CudaBackend::rope_forward(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  require_cuda(out, "rope_forward", "out");
  require_cuda(x, "rope_forward", "x");
  require_cuda(cos, "rope_forward", "cos");
  launch_rope(out.raw(), x.raw(), x.dtype(), cos.data<float>(), sin.data<float>(), x.size(0), x.size(1), x.size(2),
              x.size(3), 2 * cos.size(-1), cos.size(0), false, stream_);
}

void CudaBackend::rope_backward(Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) {
  require_cuda(dx, "rope_backward", "dx");
  require_cuda(dout, "rope_backward", "dout");
  launch_rope(dx.raw(), dout.raw(), dout.dtype(), cos.data<float>(), sin.data<float>(), dout.size(0), dout.size(1),
              dout.size(2), dout.size(3), 2 * cos.size(-1), cos.size(0), true, stream_);
}

void CudaBackend::rope_gather_tables(Tensor& cos_out, Tensor& sin_out, const Tensor& cos_table,
                                     const Tensor& sin_table, const Tensor& positions) {
  require_cuda(cos_out, "rope_gather_tables", "cos_out");
  require_cuda(cos_table, "rope_gather_tables", "cos_table");
  require_cuda(positions, "rope_gather_tables", "positions");
  launch_rope_gather_tables(cos_out.data<float>(), sin_out.data<float>(), cos_table.data<float>(),
                            sin_table.data<float>(), positions.data<int32_t>(), positions.numel(), cos_table.size(0),
                            cos_table.size(1), stream_);
}

void CudaBackend::qkv_split_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv, const Tensor& cos,
                                         const Tensor& sin) {
  require_cuda(qkv, "qkv_split_rope_forward", "qkv");
  require_cuda(q, "qkv_split_rope_forward", "q");
  launch_qkv_split_rope_forward(q.raw(), k.raw(), v.raw(), qkv.raw(), qkv.dtype(), cos.data<float>(),
                                sin.data<float>(), q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
                                2 * cos.size(-1), cos.size(0), stream_);
}

void CudaBackend::qkv_split_rope_backward(Tensor& dqkv, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                          const Tensor& cos, const Tensor& sin) {
  require_cuda(dqkv, "qkv_split_rope_backward", "dqkv");
  require_cuda(dq, "qkv_split_rope_backward", "dq");
  launch_qkv_split_rope_backward(dqkv.raw(), dq.raw(), dk.raw(), dv.raw(), dqkv.dtype(), cos.data<float>(),
                                 sin.data<float>(), dq.size(0), dq.size(1), dq.size(2), dk.size(2), dq.size(3),
                                 2 * cos.size(-1), cos.size(0), stream_);
}

void CudaBackend::mla_qkv_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                                       const Tensor& kv_down, const Tensor& cos, const Tensor& sin) {
  require_cuda(q, "mla_qkv_rope_forward", "q");
  require_cuda(kv_down, "mla_qkv_rope_forward", "kv_down");
  const int64_t Dr = 2 * cos.size(-1);
  launch_mla_qkv_rope_forward(q.raw(), k.raw(), v.raw(), q_proj.raw(), kv_up.raw(), kv_down.raw(), q.dtype(),
                              cos.data<float>(), sin.data<float>(), q.size(0) * q.size(1), cos.size(0), q.size(2),
                              q.size(3) - Dr, Dr, v.size(3), kv_down.size(1), stream_);
}

void CudaBackend::mla_qkv_rope_backward(Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq,
                                        const Tensor& dk, const Tensor& dv, const Tensor& cos, const Tensor& sin) {
  require_cuda(dq_proj, "mla_qkv_rope_backward", "dq_proj");
  require_cuda(dq, "mla_qkv_rope_backward", "dq");
  const int64_t Dr = 2 * cos.size(-1);
  launch_mla_qkv_rope_backward(dq_proj.raw(), dkv_up.raw(), dk_pe.raw(), dq.raw(), dk.raw(), dv.raw(), dq.dtype(),
                               cos.data<float>(), sin.data<float>(), dq.size(0) * dq.size(1), cos.size(0), dq.size(2),
                               dq.size(3) - Dr, Dr, dv.size(3), stream_);
}

// ---- attention ---------------------------------------------------------------------------

bool CudaBackend::use_flash(const Tensor& q, const Tensor& v) const {
  if (options_.attention == AttentionKernel::Simple) return false;
  const bool ok = flash_attention_supported(q.dtype(), q.size(3), v.size(3));
  PRIMUS_CHECK(ok || options_.attention != AttentionKernel::Flash,
               "the flash attention kernel only (attention_backend: flash) but it does not cover dtype {} with head "
               "dims {}/{} (it needs bf16/fp16 and 64 or 128); use attention_backend: auto",
               dtype_name(q.dtype()), q.size(3), v.size(3));
  return ok;
}

namespace {
// cuDNN's fused SDPA is not given document masks: segments go to flash or simple.
bool cudnn_allowed(AttentionKernel mode, const Tensor* segments, const char* op) {
  if (mode != AttentionKernel::Auto && mode != AttentionKernel::Cudnn) return false;
  PRIMUS_CHECK(!(segments && mode == AttentionKernel::Cudnn),
               "{}: cuDNN-only attention (attention_backend: fused) cannot serve document-masked attention (segments "
               "of packed sequences); use attention_backend: auto or flash",
               op);
  return segments == nullptr;
}
const int32_t* segments_ptr(const Tensor* segments, const char* op) {
  if (!segments) return nullptr;
  require_cuda(*segments, op, "segments");
  return segments->data<int32_t>();
}
}  // namespace

void CudaBackend::attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                                    float scale, bool causal, const Tensor* segments) {
  require_cuda(out, "attention_forward", "out");
  require_cuda(q, "attention_forward", "q");
  require_cuda(k, "attention_forward", "k");
  require_cuda(v, "attention_forward", "v");
  PRIMUS_CHECK(lse.dtype() == DType::F32 && lse.is_cuda(), "attention_forward: lse must be fp32 on CUDA, got {}",
               lse.describe());
  const int32_t* seg = segments_ptr(segments, "attention_forward");
  if (cudnn_allowed(options_.attention, segments, "attention_forward")) {
    const CudnnAttentionShape cs = cudnn_shape(q, k, v, causal);
    if (cudnn_attention_->ready(CudnnPass::Forward, cs, options_.attention == AttentionKernel::Cudnn,
                                use_flash(q, v) ? "flash" : "simple")) {
      const size_t ws = cudnn_attention_->workspace_bytes(CudnnPass::Forward, cs);
      cudnn_attention_->forward(cs, {out.raw(), lse.data<float>(), q.raw(), k.raw(), v.raw(), scale},
                                ws ? scratch(ws) : nullptr, ws);
      return;
    }
  }
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), Hkv = k.size(2);
  if (use_flash(q, v)) {
    launch_flash_attention_forward(out.raw(), lse.data<float>(), q.raw(), k.raw(), v.raw(), q.dtype(), B, T, Hq, Hkv,
                                   q.size(3), scale, causal, stream_, options_.flash, seg);
  } else {
    launch_attention_simple_forward(out.raw(), lse.data<float>(), q.raw(), k.raw(), v.raw(), q.dtype(), B, T, Hq,
                                    Hkv, q.size(3), v.size(3), scale, causal, stream_, seg);
  }
}

void CudaBackend::attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                                     const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                                     float scale, bool causal, const Tensor* segments) {
  require_cuda(dq, "attention_backward", "dq");
  require_cuda(dk, "attention_backward", "dk");
  require_cuda(dv, "attention_backward", "dv");
  require_cuda(dout, "attention_backward", "dout");
  const int32_t* seg = segments_ptr(segments, "attention_backward");
  if (cudnn_allowed(options_.attention, segments, "attention_backward")) {
    const CudnnAttentionShape cs = cudnn_shape(q, k, v, causal);
    if (cudnn_attention_->ready(CudnnPass::Backward, cs, options_.attention == AttentionKernel::Cudnn,
                                use_flash(q, v) ? "flash" : "simple")) {
      const size_t ws = cudnn_attention_->workspace_bytes(CudnnPass::Backward, cs);
      cudnn_attention_->backward(cs,
                                 {dq.raw(), dk.raw(), dv.raw(), dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(),
                                  lse.data<float>(), scale},
                                 scratch(ws), ws);
      return;
    }
  }
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), Hkv = k.size(2);
  if (use_flash(q, v)) {
    const size_t ws = flash_attention_backward_workspace_bytes(B, T, Hq, q.size(3));
    launch_flash_attention_backward(dq.raw(), dk.raw(), dv.raw(), dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(),
                                    lse.data<float>(), q.dtype(), B, T, Hq, Hkv, q.size(3), scale, causal,
                                    scratch(ws), ws, stream_, options_.flash, seg);
  } else {
    const size_t ws = attention_simple_backward_workspace_bytes(B, T, Hq, Hkv, q.size(3), v.size(3));
    launch_attention_simple_backward(dq.raw(), dk.raw(), dv.raw(), dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(),
                                     lse.data<float>(), q.dtype(), B, T, Hq, Hkv, q.size(3), v.size(3), scale,
                                     causal, scratch(ws), ws, stream_, seg);
  }
}

void CudaBackend::attention_merge(Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                                  int64_t t0) {
  require_cuda(acc_out, "attention_merge", "acc_out");
  require_cuda(acc_lse, "attention_merge", "acc_lse");
  require_cuda(part_out, "attention_merge", "part_out");
  require_cuda(part_lse, "attention_merge", "part_lse");
  launch_attention_merge(acc_out.raw(), acc_lse.data<float>(), part_out.raw(), part_lse.data<float>(),
                         acc_out.dtype(), acc_out.size(0), acc_out.size(1), acc_out.size(2), acc_out.size(3),
                         part_out.size(1), t0, stream_);
}

// ---- SwiGLU ------------------------------------------------------------------------------

void CudaBackend::swiglu_forward(Tensor& out, const Tensor& gate_up) {
  require_cuda(out, "swiglu_forward", "out");
  require_cuda(gate_up, "swiglu_forward", "gate_up");
  launch_swiglu_forward(out.raw(), gate_up.raw(), gate_up.dtype(), rows_of(out), last_dim(out), stream_);
}

void CudaBackend::swiglu_backward(Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) {
  require_cuda(dgate_up, "swiglu_backward", "dgate_up");
  require_cuda(dout, "swiglu_backward", "dout");
  launch_swiglu_backward(dgate_up.raw(), dout.raw(), gate_up.raw(), gate_up.dtype(), rows_of(dout), last_dim(dout),
                         stream_);
}

// ---- cross-entropy -----------------------------------------------------------------------

void CudaBackend::cross_entropy_forward(Tensor& losses, const Tensor& logits, const Tensor& targets) {
  require_cuda(losses, "cross_entropy_forward", "losses");
  require_cuda(logits, "cross_entropy_forward", "logits");
  require_cuda(targets, "cross_entropy_forward", "targets");
  launch_cross_entropy_forward(losses.data<float>(), logits.raw(), logits.dtype(), targets.data<int32_t>(),
                               rows_of(logits), last_dim(logits), stream_);
}

void CudaBackend::cross_entropy_fused(Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                                      const Tensor& dloss) {
  require_cuda(losses, "cross_entropy_fused", "losses");
  require_cuda(logits_to_grad, "cross_entropy_fused", "logits");
  require_cuda(dloss, "cross_entropy_fused", "dloss");
  launch_cross_entropy_fused(losses.data<float>(), logits_to_grad.raw(), logits_to_grad.dtype(),
                             targets.data<int32_t>(), dloss.data<float>(), rows_of(logits_to_grad),
                             last_dim(logits_to_grad), stream_);
}

// Vocabulary-parallel cross-entropy (shapes checked by ops.cpp): stats (3,N), gathered (P,3,N),
// all on this GPU; the all-gather between the two passes is the caller's.
void CudaBackend::cross_entropy_shard_stats(Tensor& stats, const Tensor& logits, const Tensor& targets) {
  require_cuda(stats, "cross_entropy_shard_stats", "stats");
  require_cuda(logits, "cross_entropy_shard_stats", "logits");
  require_cuda(targets, "cross_entropy_shard_stats", "targets");
  launch_cross_entropy_shard_stats(stats.data<float>(), logits.raw(), logits.dtype(), targets.data<int32_t>(),
                                   logits.size(0), logits.size(1), stream_);
}

void CudaBackend::cross_entropy_shard_finish(Tensor& losses, Tensor* logits_to_grad, const Tensor& gathered_stats,
                                             const Tensor& targets, const Tensor& dloss) {
  require_cuda(losses, "cross_entropy_shard_finish", "losses");
  require_cuda(gathered_stats, "cross_entropy_shard_finish", "gathered_stats");
  require_cuda(targets, "cross_entropy_shard_finish", "targets");
  if (logits_to_grad != nullptr) {
    require_cuda(*logits_to_grad, "cross_entropy_shard_finish", "logits_to_grad");
    require_cuda(dloss, "cross_entropy_shard_finish", "dloss");
  }
  launch_cross_entropy_shard_finish(
      losses.data<float>(), logits_to_grad != nullptr ? logits_to_grad->raw() : nullptr,
      logits_to_grad != nullptr ? logits_to_grad->dtype() : DType::F32, gathered_stats.data<float>(),
      gathered_stats.size(0), targets.data<int32_t>(), logits_to_grad != nullptr ? dloss.data<float>() : nullptr,
      gathered_stats.size(2), logits_to_grad != nullptr ? logits_to_grad->size(1) : 0, stream_);
}

// ---- optimizer -----------------------------------------------------------------------------

void CudaBackend::adamw_step(std::vector<ops::AdamWTensor>& params, const ops::AdamWParams& p) {
  std::vector<AdamWRef> refs;
  refs.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    ops::AdamWTensor& t = params[i];
    const bool split = t.master_remainder.defined();
    const Tensor& like = split ? t.model : t.master;
    auto f32_or_bf16 = [&](const Tensor& x, const char* name) {
      PRIMUS_CHECK(x.is_cuda() && (x.dtype() == DType::F32 || x.dtype() == DType::BF16) && x.numel() == like.numel(),
                   "adamw_step: parameter {}: {} must be fp32 or bf16 on CUDA with {} elements, got {}", i, name,
                   like.numel(), x.describe());
      return x.dtype() == DType::BF16;
    };
    AdamWRef r;
    if (split) {
      PRIMUS_CHECK(t.model.is_cuda() && t.model.dtype() == DType::BF16 && t.master_remainder.is_cuda() &&
                       t.master_remainder.dtype() == DType::I16 && t.master_remainder.numel() == t.model.numel(),
                   "adamw_step: parameter {}: a split master needs a bf16 model and an int16 remainder of its size on "
                   "CUDA, got {} and {}", i, t.model.describe(), t.master_remainder.describe());
      r.remainder = t.master_remainder.data<int16_t>();
      r.model = t.model.raw();
      r.model_dtype = DType::BF16;
    } else {
      PRIMUS_CHECK(t.master.is_cuda() && t.master.dtype() == DType::F32,
                   "adamw_step: parameter {}: master must be fp32 on CUDA, got {}", i, t.master.describe());
      r.master = t.master.data<float>();
      if (t.model.defined() && t.model.raw() != t.master.raw()) {
        PRIMUS_CHECK(t.model.is_cuda() && is_float(t.model.dtype()),
                     "adamw_step: parameter {}: model copy must be a float tensor on CUDA, got {}", i,
                     t.model.describe());
        r.model = t.model.raw();
        r.model_dtype = t.model.dtype();
      }
    }
    r.grad_bf16 = f32_or_bf16(t.grad, "grad");
    r.grad = t.grad.raw();
    r.exp_avg_bf16 = f32_or_bf16(t.exp_avg, "exp_avg");
    r.exp_avg = t.exp_avg.raw();
    r.exp_avg_sq_bf16 = f32_or_bf16(t.exp_avg_sq, "exp_avg_sq");
    r.exp_avg_sq = t.exp_avg_sq.raw();
    r.n = like.numel();
    r.weight_decay = p.weight_decay * t.weight_decay_mult;
    refs.push_back(r);
  }
  launch_adamw(refs, AdamWHyper{p.lr, p.beta1, p.beta2, p.eps, p.grad_scale, p.step}, stream_);
}

double CudaBackend::sum_of_squares(const std::vector<Tensor>& tensors) {
  std::vector<TensorRef> refs;
  for (const auto& t : tensors) {
    require_cuda(t, "sum_of_squares", "tensor");
    refs.push_back({t.raw(), t.numel(), t.dtype()});
  }
  const size_t ws = multi_reduce_workspace_bytes(refs);
  launch_sum_of_squares(refs, static_cast<double*>(result_dev_), scratch(ws), ws, stream_);
  PRIMUS_CUDA_CHECK(cudaMemcpyAsync(result_host_, result_dev_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double r;
  std::memcpy(&r, result_host_, sizeof(r));
  return r;
}

int64_t CudaBackend::count_zeros(const std::vector<Tensor>& tensors) {
  std::vector<TensorRef> refs;
  for (const auto& t : tensors) {
    require_cuda(t, "count_zeros", "tensor");
    refs.push_back({t.raw(), t.numel(), t.dtype()});
  }
  const size_t ws = multi_reduce_workspace_bytes(refs);
  launch_count_zeros(refs, static_cast<long long*>(result_dev_), scratch(ws), ws, stream_);
  PRIMUS_CUDA_CHECK(cudaMemcpyAsync(result_host_, result_dev_, sizeof(long long), cudaMemcpyDeviceToHost, stream_));
  PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  long long r;
  std::memcpy(&r, result_host_, sizeof(r));
  return static_cast<int64_t>(r);
}

CudaBackend* as_cuda_backend(ops::Backend& b) { return dynamic_cast<CudaBackend*>(&b); }

}  // namespace primus::cuda

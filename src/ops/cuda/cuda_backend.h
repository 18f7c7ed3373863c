// The CUDA backend (Primus-Turbo): bf16 activations, fp32 master weights and grads,
// cuBLASLt GEMMs, fused kernels. Built only when PRIMUS_WITH_CUDA is defined.
//
// One CudaBackend = one device, one CUDA stream, one cuBLASLt engine and one grow-only scratch
// buffer; every op is enqueued on that stream (no host synchronisation except where an op
// returns a host value: sum_of_squares, count_zeros). The stream is a blocking stream, so it
// stays ordered with the legacy default stream that Tensor::copy_from and zero_ use.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "ops/backend.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/gemm.h"

namespace primus::ops {

std::shared_ptr<Backend> make_cuda_backend(int device_index);

}  // namespace primus::ops

namespace primus::cuda {

// Which attention kernels the backend uses. Auto: cuDNN's fused SDPA (cudnn_attention.h) where its
// graph builds for the shape, else flash (tensor cores) where supported (bf16/fp16, head dim
// 64/128, Dqk == Dv), else the simple kernel; each fallback warns once per shape. Cudnn: cuDNN
// only, its refusal is an error. Training picks one from the experiment key attention_backend
// (train/train_options.h AttentionImpl); `primus bench attention --attention-backend` likewise.
enum class AttentionKernel { Auto, Cudnn, Flash, Simple };

struct CudaBackendOptions {
  AttentionKernel attention = AttentionKernel::Auto;
  FlashConfig flash;
  GemmTuningConfig gemm_tuning;
  // The defaults above with the GEMM tuning variables (gemm.h: PRIMUS_GEMM_TUNING_*, upstream
  // Primus's interface). Nothing else comes from the environment.
  static CudaBackendOptions from_env();
};

class CudaBackend final : public ops::Backend {
 public:
  explicit CudaBackend(int device_index, CudaBackendOptions options = CudaBackendOptions::from_env());
  ~CudaBackend() override;

  Device device() const override { return Device::CUDA; }
  void synchronize() override;

  void fill(Tensor& t, float value) override;
  void fill_normal(Tensor& t, uint64_t seed, uint64_t stream, float mean, float std,
                   const std::vector<NormalRun>& runs) override;
  void copy_cast(Tensor& dst, const Tensor& src) override;
  void copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) override;
  void add(Tensor& out, const Tensor& a, const Tensor& b) override;
  void scale(Tensor& t, float alpha) override;

  void matmul(Tensor& out, const Tensor& a, ops::Transpose ta, const Tensor& b, ops::Transpose tb, float alpha,
              float beta) override;
  void matmul_add(Tensor& out, const Tensor& a, ops::Transpose ta, const Tensor& b, ops::Transpose tb,
                  const Tensor& c) override;

  void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) override;
  void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) override;

  void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, float eps) override;
  void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                        const Tensor& rstd) override;

  void rope_forward(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) override;
  void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) override;
  void rope_gather_tables(Tensor& cos_out, Tensor& sin_out, const Tensor& cos_table, const Tensor& sin_table,
                          const Tensor& positions) override;
  void qkv_split_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv, const Tensor& cos,
                              const Tensor& sin) override;
  void qkv_split_rope_backward(Tensor& dqkv, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                               const Tensor& sin) override;
  void mla_qkv_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                            const Tensor& kv_down, const Tensor& cos, const Tensor& sin) override;
  void mla_qkv_rope_backward(Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq, const Tensor& dk,
                             const Tensor& dv, const Tensor& cos, const Tensor& sin) override;

  // segments (document masks of packed sequences) are served by flash where it covers the shape,
  // else the simple kernel; never by cuDNN (Cudnn mode refuses them).
  void attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         bool causal, const Tensor* segments) override;
  void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                          const Tensor& v, const Tensor& out, const Tensor& lse, float scale, bool causal,
                          const Tensor* segments) override;
  void attention_merge(Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                       int64_t t0) override;

  void swiglu_forward(Tensor& out, const Tensor& gate_up) override;
  void swiglu_backward(Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) override;

  void cross_entropy_forward(Tensor& losses, const Tensor& logits, const Tensor& targets) override;
  void cross_entropy_fused(Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                           const Tensor& dloss) override;
  void cross_entropy_shard_stats(Tensor& stats, const Tensor& logits, const Tensor& targets) override;
  void cross_entropy_shard_finish(Tensor& losses, Tensor* logits_to_grad, const Tensor& gathered_stats,
                                  const Tensor& targets, const Tensor& dloss) override;

  // Mixture of experts (moe.cu; the grouped GEMM in cuda_moe.cpp).
  void moe_topk_forward(Tensor& probs, Tensor& indices, const Tensor& logits, const Tensor& bias,
                        const MoeRouting& r) override;
  void moe_topk_backward(Tensor& d_logits, const Tensor& d_probs, const Tensor& logits, const Tensor& indices,
                         const MoeRouting& r) override;
  void moe_aux_stats(Tensor& score_sums, Tensor& counts, Tensor& lse_sq, const Tensor& logits, int64_t topk,
                     bool sigmoid) override;
  void moe_aux_backward(Tensor& d_logits, const Tensor& logits, const Tensor& score_grad, float z_weight,
                        bool sigmoid) override;
  void moe_dispatch_plan(Tensor& row_of, Tensor& pair_of_row, Tensor& tokens_per_expert, const Tensor& indices,
                         const Tensor& probs, int64_t capacity, bool drop_by_probs, bool pad) override;
  void moe_permute(Tensor& x_perm, const Tensor& x, const Tensor& pair_of_row, int64_t topk) override;
  void moe_permute_backward(Tensor& dx, const Tensor& d_x_perm, const Tensor& row_of) override;
  void moe_unpermute(Tensor& y, const Tensor& y_perm, const Tensor& row_of, const Tensor& probs) override;
  void moe_unpermute_backward(Tensor& d_y_perm, Tensor& d_probs, const Tensor& dy, const Tensor& y_perm,
                              const Tensor& row_of, const Tensor& pair_of_row, const Tensor& probs) override;
  void grouped_linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const std::vector<int64_t>& rows) override;
  void grouped_linear_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                               const std::vector<int64_t>& rows, bool accumulate) override;

  void adamw_step(std::vector<ops::AdamWTensor>& params, const ops::AdamWParams& p) override;
  double sum_of_squares(const std::vector<Tensor>& tensors) override;
  int64_t count_zeros(const std::vector<Tensor>& tensors) override;

  // ---- CUDA-specific access (benchmarks, tuning, preflight) -------------------------
  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  GemmEngine& gemm() { return *gemm_; }
  CudnnAttention& cudnn_attention() { return *cudnn_attention_; }
  const CudaBackendOptions& options() const { return options_; }
  void set_attention_kernel(AttentionKernel k) { options_.attention = k; }
  // Replaces the cuDNN attention engine with one built with `o` (its plans are made again on
  // first use): set it before the first attention call, as the trainer does.
  void set_cudnn_attention_options(const CudnnAttentionOptions& o);
  void set_flash_config(FlashConfig c) { options_.flash = c; }
  // Bytes of the backend's scratch buffer now (grows to the largest request, then stays).
  size_t scratch_bytes() const { return scratch_bytes_; }
  // The scratch buffer, at least `bytes`: stream-ordered reuse by the ops queued on stream();
  // grows (with a sync) only when too small. Ops outside the backend use it too (the split-K
  // partials of ops::decode_attention).
  void* scratch(size_t bytes);

 private:
  bool use_flash(const Tensor& q, const Tensor& v) const;

  int device_ = 0;
  CudaBackendOptions options_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<GemmEngine> gemm_;
  std::unique_ptr<CudnnAttention> cudnn_attention_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* result_dev_ = nullptr;   // 16 bytes: reduction results
  void* result_host_ = nullptr;  // pinned mirror
};

// The CudaBackend behind `b`, or nullptr when it is another backend.
CudaBackend* as_cuda_backend(ops::Backend& b);

}  // namespace primus::cuda

// CpuBackend: the fp32 reference implementation of every Backend op (the specification
// the CUDA kernels are checked against).
//
// Compute ops take fp32 tensors only and reject other float types with an error naming
// the op (bf16 training is the CUDA path's business); memory ops (fill, copy_cast) and the
// optimizer's model-copy refresh also handle bf16/fp16. GEMMs go to OpenBLAS
// (cblas_sgemm, which threads itself); the other ops split rows over a ThreadPool. Each op
// family lives in its own cpu_<family>.cpp.
#pragma once

#include <memory>

#include "ops/backend.h"
#include "ops/cpu/thread_pool.h"

namespace primus::ops {

std::shared_ptr<Backend> make_cpu_backend(int num_threads = 0);

namespace cpu {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads = 0) : pool_(num_threads) {}
  Device device() const override { return Device::CPU; }
  ThreadPool& pool() { return pool_; }

  void fill(Tensor& t, float value) override;
  void copy_cast(Tensor& dst, const Tensor& src) override;
  void copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) override;
  void add(Tensor& out, const Tensor& a, const Tensor& b) override;
  void scale(Tensor& t, float alpha) override;

  void matmul(Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, float alpha,
              float beta) override;

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
  void qkv_split_rope_backward(Tensor& dqkv, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                               const Tensor& cos, const Tensor& sin) override;
  void mla_qkv_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                            const Tensor& kv_down, const Tensor& cos, const Tensor& sin) override;
  void mla_qkv_rope_backward(Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq, const Tensor& dk,
                             const Tensor& dv, const Tensor& cos, const Tensor& sin) override;

  void attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                         float scale, bool causal, const Tensor* segments) override;
  void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          float scale, bool causal, const Tensor* segments) override;
  void attention_merge(Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                       int64_t t0) override;

  void swiglu_forward(Tensor& out, const Tensor& gate_up) override;
  void swiglu_backward(Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) override;

  void cross_entropy_forward(Tensor& losses, const Tensor& logits, const Tensor& targets) override;
  void cross_entropy_fused(Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                           const Tensor& dloss) override;

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

  void adamw_step(std::vector<AdamWTensor>& params, const AdamWParams& p) override;
  double sum_of_squares(const std::vector<Tensor>& tensors) override;
  int64_t count_zeros(const std::vector<Tensor>& tensors) override;

 private:
  ThreadPool pool_;
};

// Throws "<op>: <what> must be fp32 on CPU, got ..." for the compute ops.
void require_f32(const Tensor& t, const char* op, const char* what);
// fp32/bf16/fp16: the types fill, copy_cast and the reductions accept on CPU.
inline bool is_float_type(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }
// Element i of an fp32/bf16/fp16 tensor as fp32, and the rounding store back.
inline float load_as_f32(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.data<float>()[i];
    case DType::BF16: return bf16_bits_to_fp32(t.data<uint16_t>()[i]);
    default: return fp16_bits_to_fp32(t.data<uint16_t>()[i]);
  }
}
inline void store_from_f32(Tensor& t, int64_t i, float v) {
  switch (t.dtype()) {
    case DType::F32: t.data<float>()[i] = v; break;
    case DType::BF16: t.data<uint16_t>()[i] = fp32_to_bf16_bits(v); break;
    default: t.data<uint16_t>()[i] = fp32_to_fp16_bits(v); break;
  }
}

template <typename... Ts>
void require_f32_all(const char* op, const Ts&... tensors) {
  (require_f32(tensors, op, "every tensor"), ...);
}

}  // namespace cpu
}  // namespace primus::ops

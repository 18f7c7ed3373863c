// ops.h: the one door to the math.
//
// Model, optimizer and trainer code call these functions only. Each checks shapes,
// dtypes and devices (naming the op and the tensor) and forwards to the Context's
// backend: cpu/ (fp32 reference, the specification) or cuda/ (Primus-Turbo kernels).
// Shape conventions and the accumulate (`+=`) contract are documented in backend.h.
#pragma once

#include <memory>
#include <vector>

#include "ops/backend.h"

namespace primus::ops {

// Everything an op needs besides its tensors: which backend, and its streams/handles.
// One Context per device per process; passed explicitly, never global.
class Context {
 public:
  static Context cpu();
  // The CUDA backend on `device_index`; throws with a clear message in a CPU-only build.
  static Context cuda(int device_index = 0);
  static Context for_device(Device d) { return d == Device::CPU ? cpu() : cuda(); }

  Device device() const { return backend_->device(); }
  Backend& backend() const { return *backend_; }
  void synchronize() const { backend_->synchronize(); }

 private:
  explicit Context(std::shared_ptr<Backend> b) : backend_(std::move(b)) {}
  std::shared_ptr<Backend> backend_;
};

void fill(Context& ctx, Tensor& t, float value);
// Weight init on the tensor's device: see Backend::fill_normal.
void fill_normal(Context& ctx, Tensor& t, uint64_t seed, uint64_t stream, float mean, float std,
                 const std::vector<Backend::NormalRun>& runs);
void copy_cast(Context& ctx, Tensor& dst, const Tensor& src);
void copy_columns(Context& ctx, Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width);
void add(Context& ctx, Tensor& out, const Tensor& a, const Tensor& b);
void scale(Context& ctx, Tensor& t, float alpha);

void matmul(Context& ctx, Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
            float alpha = 1.f, float beta = 0.f);
// Linear layer in PyTorch/Megatron layout: w (out_features, in_features).
// y (N,out) = x (N,in) @ w^T
void linear_forward(Context& ctx, Tensor& y, const Tensor& x, const Tensor& w);
// y (N,out) = x @ w^T + residual (N,out), residual a different buffer than y: a layer's output
// projection and the residual connection in one GEMM where the backend can (Backend::matmul_add).
void linear_forward_add(Context& ctx, Tensor& y, const Tensor& x, const Tensor& w, const Tensor& residual);
// dx (N,in) = dy @ w (skipped if dx is undefined); dw (out,in) += dy^T @ x (fp32 or w's dtype;
// skipped when dw is undefined: a frozen weight, LoRA's base),
// or dw = dy^T @ x with accumulate_dw false (the first contribution of a step: no zeroed buffer
// to read).
void linear_backward(Context& ctx, Tensor* dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                     const Tensor& w, bool accumulate_dw = true);

void embedding_forward(Context& ctx, Tensor& out, const Tensor& ids, const Tensor& table);
void embedding_backward(Context& ctx, Tensor& dtable, const Tensor& dout, const Tensor& ids);

void rmsnorm_forward(Context& ctx, Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, float eps);
void rmsnorm_backward(Context& ctx, Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                      const Tensor& w, const Tensor& rstd);

void rope_forward(Context& ctx, Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin);
void rope_backward(Context& ctx, Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin);
// cos_out, sin_out (N, R/2) fp32 = rows positions[n] of cos_table, sin_table (P, R/2); positions
// int32 (N) or (B,T) with N = B*T, each in [0, P): per-token tables for the RoPE ops (packed
// documents whose positions restart at 0). See Backend::rope_gather_tables.
void rope_gather_tables(Context& ctx, Tensor& cos_out, Tensor& sin_out, const Tensor& cos_table,
                        const Tensor& sin_table, const Tensor& positions);
void qkv_split_rope_forward(Context& ctx, Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv,
                            const Tensor& cos, const Tensor& sin);
void qkv_split_rope_backward(Context& ctx, Tensor& dqkv, const Tensor& dq, const Tensor& dk,
                             const Tensor& dv, const Tensor& cos, const Tensor& sin);

void mla_qkv_rope_forward(Context& ctx, Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                          const Tensor& kv_down, const Tensor& cos, const Tensor& sin);
void mla_qkv_rope_backward(Context& ctx, Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq,
                           const Tensor& dk, const Tensor& dv, const Tensor& cos, const Tensor& sin);

// segments: null, or (B,T) int32 document ids (non-decreasing per row) for packed sequences:
// a query attends only to keys of its own document (Backend::attention_forward).
void attention_forward(Context& ctx, Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, float scale, bool causal = true, const Tensor* segments = nullptr);
void attention_backward(Context& ctx, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, float scale, bool causal = true, const Tensor* segments = nullptr);
// Merge a partial attention result of query rows [t0, t0 + Tp) into acc (Backend::attention_merge):
// acc_out (B,T,H,Dv), acc_lse (B,H,T) fp32, part_out (B,Tp,H,Dv), part_lse (B,H,Tp) fp32.
void attention_merge(Context& ctx, Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                     int64_t t0);

void swiglu_forward(Context& ctx, Tensor& out, const Tensor& gate_up);
void swiglu_backward(Context& ctx, Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up);

void cross_entropy_forward(Context& ctx, Tensor& losses, const Tensor& logits, const Tensor& targets);
void cross_entropy_fused(Context& ctx, Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                         const Tensor& dloss);
// Vocabulary-parallel cross-entropy in two passes around an all-gather of `stats` (see
// Backend::cross_entropy_shard_stats): stats (3,N) fp32, gathered_stats (P,3,N) fp32.
void cross_entropy_shard_stats(Context& ctx, Tensor& stats, const Tensor& logits, const Tensor& targets);
void cross_entropy_shard_finish(Context& ctx, Tensor& losses, Tensor* logits_to_grad, const Tensor& gathered_stats,
                                const Tensor& targets, const Tensor& dloss);

// Mixture of experts: the ops of backend.h's MoE section, checked. N tokens, E experts,
// k = routing.topk (<= 256), M buffer rows; ids and rows int32, routing tensors fp32, the
// activations of permute / unpermute in the model's dtype.
using MoeRouting = Backend::MoeRouting;
void moe_topk_forward(Context& ctx, Tensor& probs, Tensor& indices, const Tensor& logits, const Tensor& bias,
                      const MoeRouting& routing);
void moe_topk_backward(Context& ctx, Tensor& d_logits, const Tensor& d_probs, const Tensor& logits,
                       const Tensor& indices, const MoeRouting& routing);
void moe_aux_stats(Context& ctx, Tensor& score_sums, Tensor& counts, Tensor& lse_sq, const Tensor& logits,
                   int64_t topk, bool sigmoid);
void moe_aux_backward(Context& ctx, Tensor& d_logits, const Tensor& logits, const Tensor& score_grad, float z_weight,
                      bool sigmoid);
void moe_dispatch_plan(Context& ctx, Tensor& row_of, Tensor& pair_of_row, Tensor& tokens_per_expert,
                       const Tensor& indices, const Tensor& probs, int64_t capacity, bool drop_by_probs, bool pad);
void moe_permute(Context& ctx, Tensor& x_perm, const Tensor& x, const Tensor& pair_of_row, int64_t topk);
void moe_permute_backward(Context& ctx, Tensor& dx, const Tensor& d_x_perm, const Tensor& row_of);
void moe_unpermute(Context& ctx, Tensor& y, const Tensor& y_perm, const Tensor& row_of, const Tensor& probs);
void moe_unpermute_backward(Context& ctx, Tensor& d_y_perm, Tensor& d_probs, const Tensor& dy, const Tensor& y_perm,
                            const Tensor& row_of, const Tensor& pair_of_row, const Tensor& probs);
// The experts' grouped GEMM (Backend::grouped_linear_*): rows[e] rows of x / y per expert.
void grouped_linear_forward(Context& ctx, Tensor& y, const Tensor& x, const Tensor& w,
                            const std::vector<int64_t>& rows);
void grouped_linear_backward(Context& ctx, Tensor* dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                             const std::vector<int64_t>& rows, bool accumulate_dw = true);

void adamw_step(Context& ctx, std::vector<AdamWTensor>& params, const AdamWParams& p);
double sum_of_squares(Context& ctx, const std::vector<Tensor>& tensors);
int64_t count_zeros(Context& ctx, const std::vector<Tensor>& tensors);

// Llama 3.1 style RoPE tables: cos/sin (T, R/2) fp32 for positions [0, T).
struct RopeScaling {
  bool enabled = false;  // Llama 3.1
  float factor = 8.f, low_freq_factor = 1.f, high_freq_factor = 4.f;
  int64_t original_max_position_embeddings = 8192;  // both schemes
  // YaRN as DeepSeek-V2/V3 use it (Peng et al. 2023): frequencies between the correction
  // dims of beta_fast and beta_slow rotations ramp from base^(-2i/R) to base^(-2i/R) / factor.
  bool yarn = false;
  float yarn_factor = 1.f, beta_fast = 32.f, beta_slow = 1.f;
};
// inv_freq[i] = base^(-2i/R), then Llama 3.1's wavelength-dependent scaling or YaRN's ramp.
std::vector<float> rope_inv_freq(int64_t rotary_dim, float base, const RopeScaling& scaling);
// YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1 for factor > 1, else 1.
double yarn_mscale(double factor, double mscale);
// cos/sin (T, R/2) = cos/sin(t * inv_freq[i]) * scale (YaRN scales the tables; 1 elsewhere).
void rope_tables(Tensor& cos, Tensor& sin, int64_t seq_len, const std::vector<float>& inv_freq, float scale = 1.f);

}  // namespace primus::ops

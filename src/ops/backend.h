// Backend: the interface every device implements (cpu/ is the reference, cuda/ the fast path).
//
// Callers never use a Backend directly: they call the free functions of ops/ops.h, which
// check shapes and dtypes once and then forward here. A backend may assume its inputs
// passed those checks. Shapes below use N = rows (batch*tokens), C = hidden, V = vocab,
// B = batch, T = sequence, H = heads, D = head dim, F = ffn hidden.
//
// Accumulating outputs (weight gradients, dx of norms) are documented as `+=`: callers
// zero them once per step, which is how gradient accumulation across micro-batches and
// the residual stream's gradient sum work without extra copies.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace primus::ops {

enum class Transpose : bool { No = false, Yes = true };

struct AdamWParams {
  float lr = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.f;  // decoupled: p -= lr * wd * p
  int64_t step = 1;          // 1-based, for bias correction
  float grad_scale = 1.f;    // multiplies the gradient first (1/loss_scale * clip coefficient)
};

// One parameter as the optimizer sees it: fp32 master weight, grad, moments and optionally
// the low-precision model copy to refresh after the update (bf16/fp16).
//   grad        fp32 (the CUDA backend also reads bf16: grad_reduce_in_bf16)
//   exp_avg, exp_avg_sq  fp32 or bf16 (exp_avg_dtype / exp_avg_sq_dtype): read into fp32,
//               updated in fp32, stored back rounded to nearest even
//   master      fp32; or undefined with `master_remainder` (int16) and a bf16 `model`: the
//               master is join_master_bits(model, remainder) (core/master_bits.h), read and
//               written back split (store_param_remainders)
// All of one parameter's tensors have the same number of elements.
struct AdamWTensor {
  Tensor master, grad, exp_avg, exp_avg_sq;
  Tensor model;      // may be undefined (fp32 training: master is the model weight)
  Tensor master_remainder;
  float weight_decay_mult = 1.f;  // 0 for norms and biases (Megatron's no-decay group)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual void synchronize() {}

  // ---- elementwise / memory --------------------------------------------------------
  virtual void fill(Tensor& t, float value) = 0;
  virtual void copy_cast(Tensor& dst, const Tensor& src) = 0;        // fp32/bf16/fp16, same numel
  virtual void add(Tensor& out, const Tensor& a, const Tensor& b) = 0;  // out = a + b (out may alias)
  virtual void scale(Tensor& t, float alpha) = 0;                     // t *= alpha
  // dst (N, Wd), src (N, Ws) of one dtype: dst[:, dst_col : dst_col + width] =
  // src[:, src_col : src_col + width]; the other columns of dst are left as they are.
  virtual void copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) = 0;
  // t = N(mean, std^2) values of CounterRng(seed, stream) (core/rng.h): local element
  // r.local_offset + j of each run r gets value number r.full_offset + j (a shard of a
  // larger tensor draws its slice of the full tensor's values). Weight init. Default: the
  // values on the host, copied in; a device backend should generate them in place.
  struct NormalRun {
    int64_t local_offset = 0, full_offset = 0, numel = 0;
  };
  virtual void fill_normal(Tensor& t, uint64_t seed, uint64_t stream, float mean, float std,
                           const std::vector<NormalRun>& runs);

  // ---- GEMM ----------------------------------------------------------------------
  // out (M,N) = alpha * op(a) @ op(b) + beta * out, with op(a) (M,K), op(b) (K,N).
  // Inputs share a dtype; out may be that dtype or fp32 (fp32 accumulation of grads).
  virtual void matmul(Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                      float alpha, float beta) = 0;
  // out (M,N) = op(a) @ op(b) + c, c (M,N) of out's dtype, a different buffer than out: the
  // residual add after a layer's output projection. Default: matmul, then add (two passes over
  // out); a device backend reads c in the GEMM's epilogue instead (cuBLASLt with C != D).
  virtual void matmul_add(Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                          const Tensor& c);

  // ---- embedding -----------------------------------------------------------------
  // out (N,C) = table[ids]; ids int32 (N), table (V,C).
  virtual void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) = 0;
  // dtable (V,C) fp32 += scatter of dout (N,C) by ids.
  virtual void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) = 0;

  // ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w ---------------------------------
  // y (N,C), rstd (N) fp32 (saved for backward), x (N,C), w (C).
  virtual void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, float eps) = 0;
  // dx (N,C) += d/dx, dw (C) fp32 += d/dw.
  virtual void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                                const Tensor& w, const Tensor& rstd) = 0;

  // ---- RoPE (rotate-half convention of Megatron and HF Llama) ---------------------
  // x, out (B,T,H,D); cos, sin (P, R/2) fp32 with R <= D rotary dims (the first R of D).
  // out[.., i] = x[i]*cos - x[i+R/2]*sin, out[.., i+R/2] = x[i+R/2]*cos + x[i]*sin, i < R/2.
  // Table rows, in every RoPE op below: token (b,t), flattened n = b*T + t, uses row n % P,
  // with P == T (one position per column, shared by the batch: row t) or P == B*T (a
  // position per token: row n, e.g. packed documents whose positions restart at 0, the
  // tables gathered by rope_gather_tables). ops.cpp accepts only these two.
  virtual void rope_forward(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) = 0;
  virtual void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) = 0;
  // Per-token tables: cos_out, sin_out (N, R/2) fp32, row n = cos_table / sin_table (P, R/2)
  // row positions[n]; positions int32 (N) or (B,T) (flattened), each in [0, P) (the CPU
  // checks; a device backend writes NaN rows for a position outside the table).
  virtual void rope_gather_tables(Tensor& cos_out, Tensor& sin_out, const Tensor& cos_table,
                                  const Tensor& sin_table, const Tensor& positions) = 0;
  // Fused split of a QKV projection + RoPE on q and k:
  // qkv (B*T, (Hq + 2*Hkv)*D) rows laid out [q heads | k heads | v heads];
  // q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,D).
  virtual void qkv_split_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv,
                                      const Tensor& cos, const Tensor& sin) = 0;
  // The adjoint: dqkv (B*T, (Hq+2Hkv)*D) = merge(rope^T(dq), rope^T(dk), dv).
  virtual void qkv_split_rope_backward(Tensor& dqkv, const Tensor& dq, const Tensor& dk,
                                       const Tensor& dv, const Tensor& cos, const Tensor& sin) = 0;

  // ---- multi-latent attention (DeepSeek-V2/V3): q, k, v of the heads from the projections --
  // Dq = Dn + Dr query/key head dim (Dn without position, Dr rotary), Dv value head dim,
  // L latent rank, N = B*T rows:
  //   q_proj (N, H*Dq) per head [q_nope | q_pe];  kv_up (N, H*(Dn+Dv)) per head [k_nope | v];
  //   kv_down (N, L + Dr) = [c_kv | k_pe] (k_pe: one rotary key shared by all heads).
  // q, k (B,T,H,Dq), v (B,T,H,Dv); cos, sin (T or B*T, Dr/2) rotate halves of the Dr dims:
  //   q[.,h] = [q_nope, rope(q_pe)],  k[.,h] = [k_nope[.,h], rope(k_pe)],  v[.,h] = v[.,h].
  virtual void mla_qkv_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& q_proj, const Tensor& kv_up,
                                    const Tensor& kv_down, const Tensor& cos, const Tensor& sin) = 0;
  // The adjoint, all outputs written: dq_proj (N, H*Dq), dkv_up (N, H*(Dn+Dv)) and
  // dk_pe (N, Dr) = sum over heads of rope^T(dk[.,h, Dn:]).
  virtual void mla_qkv_rope_backward(Tensor& dq_proj, Tensor& dkv_up, Tensor& dk_pe, const Tensor& dq,
                                     const Tensor& dk, const Tensor& dv, const Tensor& cos, const Tensor& sin) = 0;

  // ---- attention (softmax(q k^T * scale + mask) v), GQA by head groups ----------------
  // q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,Dv), out (B,T,Hq,Dv), lse (B,Hq,T) fp32
  // (log-sum-exp of each score row, saved for backward). Hq % Hkv == 0; query head h
  // uses kv head h / (Hq/Hkv).
  // Mask: query t of row b attends to key s iff (s <= t or !causal) and, when segments is
  // non-null, segments[b,s] == segments[b,t]. segments (B,T) int32 on the backend's device:
  // the document id of each token of packed sequences, non-decreasing along each row (a
  // precondition: the CPU checks it, device kernels rely on it). Each document is then
  // attended as if it were a sequence of its own (Megatron's reset_attention_mask). Every
  // query keeps at least itself, so no score row is empty.
  virtual void attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                                 const Tensor& v, float scale, bool causal, const Tensor* segments) = 0;
  // dq, dk, dv written (not accumulated); the mask as in the forward.
  virtual void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                  const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, float scale, bool causal,
                                  const Tensor* segments) = 0;
  // Merge of two attention results of the same queries over disjoint key sets (context
  // parallel's ring attention, parallel/context_parallel.h): acc_out (B,T,H,Dv), acc_lse (B,H,T)
  // fp32 hold the result over the keys seen so far; part_out (B,Tp,H,Dv), part_lse (B,H,Tp) fp32
  // the result of query rows t0 .. t0+Tp-1 over other keys (t0 + Tp <= T). For each b, h and
  // t = t0 + i, with L = acc_lse[b,h,t], l = part_lse[b,h,i]:
  //   lse = max(L,l) + log(exp(L - max(L,l)) + exp(l - max(L,l)))
  //   acc_out[b,t,h,:] = exp(L - lse) * acc_out[b,t,h,:] + exp(l - lse) * part_out[b,i,h,:]
  //   acc_lse[b,h,t] = lse
  // (softmax over the union of the keys). A side whose lse is -inf (no keys) weighs 0; both -inf
  // leaves the row as it is. acc_out and part_out share a dtype; the arithmetic is fp32.
  virtual void attention_merge(Tensor& acc_out, Tensor& acc_lse, const Tensor& part_out, const Tensor& part_lse,
                               int64_t t0) = 0;

  // ---- SwiGLU: out = silu(gate) * up, gate_up (N, 2F) = [gate | up] -----------------
  virtual void swiglu_forward(Tensor& out, const Tensor& gate_up) = 0;
  virtual void swiglu_backward(Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) = 0;

  // ---- cross-entropy over the vocabulary -------------------------------------------
  // losses (N) fp32 = logsumexp(logits[i]) - logits[i, target[i]]; logits (N,V); targets
  // int32 (N), a negative target means "ignore" (loss 0, grad 0).
  virtual void cross_entropy_forward(Tensor& losses, const Tensor& logits, const Tensor& targets) = 0;
  // Forward and backward in one pass (llm.c's fused classifier): writes losses and
  // overwrites `logits` in place with dlogits[i] = dloss[i] * (softmax(logits[i]) - onehot).
  // dloss (N) fp32 is the weight of each token's loss (loss mask / number of tokens).
  virtual void cross_entropy_fused(Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                                   const Tensor& dloss) = 0;

  // ---- cross-entropy over a vocabulary split across ranks (tensor parallelism) ---------
  // Each rank holds logits (N,Vs) of its slice of the vocabulary and `targets` (N) int32
  // local to that slice: t in [0, Vs) when the token's label is in this slice, else
  // negative. Pass 1, per row i:
  //   stats (3,N) fp32: stats[0,i] = max_j z[i,j], stats[1,i] = sum_j exp(z[i,j] - stats[0,i]),
  //                     stats[2,i] = z[i,t_i] if t_i >= 0 else 0.
  // The caller all-gathers stats over the ranks into (P,3,N). Pass 2 combines them:
  //   M = max_r m_r, S = sum_r s_r exp(m_r - M), lse = M + log S, loss = lse - sum_r zt_r,
  // writes losses (N) fp32 and, when logits_to_grad is non-null, overwrites it with
  //   dz[i,j] = dloss[i] * (exp(z[i,j] - lse) - [j == t_i]).
  // Rows whose label is ignored get a finite loss; the caller masks it (dloss 0 there).
  // Default: a reference implementation on the host (CPU tensors in place; device tensors
  // are copied through the host, correct but slow: a backend should override both).
  virtual void cross_entropy_shard_stats(Tensor& stats, const Tensor& logits, const Tensor& targets);
  virtual void cross_entropy_shard_finish(Tensor& losses, Tensor* logits_to_grad, const Tensor& gathered_stats,
                                          const Tensor& targets, const Tensor& dloss);

  // ---- mixture of experts (the layer: model/mlp_moe.h; docs/MOE.md) ------------------
  // Shapes: N tokens, E experts, k = topk, G groups of N/G consecutive tokens (sequences for
  // the sequence-level aux loss, else 1), M rows of the expert-sorted buffer.
  //
  // Router top-k (Megatron's topk_routing_with_score_function), per token t, logits z (E):
  //   softmax, pre_softmax:  s = softmax(z), i = topk(s), p = s[i]
  //   softmax:               i = topk(z), p = softmax(z[i])
  //   sigmoid:               s = sigmoid(z), i = topk(s + bias), p = s[i] / (sum s[i] + 1e-20)
  //                          (not normalised when k = 1)
  // then p *= scaling. Group-limited routing (num_groups > 0): the experts form num_groups
  // equal groups of E / num_groups, each scored by
  //   group_max false:  the sum of its top (k / group_topk) selection scores   (Megatron, V3)
  //   group_max true:   its largest selection score                           (DeepSeek-V2)
  // only the best group_topk groups are eligible (group_max: k <= group_topk E / num_groups).
  // Ties go to the lower index (of group and of expert); indices are in order of descending
  // selection score.
  struct MoeRouting {
    int64_t topk = 1;
    bool sigmoid = false;       // score function: sigmoid, else softmax
    bool pre_softmax = false;   // softmax over all experts before top-k
    int64_t num_groups = 0, group_topk = 0;
    bool group_max = false;     // a group's score: its best expert (else its top k / group_topk summed)
    float scaling = 1.f;
  };
  // logits (N,E) fp32, bias (E) fp32 or undefined (selection only) -> probs (N,k) fp32,
  // indices (N,k) int32.
  virtual void moe_topk_forward(Tensor& probs, Tensor& indices, const Tensor& logits, const Tensor& bias,
                                const MoeRouting& r) = 0;
  // d_logits (N,E) fp32 = (d probs / d logits)^T d_probs (N,k) at the chosen indices (written).
  virtual void moe_topk_backward(Tensor& d_logits, const Tensor& d_probs, const Tensor& logits,
                                 const Tensor& indices, const MoeRouting& r) = 0;
  // Load-balancing statistics (Megatron's compute_routing_scores_for_aux_loss): per token the
  // scores over ALL experts, s = softmax(z) or sigmoid(z) / (sum + 1e-20), and its own top-k
  // (no groups, no bias). Written:
  //   score_sums (G,E) fp32 = sum over the tokens of group g of s
  //   counts (G,E) fp32     = how many tokens of group g have expert i in that top-k
  //   lse_sq (1) fp32       = sum over all tokens of logsumexp(z)^2 (the z-loss)
  // Reductions in a fixed order: the results are deterministic.
  virtual void moe_aux_stats(Tensor& score_sums, Tensor& counts, Tensor& lse_sq, const Tensor& logits,
                             int64_t topk, bool sigmoid) = 0;
  // d_logits (N,E) fp32 += d/dz of sum_t sum_i score_grad[g(t), i] s[t,i]   (score_grad (G,E))
  //                       + z_weight * sum_t logsumexp(z_t)^2.
  virtual void moe_aux_backward(Tensor& d_logits, const Tensor& logits, const Tensor& score_grad, float z_weight,
                                bool sigmoid) = 0;
  // Where each (token, slot) goes in the expert-sorted buffer: rows grouped by expert 0..E-1,
  // tokens in order within an expert. capacity < 0: every pair is kept. Else each expert keeps
  // at most `capacity` of its tokens: the highest probs (drop_by_probs; ties: lower token) or
  // the first ones; with pad, every expert gets exactly `capacity` rows (zero rows after its
  // tokens). Written:
  //   row_of (N,k) int32          the pair's row, -1 when dropped
  //   pair_of_row (M) int32       t*k + j of the pair a row holds, -1 for a padding row (only
  //                               the first sum(tokens_per_expert) rows are written)
  //   tokens_per_expert (E) int32 rows of each expert
  virtual void moe_dispatch_plan(Tensor& row_of, Tensor& pair_of_row, Tensor& tokens_per_expert,
                                 const Tensor& indices, const Tensor& probs, int64_t capacity, bool drop_by_probs,
                                 bool pad) = 0;
  // x_perm (M,C) row r = x[pair_of_row[r] / k], or zeros for a padding row.
  virtual void moe_permute(Tensor& x_perm, const Tensor& x, const Tensor& pair_of_row, int64_t topk) = 0;
  // dx (N,C) += sum_j d_x_perm[row_of[t,j]] over the kept slots.
  virtual void moe_permute_backward(Tensor& dx, const Tensor& d_x_perm, const Tensor& row_of) = 0;
  // y (N,C) += sum_j probs[t,j] y_perm[row_of[t,j]] over the kept slots (fp32 sum per row).
  virtual void moe_unpermute(Tensor& y, const Tensor& y_perm, const Tensor& row_of, const Tensor& probs) = 0;
  // Written: d_y_perm (M,C) row r = probs[pair] * dy[token of pair] (zeros for padding rows),
  // d_probs (N,k) = dy[t] . y_perm[row_of[t,j]] (0 when dropped).
  virtual void moe_unpermute_backward(Tensor& d_y_perm, Tensor& d_probs, const Tensor& dy, const Tensor& y_perm,
                                      const Tensor& row_of, const Tensor& pair_of_row, const Tensor& probs) = 0;
  // Grouped GEMM of the experts: rows [o_e, o_e + rows[e]) of x and y belong to expert e
  // (o_e = sum of the rows before it), w (E, out, in):
  //   forward  y (M,out) = x (M,in) @ w[e]^T per expert
  //   backward dx (M,in) = dy @ w[e] (skipped when dx is undefined);
  //            dw[e] (out,in) fp32 += dy_e^T @ x_e, or = with !accumulate (an expert without rows
  //            then gets zeros). Rows past sum(rows) are not read or written.
  // Default: one matmul per expert; a device backend may run one grouped launch.
  virtual void grouped_linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const std::vector<int64_t>& rows);
  virtual void grouped_linear_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                       const std::vector<int64_t>& rows, bool accumulate);

  // ---- optimizer -------------------------------------------------------------------
  // The update of AdamWTensor's tensors (dtypes there), every element as in fp32.
  virtual void adamw_step(std::vector<AdamWTensor>& params, const AdamWParams& p) = 0;
  // sum over tensors of sum(x^2) in fp64 (grad norm, params norm); NaN/Inf propagate.
  virtual double sum_of_squares(const std::vector<Tensor>& tensors) = 0;
  // Number of exactly-zero elements (the log line's `num zeros`).
  virtual int64_t count_zeros(const std::vector<Tensor>& tensors) = 0;
};

}  // namespace primus::ops

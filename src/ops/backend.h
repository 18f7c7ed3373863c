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

// One parameter as the optimizer sees it: fp32 master weight, fp32 grad, fp32 moments and
// optionally the low-precision model copy to refresh after the update (bf16/fp16).
struct AdamWTensor {
  Tensor master, grad, exp_avg, exp_avg_sq;
  Tensor model;      // may be undefined (fp32 training: master is the model weight)
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
  // x, out (B,T,H,D); cos, sin (T, R/2) fp32 with R <= D rotary dims (the first R of D).
  // out[.., i] = x[i]*cos - x[i+R/2]*sin, out[.., i+R/2] = x[i+R/2]*cos + x[i]*sin, i < R/2.
  virtual void rope_forward(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) = 0;
  virtual void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin) = 0;
  // Fused split of a QKV projection + RoPE on q and k:
  // qkv (B*T, (Hq + 2*Hkv)*D) rows laid out [q heads | k heads | v heads];
  // q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,D).
  virtual void qkv_split_rope_forward(Tensor& q, Tensor& k, Tensor& v, const Tensor& qkv,
                                      const Tensor& cos, const Tensor& sin) = 0;
  // The adjoint: dqkv (B*T, (Hq+2Hkv)*D) = merge(rope^T(dq), rope^T(dk), dv).
  virtual void qkv_split_rope_backward(Tensor& dqkv, const Tensor& dq, const Tensor& dk,
                                       const Tensor& dv, const Tensor& cos, const Tensor& sin) = 0;

  // ---- attention (softmax(q k^T * scale + causal mask) v), GQA by head groups -------
  // q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,Dv), out (B,T,Hq,Dv), lse (B,Hq,T) fp32
  // (log-sum-exp of each score row, saved for backward). Hq % Hkv == 0; query head h
  // uses kv head h / (Hq/Hkv).
  virtual void attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                                 const Tensor& v, float scale, bool causal) = 0;
  // dq, dk, dv written (not accumulated).
  virtual void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                  const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, float scale, bool causal) = 0;

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

  // ---- optimizer -------------------------------------------------------------------
  virtual void adamw_step(std::vector<AdamWTensor>& params, const AdamWParams& p) = 0;
  // sum over tensors of sum(x^2) in fp64 (grad norm, params norm); NaN/Inf propagate.
  virtual double sum_of_squares(const std::vector<Tensor>& tensors) = 0;
  // Number of exactly-zero elements (the log line's `num zeros`).
  virtual int64_t count_zeros(const std::vector<Tensor>& tensors) = 0;
};

}  // namespace primus::ops

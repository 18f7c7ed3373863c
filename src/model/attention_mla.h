// MlaAttention: multi-head latent attention of DeepSeek-V2/V3 (DeepSeek-AI 2024), with
// explicit backward. Shapes: N = B*T rows, H heads, C hidden, Lq = q_lora_rank (0: none),
// L = kv_lora_rank, Dn = qk_head_dim, Dr = qk_pos_emb_head_dim, Dq = Dn + Dr, Dv = v_head_dim.
//
//   h    = RMSNorm(x) * w_in                                   x, h (N, C) (R rows under SP)
//   query, Lq > 0:  c_q = h W_qd^T (N, Lq);  q = RMSNorm(c_q) W_qu^T       (N, H Dq)
//          Lq = 0:  q = h W_q^T                                              (N, H Dq)
//   kv_d = h W_kvd^T = [c_kv | k_pe]                            (N, L + Dr)
//   kv_u = RMSNorm(c_kv) W_kvu^T, per head [k_nope | v]         (N, H (Dn + Dv))
//   q_h  = [q_nope_h | rope(q_pe_h)],  k_h = [k_nope_h | rope(k_pe)],  v_h   (one k_pe for all heads)
//   a    = causal attention(q, k, v) with softmax scale (model/rotary.h: YaRN's mscale^2 / sqrt(Dq))
//   y    = x + a W_o^T                                          a (N, H Dv), W_o (C, H Dv)
//
// The latent norms are present when qk_layernorm (every DeepSeek config); without them c_q and
// c_kv pass through. RoPE rotates halves of the Dr dims (DeepSeek's checkpoints store the
// rotary rows in interleaved pairs; convert/ permutes them once).
//
// Backward, in reverse: dW_o, da; dq, dk, dv (attention); dq_proj, dkv_u and dk_pe (the
// adjoint split, dk_pe summed over heads); dc_kv through W_kvu and the kv norm; dkv_d =
// [dc_kv | dk_pe]; dh = dkv_d W_kvd + dq_proj W_q (or through W_qu, the q norm and W_qd);
// dx += RMSNorm^T(dh).
//
// Generation caches the latent per position: c = RMSNorm(c_kv) (L) and rope(k_pe) (Dr), L + Dr
// values instead of 2 H Dq. Prefill runs the training forward over the prompts and writes
// them; decode attends in the latent space (ops/mla_decode.h: W_uk absorbed into the query,
// W_uv applied to the latent output).
//
// Tensor parallel (Megatron's layout): the latent down-projections and norms are replicated and
// run on this rank's residual rows (R = N / tp under sequence parallel); the up-projections
// W_qu (or W_q) and W_kvu are column-parallel over heads (their inputs all-gathered under SP),
// the shared rotary key all-gathered, W_o row-parallel. In backward d k_pe, each rank's sum over
// its heads, is summed over tp back onto the residual rows, and the replicated weights take
// their grads from this rank's rows (summed over tp with the norms under SP).
#pragma once

#include "model/attention_gqa.h"
#include "model/model_config.h"

namespace primus {

struct MlaParams {
  NamedTensor* norm = nullptr;                                      // input_layernorm
  NamedTensor *q_down = nullptr, *q_norm = nullptr, *q_up = nullptr;  // Lq > 0 (q_norm optional)
  NamedTensor* q = nullptr;                                         // Lq = 0
  NamedTensor *kv_down = nullptr, *kv_norm = nullptr, *kv_up = nullptr, *proj = nullptr;
  // LoRA runs (parallel/lora.h): adapters on the projections, inactive otherwise. The latent
  // down-projections are replicated (lora_replicated_*), the up-projections column-parallel,
  // linear_proj row-parallel. Generation merges them (model/lora_weights.h) before decode.
  parallel::LoraAdapter q_down_lora{}, q_up_lora{}, q_lora{}, kv_down_lora{}, kv_up_lora{}, proj_lora{};
};

struct MlaDims {
  int64_t heads = 0, q_lora = 0, kv_lora = 0, nope = 0, rope = 0, v = 0;
  int64_t qk() const { return nope + rope; }
};

class MlaAttention : public AttentionBlock {
 public:
  MlaAttention(MlaParams p, MlaDims dims, float softmax_scale);

  std::vector<NamedTensor*> params() const override;
  std::vector<NamedTensor*> overwritten_grads() const override;
  // The adapters' grads that are partial sums over tp (parallel/lora.h).
  std::vector<NamedTensor*> lora_partial_grads(const parallel::TensorParallel& tp) const;
  void forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts,
               Recompute keep) override;
  void backward(LayerEnv& env, BlockActivations& acts, Tensor& dres, Recompute kept) override;

  std::vector<Shape> cache_entry_shapes() const override;
  void prefill(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache) override;
  void decode(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache,
              const Tensor& positions) override;

 private:
  struct Acts;
  // The latent tensors of `a` for `rows` tokens: h, the query latent (and its norm), [c_kv | k_pe]
  // and RMSNorm(c_kv). Training keeps them for backward; decode uses them once.
  void alloc_latents(Arena& A, int64_t rows, DType dt, Acts& a) const;
  // x -> those latents and q_proj (rows, H Dq), the query before RoPE.
  void project_latents(LayerEnv& env, const Tensor& x, Acts& a, Tensor& q_proj) const;
  // rope(k_pe) (B*T, Dr) from a.kvd, in a new arena tensor (rows mapped to the rope tables as (B, T)).
  Tensor rotated_k_pe(LayerEnv& env, const Acts& a, int64_t B, int64_t T) const;
  // Everything from x to q, k, v (the tensors of `a` allocated by the caller).
  void project(LayerEnv& env, const Tensor& x, Acts& a) const;

  MlaParams p_;
  MlaDims d_;
  float scale_;
};

}  // namespace primus

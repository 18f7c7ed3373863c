// GqaAttention: the attention block of Llama and Mixtral layers, with explicit backward and
// the two inference phases over a KV cache.
//
//   h = RMSNorm(x) * w_in                          x (R,C) residual rows, h (R,C)
//   q, k, v = RoPE-split(h @ W_qkv^T)              W_qkv ((Hq + 2Hkv) D, C), rows [q | k | v]
//   a = causal GQA attention(q, k, v)              q, a (B,T,Hq,D), k, v (B,T,Hkv,D), scale 1/sqrt(D)
//   y = x + a @ W_proj^T                           W_proj (C, Hq D)
//
// Query head h reads kv head h / (Hq/Hkv). RoPE rotates halves of the first R = D *
// rotary_percent dims with the model's frequencies (model/rotary.h: Llama 3.1 scaling
// when use_rope_scaling).
//
// Tensor parallel: W_qkv is column-parallel (rank r holds its Hq/P query heads and Hkv/P kv
// heads), W_proj row-parallel; attention runs on the local heads (parallel/layers.h).
//
// Inference (model/decoder_layer.h's AttentionBlock interface): the cache of one layer holds
// k and v (B, max_len, Hkv, D) after RoPE; prefill runs the training forward over the
// right-padded prompts and writes positions [0, T) of each sequence; decode appends one
// token per sequence at its position and attends over the cache (infer/decode_attention.h).
#pragma once

#include <vector>

#include "model/block.h"
#include "model/model_config.h"
#include "parallel/lora.h"

namespace primus {

struct GqaParams {
  NamedTensor *norm = nullptr, *qkv = nullptr, *proj = nullptr;
  parallel::LoraAdapter qkv_lora{}, proj_lora{};  // LoRA runs (parallel/lora.h); inactive otherwise
};

// An attention block usable for generation: what it caches per position and the two phases.
class AttentionBlock : public Block {
 public:
  // The shape of each tensor the block caches per (sequence, position): GQA {(Hkv, D), (Hkv, D)}.
  virtual std::vector<Shape> cache_entry_shapes() const = 0;
  // x (B*T, C) prompts right-padded to T -> y (B*T, C); writes positions [0, T) of every
  // sequence into cache[i] (B, max_len, entry_shape_i...). Rows past a prompt's length hold
  // padding; a query at position p reads keys 0..p only, and decode overwrites them.
  virtual void prefill(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache) = 0;
  // x (B, C): one new token per sequence at positions (B) int32 on the device (env.rope_* are
  // (B, R/2): row b rotates sequence b) -> y (B, C); appends to the cache.
  virtual void decode(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache,
                      const Tensor& positions) = 0;
};

class GqaAttention : public AttentionBlock {
 public:
  // heads/groups: this rank's share (config / tp size), head_dim D; softmax_scale from
  // model/rotary.h (1/sqrt(D)).
  GqaAttention(GqaParams p, int64_t heads, int64_t groups, int64_t head_dim, float softmax_scale);

  std::vector<NamedTensor*> params() const override;
  std::vector<NamedTensor*> overwritten_grads() const override { return {p_.qkv, p_.proj}; }
  // The adapters' grads that are partial sums over tp (parallel/lora.h).
  std::vector<NamedTensor*> lora_partial_grads(const parallel::TensorParallel& tp) const;
  void forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts,
               Recompute keep) override;
  void backward(LayerEnv& env, BlockActivations& acts, Tensor& dres, Recompute kept) override;

  std::vector<Shape> cache_entry_shapes() const override { return {{Hkv_, D_}, {Hkv_, D_}}; }
  void prefill(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache) override;
  void decode(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache,
              const Tensor& positions) override;

 private:
  struct Acts;  // R = residual rows, N = B*T
  // h = norm(x), then q, k, v (B,T,H,D) after RoPE from h.
  void project_qkv(LayerEnv& env, const Tensor& x, Tensor& h, Tensor& rstd, Tensor& q, Tensor& k, Tensor& v) const;
  int64_t qkv_width() const { return (Hq_ + 2 * Hkv_) * D_; }

  GqaParams p_;
  int64_t Hq_, Hkv_, D_;
  float scale_;
};

}  // namespace primus

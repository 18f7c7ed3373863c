// One Llama decoder layer with explicit forward and backward (pre-norm residual block):
//
//   h1 = RMSNorm(x) * w_in                      x (N,C), N = B*T tokens
//   q, k, v = RoPE-split(h1 @ W_qkv^T)          W_qkv ((Hq + 2Hkv) D, C), rows [q | k | v]
//   a = causal GQA attention(q, k, v)           a (B,T,Hq,D), scale 1/sqrt(D)
//   x_mid = x + a @ W_proj^T                    W_proj (C, Hq D)
//   h2 = RMSNorm(x_mid) * w_mlp
//   g = h2 @ W_fc1^T                            W_fc1 (2F, C), rows [gate | up]
//   x_out = x_mid + SwiGLU(g) @ W_fc2^T         W_fc2 (C, F)
//
// The layer sees its weights through LlamaLayerParams (pointers into the model's
// parameter list) and keeps what backward needs in LlamaLayerActivations, allocated in
// the model's arena. What is kept depends on the recompute mode.
//
// Tensor parallel (env.tp, parallel/tensor_parallel.h): the weights are this rank's
// shards (W_qkv, W_fc1 column-parallel, W_proj, W_fc2 row-parallel), the dims are the
// local ones (Hq, Hkv, F per rank), and the two linears that start a block read the
// residual rows through enter_tp_region while the two that end it write through
// exit_tp_region. With sequence parallel, x, h1, h2, x_mid and x_out hold only this rank's
// residual_rows() of the N token rows; everything between the boundaries holds all N.
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "model/named_tensor.h"
#include "ops/ops.h"
#include "parallel/tensor_parallel.h"

namespace primus {

// Megatron's recompute_granularity: None keeps every activation backward needs;
// Selective drops the attention core's outputs (a, lse) and the SwiGLU output and
// recomputes them in backward; Full keeps only the layer input and recomputes the
// whole layer in backward.
enum class Recompute { None, Selective, Full };

struct LlamaDims {
  int64_t B = 0, T = 0;             // batch, sequence
  int64_t C = 0, F = 0, V = 0;      // hidden, ffn hidden, vocabulary rows (F, V: this rank's share)
  int64_t Hq = 0, Hkv = 0, D = 0;   // query heads, kv heads (this rank's share), head dim
  int64_t sequence_shards = 1;      // tp size under sequence parallel, else 1
  int64_t N() const { return B * T; }
  int64_t residual_rows() const { return N() / sequence_shards; }  // rows of x, h1, h2, x_mid
  int64_t qkv_width() const { return (Hq + 2 * Hkv) * D; }
};

struct LlamaLayerParams {
  NamedTensor *input_norm = nullptr, *qkv = nullptr, *proj = nullptr;
  NamedTensor *mlp_norm = nullptr, *fc1 = nullptr, *fc2 = nullptr;
};

// R = residual_rows() (N without sequence parallel).
struct LlamaLayerActivations {
  Tensor x;                  // layer input (R,C): owned by the caller (the residual stream)
  Tensor h1, rstd1;          // (R,C), (R) fp32
  Tensor q, k, v;            // (B,T,Hq,D), (B,T,Hkv,D) x2, after RoPE
  Tensor attn, lse;          // (B,T,Hq,D), (B,Hq,T) fp32   [not kept under Selective]
  Tensor x_mid, h2, rstd2;   // (R,C), (R,C), (R) fp32
  Tensor gate_up, act;       // (N,2F), (N,F)               [act not kept under Selective]
};

// What a layer needs besides its weights: context, arena, shapes, RoPE tables, eps.
struct LlamaLayerEnv {
  ops::Context& ctx;
  Arena& arena;
  LlamaDims dims;
  Tensor rope_cos, rope_sin;  // (T, R/2) fp32
  float norm_eps = 1e-5f;
  float attn_scale = 1.f;
  parallel::TensorParallel tp{};  // default: one rank
  // Backward writes the four linear weights' grads instead of adding to them (the step's first
  // micro-batch when the caller did not zero them: LlamaModel::zero_grads_for_overwrite).
  bool overwrite_linear_grads = false;
};

class LlamaLayer {
 public:
  explicit LlamaLayer(LlamaLayerParams params) : p_(params) {}
  const LlamaLayerParams& params() const { return p_; }

  // x_out (R,C) = layer(x) (x taken by value: it may be acts.x, which is reset). Activations per `keep` (Full: only acts.x) are allocated in
  // env.arena and stay there; temporaries are released before returning. x_out must be
  // allocated by the caller (before this call, so that releasing temporaries keeps it).
  void forward(LlamaLayerEnv& env, Tensor x, Tensor& x_out, LlamaLayerActivations& acts,
               Recompute keep) const;

  // dres (R,C): on entry d loss / d x_out, on exit d loss / d x. Weight gradients
  // accumulate into the NamedTensor grads. `kept` is the mode forward ran with: missing
  // activations are recomputed here (arena space above the saved ones, released on exit).
  void backward(LlamaLayerEnv& env, LlamaLayerActivations& acts, Tensor& dres, Recompute kept) const;

 private:
  LlamaLayerParams p_;
};

}  // namespace primus

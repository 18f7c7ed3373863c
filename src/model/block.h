// Block: one pre-norm residual part of a decoder layer, the unit that decoder_spec composes.
//
//   y = x + f(norm(x))        x, y (R, C): this rank's residual rows of the micro-batch
//
// A decoder layer is an attention block followed by an MLP block (model/decoder_layer.h).
// Implementations: GqaAttention (attention_gqa.h), DenseMlp (mlp_dense.h), MoeMlp
// (mlp_moe.h). Each owns nothing but pointers to its parameters (the model's NamedTensors),
// its local sizes (this rank's share of heads or inner features) and, for MoE, its routing
// statistics; activations live in the caller's arena and are recorded in the block's
// BlockActivations for the backward.
//
// Blocks call ops/ops.h for math, parallel/layers.h for the tensor-parallel linears and
// parallel/expert_parallel.h for the token exchange of MoE: no collective appears in a block.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/arena.h"
#include "model/fp8_training.h"
#include "parallel/named_tensor.h"
#include "ops/ops.h"
#include "parallel/context_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/layers.h"
#include "parallel/lora.h"
#include "parallel/tensor_parallel.h"

namespace primus {

// Megatron's recompute_granularity: None keeps every activation backward needs;
// Selective drops the attention core's outputs and the SwiGLU output and recomputes them
// in backward; Full keeps only the layer input and recomputes the whole layer in backward.
enum class Recompute { None, Selective, Full };

// The token dims of one micro-batch as every block sees them.
struct TokenDims {
  int64_t B = 0, T = 0, C = 0;  // batch, sequence, hidden
  int64_t sequence_shards = 1;   // tensor-parallel size under sequence parallel, else 1
  int64_t N() const { return B * T; }
  int64_t residual_rows() const { return N() / sequence_shards; }  // rows of x, norms, residuals
};

// What a block needs besides its weights: context, arena, shapes, RoPE tables, eps, the
// tensor- and expert-parallel groups.
struct LayerEnv {
  ops::Context& ctx;
  Arena& arena;
  TokenDims dims;
  Tensor rope_cos, rope_sin;  // (T, R/2) fp32: positions of the rows (decode: one row per sequence);
                              // (B*T, R/2) for packed rows (each token's own position)
  float norm_eps = 1e-5f;
  parallel::TensorParallel tp{};  // default: one rank
  parallel::ExpertParallel ep{};  // default: one rank (MoE blocks hold every expert)
  // Context parallel (parallel/context_parallel.h): the rows hold this cp rank's two chunks of
  // each sequence (rope_cos/sin at their real positions); attention runs as a ring over cp.
  parallel::ContextParallel cp{};
  // Backward writes the linear weights' grads instead of adding to them (the step's first
  // micro-batch when the caller did not zero them: DecoderModel::zero_grads_for_overwrite).
  bool overwrite_linear_grads = false;
  // A training forward (its backward follows): MoE blocks count tokens per expert and add
  // their auxiliary losses, with weight aux_loss_weight in the objective (loss scale /
  // micro-batches in the global batch). Evaluation and generation leave it false.
  bool training = false;
  float aux_loss_weight = 0.f;
  // A forward re-run by full recompute inside the backward: the same values, but MoE blocks
  // do not count its tokens and losses a second time.
  bool recomputing = false;
  // Packed rows: (B,T) int32 document ids on the device (attention stays inside a document);
  // undefined: one document per row.
  Tensor segments{};
  // LoRA dropout of a training micro-batch (parallel/lora.h); null: none (evaluation,
  // generation, reference log-probs). Read only when `training`; DecoderLayer keeps a copy for
  // its backward.
  const parallel::LoraDropout* lora_dropout = nullptr;
  // FP8 training (model/fp8_training.h): the linears whose GEMMs run in FP8; null: none.
  Fp8Training* fp8 = nullptr;
};

// How a block's linear with weight w runs: FP8 when the run trains in FP8 and w is one of its
// FP8 linears (a training forward records amaxes), else bf16 (an empty Fp8Use).
inline parallel::Fp8Use fp8_of(const LayerEnv& env, const NamedTensor* w) {
  return {fp8_linear_of(env.fp8, w), env.training};
}

// The LoRA dropout an adapter call of this env applies (inactive outside training forwards
// and their backward).
inline parallel::LoraDropoutSite lora_dropout_of(const LayerEnv& env) {
  return {env.training ? env.lora_dropout : nullptr, env.dims.T, env.cp.rank(), env.cp.size()};
}

// The document ids of packed rows for the attention ops, or null.
inline const Tensor* segments_of(const LayerEnv& env) { return env.segments.defined() ? &env.segments : nullptr; }

// The weight-gradient buffer a norm's backward writes into: the parameter's grad, or for a
// frozen parameter (a LoRA run's base model: no grad) a zeroed scratch in the arena whose
// values are dropped.
inline Tensor norm_weight_grad(LayerEnv& env, const NamedTensor& p) {
  if (p.grad.defined()) return p.grad;
  Tensor scratch = env.arena.alloc(p.value.shape(), DType::F32);
  ops::fill(env.ctx, scratch, 0.f);
  return scratch;
}

// What a block keeps for its backward (each block extends it with its tensors).
struct BlockActivations {
  virtual ~BlockActivations() = default;
  Tensor x;  // the block input (R, C): owned by the caller (the residual stream)
};

// The end of an attention block's forward under `keep` (GqaAttention, MlaAttention): releases
// the arena from `scratch` on (under Full the block's mark before its first allocation, so only
// the input is kept), and under Selective drops the attention core's output and log-sum-exp,
// which backward recomputes. Acts has members x, attn, lse.
template <typename Acts>
void finish_attention_forward(Arena& arena, Arena::Mark scratch, std::unique_ptr<Acts> acts, const Tensor& x,
                              Recompute keep, std::unique_ptr<BlockActivations>& out) {
  arena.release(scratch);
  if (keep == Recompute::Full) {
    acts = std::make_unique<Acts>();
    acts->x = x;
  } else if (keep == Recompute::Selective) {
    acts->attn = acts->lse = Tensor();
  }
  out = std::move(acts);
}

class Block {
 public:
  virtual ~Block() = default;
  // The block's parameters in forward order (the norm first).
  virtual std::vector<NamedTensor*> params() const = 0;
  // The parameters whose gradients backward WRITES (beta = 0 GEMMs) when
  // env.overwrite_linear_grads: every element of them, whatever the micro-batch.
  virtual std::vector<NamedTensor*> overwritten_grads() const = 0;

  // y (R, C) = x + f(norm(x)). y is allocated by the caller before the call. Activations per
  // `keep` (Full: only acts.x) are allocated in env.arena and stay there; temporaries are
  // released before returning. `acts` is (re)made by the block.
  virtual void forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts,
                       Recompute keep) = 0;
  // dres (R, C): on entry d loss / d y, on exit d loss / d x. Parameter gradients accumulate
  // (or are written, see above). `kept` is the mode forward ran with (never Full: the layer
  // re-runs forward for that); missing activations are recomputed here.
  virtual void backward(LayerEnv& env, BlockActivations& acts, Tensor& dres, Recompute kept) = 0;
};

}  // namespace primus

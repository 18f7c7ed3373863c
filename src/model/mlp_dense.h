// DenseMlp: the SwiGLU MLP block of Llama layers (and, with other sizes, the shared experts
// of an MoE layer), with explicit backward.
//
//   h = RMSNorm(x) * w_norm                       x (R,C), h (R,C)
//   g = h @ W_fc1^T                               W_fc1 (2F, C), rows [gate | up]; g (N, 2F)
//   y = x + SwiGLU(g) @ W_fc2^T                   SwiGLU(g) = silu(gate) * up (N, F); W_fc2 (C, F)
//
// Tensor parallel: W_fc1 column-parallel ([gate_r | up_r], F/P rows each), W_fc2
// row-parallel (parallel/layers.h); F below is this rank's share.
#pragma once

#include "model/block.h"
#include "parallel/lora.h"

namespace primus {

struct MlpParams {
  NamedTensor *norm = nullptr, *fc1 = nullptr, *fc2 = nullptr;
  parallel::LoraAdapter fc1_lora{}, fc2_lora{};  // LoRA runs (parallel/lora.h); inactive otherwise
};

// The SwiGLU MLP between two residual-stream tensors, without the norm: the part a dense
// block and an MoE layer's shared experts have in common. Activations: g (N, 2F) kept, act
// (N, F) kept unless selective recompute.
struct SwigluMlp {
  NamedTensor *fc1 = nullptr, *fc2 = nullptr;
  int64_t F = 0;  // this rank's inner size
  parallel::LoraAdapter fc1_lora{}, fc2_lora{};

  // y (R,C) = h (R,C) -> fc1 -> SwiGLU -> fc2 [+ residual]; g and act allocated by the caller.
  void forward(LayerEnv& env, const Tensor& h, Tensor& g, Tensor& act, Tensor& y, const Tensor* residual) const;
  // dh (R,C) written from dy (R,C) = d y; grads of fc1, fc2.
  void backward(LayerEnv& env, const Tensor& h, const Tensor& g, const Tensor& act, const Tensor& dy, Tensor& dh) const;
};

class DenseMlp : public Block {
 public:
  DenseMlp(MlpParams p, int64_t ffn_local) : norm_(p.norm), mlp_{p.fc1, p.fc2, ffn_local, p.fc1_lora, p.fc2_lora} {}

  std::vector<NamedTensor*> params() const override;
  // The adapters' grads that are partial sums over tp (parallel/lora.h).
  std::vector<NamedTensor*> lora_partial_grads(const parallel::TensorParallel& tp) const;
  std::vector<NamedTensor*> overwritten_grads() const override { return {mlp_.fc1, mlp_.fc2}; }
  void forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts,
               Recompute keep) override;
  void backward(LayerEnv& env, BlockActivations& acts, Tensor& dres, Recompute kept) override;

 private:
  struct Acts;
  NamedTensor* norm_;
  SwigluMlp mlp_;
};

}  // namespace primus

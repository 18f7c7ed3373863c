// MoeMlp: the mixture-of-experts MLP block (Mixtral, DeepSeek-MoE), Megatron-core's MoELayer
// with its router, token dispatcher, grouped experts and shared experts, explicit backward.
//
//   h = RMSNorm(x) * w_norm                             x, h (N,C)
//   z = h @ W_router^T                                  (N,E) fp32 logits
//   p, i = top-k(z)                                     (N,k) probs and experts (backend.h's
//                                                       MoeRouting: softmax | sigmoid, pre-softmax,
//                                                       group-limited, expert bias, scaling)
//   plan = dispatch(i, p, capacity)                     each (token, slot) -> a row of the
//                                                       expert-sorted buffer (or dropped)
//   X = permute(h)                                      (M,C) rows of expert 0, expert 1, ...
//   Y = SwiGLU(X @ W1_e^T) @ W2_e^T per expert          W1 (E, 2Fe, C), W2 (E, C, Fe)
//   y = x [+ shared(h)] + sum_j p[t,j] Y[row(t,j)]      shared: a SwiGLU MLP of inner Fs
//
// Capacity (moe_expert_capacity_factor cf): each expert takes at most ceil(N k / E * cf) of its
// tokens (highest probs, or the first ones with moe_token_drop_policy: position; a dropped
// slot contributes nothing); moe_pad_expert_input_to_capacity pads every expert to exactly
// that many rows. Dropless when cf is unset.
//
// Auxiliary losses of a training forward (weight env.aux_loss_weight in the objective; their
// values are reported per layer, divided by their coefficient, as Megatron logs them), from
// the scores over all experts s = softmax(z) (sigmoid: sigmoid(z) / sum) and their own top-k:
//   aux_loss      coeff E / (k N^2) sum_i (sum_t s_ti) c_i          c_i = tokens with i in top-k
//   seq_aux_loss  the same per sequence (T tokens), averaged over the B sequences
//   z-loss        z_coeff / N sum_t logsumexp(z_t)^2
// Aux-loss-free balancing (moe_router_enable_expert_bias): a per-expert bias added to the
// sigmoid scores for selection only, updated after each step by update_expert_bias():
// b_i += rate * sign(mean(c) - c_i), c_i = the step's routed tokens of expert i over all
// data-parallel ranks.
//
// Tensor parallel (env.tp active; Megatron's expert_tensor_parallel_size = tp): every expert
// and the shared experts are split like a dense MLP (W1 rows [gate_r | up_r], W2 the matching
// columns: Fe/P and Fs/P here). The normed tokens of the tensor-parallel group are gathered
// (h_N = enter_tp_region(h), (N,C); h itself without sequence parallel), so every tp rank
// routes the same N tokens the same way and the auxiliary losses see the whole micro-batch as
// on one rank; the experts' and shared experts' partial outputs are summed into (N,C) and
// reduced (exit_tp_region) before the residual is added:
//   y = x + exit_tp_region(shared_r(h_N) + sum_j p[t,j] Y_r[row(t,j)])
// In backward d probs (which reads the summed expert outputs) is all-reduced over tp, and the
// router (replicated, like a norm) takes its gradient from this rank's residual rows.
//
// Context parallel (env.cp active; the rows are this cp rank's two chunks of each sequence):
// routing is per token, so only the auxiliary losses see the sequence. Their statistics
// (score sums, routed counts, the z-loss sum; per sequence for seq_aux_loss) are summed over
// cp before the losses are formed, with T and N the whole sequences' token counts, so every
// cp rank computes the single-rank loss value and the gradient of its own tokens' share (the
// router's gradient is then summed over dp x cp like any replicated weight). Capacity stays
// per rank, on its own tokens (as under data parallel and in Megatron).
//
// Expert parallel (env.ep active): this rank holds E_l = E/P experts (W1, W2 are (E_l, ...)
// shards); routing, capacity and the auxiliary losses stay per rank on its own tokens, and the
// permuted rows travel to their experts' ranks and back (parallel/expert_parallel.h) around
// the grouped GEMMs; with tp the exchange runs among the ranks of one tp coordinate, on the
// gathered tokens. What MoE options it builds: check_buildable (decoder_spec.h).
#pragma once

#include <vector>

#include "model/block.h"
#include "model/mlp_dense.h"
#include "model/model_config.h"

namespace primus {

struct MoeParams {
  NamedTensor* norm = nullptr;
  NamedTensor* router = nullptr;       // (E, C)
  NamedTensor* expert_bias = nullptr;  // (E) buffer, or null
  NamedTensor* fc1 = nullptr;          // (E, 2Fe, C)
  NamedTensor* fc2 = nullptr;          // (E, C, Fe)
  NamedTensor* shared_fc1 = nullptr;   // (2Fs, C) or null
  NamedTensor* shared_fc2 = nullptr;   // (C, Fs) or null
  // LoRA runs (parallel/lora.h): per-expert adapters stacked like fc1 / fc2 (lora_grouped_*),
  // and the shared experts' (a SwiGLU MLP's); inactive otherwise.
  parallel::LoraAdapter fc1_lora{}, fc2_lora{}, shared_fc1_lora{}, shared_fc2_lora{};
};

// What one MoE layer saw over the training forwards of a step (reset by the caller).
struct MoeStepStats {
  std::vector<double> tokens_per_expert;  // (E) routed (kept) token slots
  double load_balancing_loss = 0;         // sum over micro-batches of aux (or seq aux) loss / coeff
  double z_loss = 0;                      // sum over micro-batches of z-loss / coeff
  double dropped = 0;                     // token slots dropped by capacity
  int64_t micro_batches = 0;
  void reset(int64_t num_experts);
};

class MoeMlp : public Block {
 public:
  // tp_size: the tensor-parallel ranks the experts' inner sizes are split over.
  MoeMlp(MoeParams p, const ModelConfig& c, int64_t layer, int64_t tp_size = 1);

  std::vector<NamedTensor*> params() const override;
  std::vector<NamedTensor*> overwritten_grads() const override;
  // The adapters' grads that are partial sums over tp: fc1's A and fc2's B of the routed and the
  // shared experts (their partial outputs are summed over tp with the base experts').
  std::vector<NamedTensor*> lora_partial_grads(const parallel::TensorParallel& tp) const;
  void forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts,
               Recompute keep) override;
  void backward(LayerEnv& env, BlockActivations& acts, Tensor& dres, Recompute kept) override;

  int64_t layer() const { return layer_; }
  int64_t num_experts() const { return E_; }
  NamedTensor* expert_bias() const { return p_.expert_bias; }
  MoeStepStats& stats() { return stats_; }
  // b += rate * sign(mean(tokens) - tokens) per expert; tokens (E) summed over the step and the
  // data-parallel ranks (the same on every rank, so every rank applies the same update).
  void update_expert_bias(ops::Context& ctx, const std::vector<double>& tokens) const;
  // Expert capacity for a micro-batch of n tokens; -1 when dropless.
  int64_t capacity(int64_t n) const;

 private:
  struct Acts;
  // logits -> routing, plan and (training) aux statistics; fills `a`.
  void route(LayerEnv& env, Acts& a);

  MoeParams p_;
  int64_t layer_, E_, k_, Fe_;
  ops::MoeRouting routing_;
  enum class Balance { None, Aux, SeqAux } balance_ = Balance::None;
  double aux_coeff_ = 0, z_coeff_ = 0, capacity_factor_ = 0, rate_ = 0;
  bool drop_by_probs_ = true, pad_ = false;
  SwigluMlp shared_;  // fc1 null: no shared experts
  MoeStepStats stats_;
};

}  // namespace primus

// Tensor-parallel layers (Megatron-core's tensor_parallel/layers.py and cross_entropy.py):
// the model code calls these and never a collective. With one tensor-parallel rank
// (TensorParallel{} or a group of one) each is the plain op, bit for bit.
//
// ---- Using it ---------------------------------------------------------------------
//
//   // a block: norm output h (R,C) -> column-parallel up-projection -> ... -> row-parallel
//   // down-projection into the residual stream
//   parallel::column_parallel_linear_forward(ctx, tp, arena, gate_up, h, w_fc1);  // (N, 2F/P)
//   ops::swiglu_forward(ctx, act, gate_up);
//   parallel::row_parallel_linear_forward(ctx, tp, arena, x_out, act, w_fc2, &x_mid);  // (R, C)
//   // backward, in reverse
//   parallel::row_parallel_linear_backward(ctx, tp, arena, &d_act, g_fc2, d_x_out, act, w_fc2, acc);
//   parallel::column_parallel_linear_backward(ctx, tp, arena, dh, g_fc1, d_gate_up, h, w_fc1, acc);
//
// R = this rank's residual rows (N, or N/P under sequence parallel; parallel/tensor_parallel.h
// has the region table), N = all token rows of the micro-batch, P = tensor-parallel size.
//
// ---- What each layer does across ranks ------------------------------------------------
//
//   column-parallel linear   y (N, out/P) = gather(x) @ w_shard^T; backward reduces d x
//   row-parallel linear      y (R, out) = reduce(x_shard @ w_shard^T) [+ residual]
//   vocab-parallel embedding each rank looks up the tokens in its vocabulary rows, partial
//                            sums reduced into (R, C)
//   output layer + loss      column-parallel logits (N, V/P) in chunks of rows, the
//                            cross-entropy over the full vocabulary from per-row statistics
//                            (max, sum-exp, target logit) all-gathered; the full logits
//                            never exist on one rank
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "ops/fp8.h"
#include "ops/ops.h"
#include "parallel/tensor_parallel.h"

namespace primus::parallel {

// ---- linear layers -------------------------------------------------------------------
//
// Each takes an optional FP8 linear (ops/fp8.h, model/fp8_training.h): with one, its GEMMs run
// in FP8 with that linear's scaling (the communication is unchanged; it moves bf16).

// An FP8 linear in use: its state, and whether the forward records amaxes (a training forward;
// evaluation and generation do not move delayed scaling's history).
struct Fp8Use {
  ops::Fp8Linear* linear = nullptr;
  bool record_amax = true;
};

// y (N, out_local) = enter(x (R, in)) @ w^T, w (out_local, in) this rank's rows. y is the
// caller's (allocated before the call); the gathered input is scratch in `arena`.
void column_parallel_linear_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y,
                                    const Tensor& x, const Tensor& w, Fp8Use fp8 = {});
// dx (R, in) = the tp-reduced dy @ w (written); dw (out_local, in) += dy^T @ enter(x), or
// written when !accumulate_dw. Under sequence parallel x is gathered again here.
void column_parallel_linear_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, Tensor& dw,
                                     const Tensor& dy, const Tensor& x, const Tensor& w, bool accumulate_dw,
                                     Fp8Use fp8 = {});
// y (R, out) = reduce over tp of x (N, in_local) @ w^T, w (out, in_local) this rank's columns,
// plus residual (R, out) when given (on one rank inside the GEMM's epilogue).
void row_parallel_linear_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y,
                                 const Tensor& x, const Tensor& w, const Tensor* residual = nullptr, Fp8Use fp8 = {});
// dx (N, in_local) = enter(dy (R, out)) @ w (written; skipped when dx is null); dw += (or =)
// enter(dy)^T @ x.
void row_parallel_linear_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor* dx, Tensor& dw,
                                  const Tensor& dy, const Tensor& x, const Tensor& w, bool accumulate_dw,
                                  Fp8Use fp8 = {});

// A column-parallel linear whose output returns to the residual stream (Megatron's
// ColumnParallelLinear with gather_output, then the sequence-parallel scatter; MTP's eh_proj):
//   y (R, out) = this rank's residual rows of [enter(x) @ w_0^T | ... | enter(x) @ w_{P-1}^T]
// w (out/P, in) this rank's rows. One all-gather of the (N, out/P) outputs.
void column_parallel_linear_gathered_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y,
                                             const Tensor& x, const Tensor& w);
// dx (R, in) written = the tp-reduced d(enter(x)); dw (out/P, in) += (or = when
// !accumulate_dw) this rank's columns of the (N, out) gradient^T @ enter(x).
void column_parallel_linear_gathered_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx,
                                              Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                              bool accumulate_dw);

// ---- vocabulary-parallel embedding and output layer -------------------------------------

struct VocabRange {
  int64_t begin = 0, end = 0;  // this rank's rows [begin, end) of the padded vocabulary
  int64_t size() const { return end - begin; }
  bool contains(int64_t id) const { return id >= begin && id < end; }
};
VocabRange vocab_range(const TensorParallel& tp, int64_t padded_vocab_size);

// Which token rows look up this rank's slice, computed on the host once per micro-batch.
struct VocabParallelTokens {
  int64_t num_tokens = 0, num_hits = 0;
  Tensor hit_rows;    // (hits) int32: rows i whose token is in the slice, ascending
  Tensor hit_ids;     // (hits) int32: their row in the local table (token - begin)
  Tensor gather_map;  // (N) int32: i -> its index in hit_rows, or `hits` (a zero row)

  // tokens: (N) int32 on the CPU; the index tensors are created on `device`.
  static VocabParallelTokens route(const Tensor& tokens_host, VocabRange range, Device device);
};

// The token ids of one micro-batch as the embedding reads them: the ids on the device (one
// tensor-parallel rank) or their routing to this rank's vocabulary slice.
struct EmbeddingTokens {
  Tensor ids;                  // (N) int32 on the device; one rank
  VocabParallelTokens routed;  // tensor parallel
  // tokens (N) int32 on any device.
  static EmbeddingTokens make(const TensorParallel& tp, const Tensor& tokens, int64_t padded_vocab_size,
                              Device device);
};

// out (R, C) = table[tokens] (rows of the vocabulary split over tp, partial sums reduced).
void embedding_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& out,
                       const EmbeddingTokens& tokens, const Tensor& table);
// dtable (V_local, C) fp32 += the rows of d out (R, C) this rank's tokens looked up.
void embedding_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dtable, const Tensor& dout,
                        const EmbeddingTokens& tokens);

// Targets local to this rank's vocabulary slice (host (N) int32 in, host out): label - begin
// when the label is in the slice, else -1 (also for ignored labels, which are negative).
// One rank: the targets as given.
Tensor vocab_parallel_targets(const Tensor& targets_host, VocabRange range);
Tensor classifier_targets(const TensorParallel& tp, const Tensor& targets_host, int64_t padded_vocab_size);

// losses (rows) fp32 = cross-entropy over the FULL vocabulary of logits (rows, V_local) split
// across the tp ranks (one all-gather of 3 floats per row). With dloss (rows) fp32 given,
// logits is overwritten with d(sum_i dloss_i loss_i)/d logits of this rank's columns.
// local_targets as classifier_targets makes them (on the context's device). On one rank:
// the fused cross-entropy op, or with !fused the plain loss op and then the fused op for the
// gradient (a second pass).
void vocab_parallel_cross_entropy(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& losses,
                                  Tensor& logits, const Tensor& local_targets, const Tensor* dloss, bool fused = true);

// The output layer and the loss, chunk by chunk of `chunk_rows` token rows (bounds the logits
// memory; a chunk's logits are overwritten by their gradient in place):
//   logits = enter(hidden (R, C)) @ weight^T   (N, V_local), weight (V_local, C)
//   losses (N) fp32 = cross-entropy against targets (classifier_targets, on the device)
// With dhidden (R, C): also the backward, d loss = dloss (N) fp32 per row: weight_grad
// (V_local, C) fp32 += d logits^T @ hidden (the first chunk writes it when
// overwrite_weight_grad), dhidden written.
struct ClassifierOptions {
  int64_t chunk_rows = 1024;
  bool fused_cross_entropy = true;
  bool overwrite_weight_grad = false;
};
void output_layer_loss(ops::Context& ctx, const TensorParallel& tp, Arena& arena, const Tensor& hidden,
                       const Tensor& weight, Tensor* weight_grad, const Tensor& targets, const Tensor* dloss,
                       Tensor& losses, Tensor* dhidden, const ClassifierOptions& options);

// logits (N, V_local) of every rank -> (N, V) fp32 on the CPU (a collective under tp).
Tensor gather_vocab_logits(const TensorParallel& tp, const Tensor& logits);

}  // namespace primus::parallel

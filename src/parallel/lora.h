// LoRA adapters on the tensor-parallel linears (Hu et al. 2021; PEFT's LoraLayer, Megatron's
// LoRA adapter on ColumnParallelLinear / RowParallelLinear):
//
//   y = x W^T  +  s (x A^T) B^T          W (out, in) frozen; A (r, in), B (out, r) trained;
//                                        s = lora_alpha / r
//
// A starts random, B at zero, so the adapted model starts as the base model. The base weight
// has no gradient and no optimizer state (its grad Tensor is undefined).
//
// ---- Using it (next to the base layer's call, forward and backward) -----------------------
//
//   parallel::column_parallel_linear_forward(ctx, tp, arena, y, x, w);          // y = x W^T
//   parallel::lora_column_forward(ctx, tp, arena, y, x, adapter);               // y += s x A^T B^T
//   ...
//   parallel::column_parallel_linear_backward(ctx, tp, arena, dx, w_grad, dy, x, w, acc);  // dx written
//   parallel::lora_column_backward(ctx, tp, arena, dx, dy, x, adapter);         // dx +=, A/B grads +=
//
// ---- How the adapters split over tensor-parallel ranks ------------------------------------
//
//   base layer        A (r, in)                    B (out, r)                 partial grad
//   column-parallel   replicated                   rows split as W's          A: summed over tp
//   row-parallel      columns split as W's         replicated                 B: summed over tp
//                                                                             under SP only
//
// The low-rank activation u = x A^T (N, r) is recomputed in the backward (one GEMM of r
// columns) instead of being kept: no activation memory. Under a column-parallel base, u is the
// same on every rank and each rank's d u is a partial sum; under a row-parallel base, u is the
// tp-reduction of the ranks' partial products (a reduce-scatter under sequence parallelism),
// done by the row-parallel layer itself. lora_partial_grads() names the grads the caller sums
// over tp once per step (DecoderModel::reduce_tensor_parallel_partial_grads).
//
// ---- Dropout (lora_dropout p > 0; PEFT's LoraLayer: y = x W^T + s B A dropout(x)) ----------
//
// In training forwards the adapter path reads dropout(x) = x * keep / (1 - p); the base path
// reads x itself. The mask is counter-based (ops/dropout.h DropoutMask): element (token row n,
// full input feature c) of an adapter's input is kept or dropped by Philox-4x32-10 under the key
// lora_dropout_key(seed, lora_A's name) at counter (t, c / 4; row key of n's row b). The row key
// (lora_dropout_row_keys) hashes (optimizer step, dataset sample, row of the sample), so a token's
// mask does not depend on the data-parallel split, the micro-batch it rides in, tensor or
// sequence parallelism, and a resumed run draws the same masks. The mask is recomputed in the
// backward (dx of the adapter path is masked the same way), never stored. Evaluation, reference
// log-probs and generation pass no LoraDropout: nothing is dropped.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/arena.h"
#include "ops/dropout.h"
#include "ops/ops.h"
#include "parallel/named_tensor.h"
#include "parallel/tensor_parallel.h"

namespace primus::parallel {

struct LoraAdapter {
  NamedTensor* a = nullptr;  // (r, in) or this rank's columns (row-parallel base)
  NamedTensor* b = nullptr;  // (out, r) or this rank's rows (column-parallel base)
  float scaling = 1.f;       // lora_alpha / r
  bool active() const { return a != nullptr; }
};

// The dropout of one training micro-batch (all adapters): probability p, the run's seed and one
// key per row b of the micro-batch (B rows of T tokens).
struct LoraDropout {
  double p = 0;
  uint64_t seed = 0;
  std::vector<uint64_t> row_keys;
  // Set by the layers that received it (DecoderLayer::forward): the caller can tell a model that
  // applies the masks from one that was never handed them.
  mutable bool applied = false;
  bool active() const { return p > 0; }
};
// The Philox key of the adapter whose lora_A is `lora_a_name`: (stream_id(name) + 0x9E3779B97F4A7C15
// (seed + 1)) mod 2^64.
uint64_t lora_dropout_key(uint64_t seed, const std::string& lora_a_name);
// The row keys of a micro-batch of `rows` rows drawn from dataset samples `samples` at optimizer
// step `step`: one sample per row (rows == samples), or rows_per_sample rows per sample (DPO:
// rows [0, mb) the samples' first rows, [mb, 2mb) their second, as data::make_batch lays them).
std::vector<uint64_t> lora_dropout_row_keys(int64_t step, const std::vector<int64_t>& samples, int64_t rows);
// The dropout of one adapter call: null (or inactive) = none. T = tokens per row of the micro-batch.
struct LoraDropoutSite {
  const LoraDropout* dropout = nullptr;
  int64_t T = 1;
  int cp_rank = 0, cp_size = 1;  // context parallel: the rows' columns are this cp rank's chunks
  bool active() const { return dropout != nullptr && dropout->active(); }
};

// Where an adapter's input sits in the micro-batch: the site's T tokens per row (and their cp
// chunks), x's first token row and first full input feature. The mask of `l`'s input under the
// site's dropout (active).
ops::DropoutMask lora_dropout_mask(const LoraDropoutSite& site, const LoraAdapter& l, int64_t first_row,
                                   int64_t first_col);

// y (N, out_local) += s * (enter(x) A^T) B_local^T; x (R, in) as column_parallel_linear_forward.
void lora_column_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                         const LoraAdapter& l, const LoraDropoutSite& drop = {});
// dx (R, in) += the tp-reduced d x of the adapter path; A.grad (r, in) += this rank's partial,
// B.grad (out_local, r) += s dy^T u. dy (N, out_local).
void lora_column_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                          const Tensor& x, const LoraAdapter& l, const LoraDropoutSite& drop = {});
// y (R, out) += s * reduce(x A_local^T) B^T; x (N, in_local) as row_parallel_linear_forward.
void lora_row_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                      const LoraAdapter& l, const LoraDropoutSite& drop = {});
// dx (N, in_local) += enter(s dy B) A_local; A.grad += enter(s dy B)^T x; B.grad (out, r) +=
// s dy^T u (this rank's rows under SP). dy (R, out).
void lora_row_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                       const Tensor& x, const LoraAdapter& l, const LoraDropoutSite& drop = {});

// A replicated base (MLA's latent down-projections: every rank holds W and runs it on its own
// residual rows, R = N / tp under sequence parallel): A and B replicated, y (R, out) += s (x A^T)
// B^T on the same rows; dx (R, in) += s (dy B) A, A.grad and B.grad += this rank's rows' share.
void lora_replicated_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                             const LoraAdapter& l, const LoraDropoutSite& drop = {});
void lora_replicated_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                              const Tensor& x, const LoraAdapter& l, const LoraDropoutSite& drop = {});

// A block's trainable adapter tensors: A and B of every active adapter of `adapters`, in order,
// appended to `out` (a block's params() after its base weights).
void append_lora_params(std::initializer_list<const LoraAdapter*> adapters, std::vector<NamedTensor*>& out);

// Which adapter grads are partial sums over the tp ranks: A of column-parallel bases (tp > 1),
// B of row-parallel bases (sequence parallel).
void lora_partial_grads(const TensorParallel& tp, const LoraAdapter& column_or_row, bool column,
                        std::vector<NamedTensor*>& out);
// Replicated bases: A and B under sequence parallel (each rank saw its rows only).
void lora_replicated_partial_grads(const TensorParallel& tp, const LoraAdapter& l, std::vector<NamedTensor*>& out);

// ---- Routed experts (MoE): one adapter per expert, stacked like the experts' weights ----------
//
//   fc1 (E, 2Fe, C): A (E, r, C), B (E, 2Fe, r)      fc2 (E, C, Fe): A (E, r, Fe), B (E, C, r)
//   y_e (rows of expert e) += s (x_e A_e^T) B_e^T        (ops::grouped_linear over the experts)
//
// Split over ep like the experts (whole experts) and over tp like a dense MLP's adapters (fc1: A
// whole, B's rows [gate_r | up_r]; fc2: A's columns, B whole); the experts' partial outputs are
// summed over tp by the MoE layer with the base experts' (the adapter path is linear in them), so
// fc1's A and fc2's B grads are partial sums over tp. No dropout here (refused by name).
void lora_grouped_forward(ops::Context& ctx, Arena& arena, Tensor& y, const Tensor& x, const LoraAdapter& l,
                          const std::vector<int64_t>& rows);
// dx (M, in) += s (dy_e B_e) A_e; A.grad, B.grad += per expert.
void lora_grouped_backward(ops::Context& ctx, Arena& arena, Tensor& dx, const Tensor& dy, const Tensor& x,
                           const LoraAdapter& l, const std::vector<int64_t>& rows);

}  // namespace primus::parallel

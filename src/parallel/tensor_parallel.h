// Tensor parallelism (TP) and sequence parallelism (SP), Megatron style.
//
// ---- Using it ---------------------------------------------------------------------
//
//   parallel::ProcessGroups groups(world, dims);               // dims.tp() ranks per tp group
//   DecoderOptions o;
//   o.tensor_parallel = {&groups.tp(), cfg.sequence_parallel};  // the ONE thing to pass
//   DecoderModel model(config, ctx, o);                            // params are this rank's shards
//   ...forward_backward on every tp rank with the SAME micro-batch...
//   model.reduce_sequence_parallel_grads();    // once per step, after the last micro-batch
//   (data parallel: reduce grads over groups.dp_cp() as usual, each rank its own shards)
//   optimizer.set_grad_sum_of_squares(parallel::grad_sum_of_squares_fn(o.tensor_parallel));
//   optimizer.step(...);                       // clipping sees the norm of the FULL model
//
// tensor_parallel.group == nullptr (or a group of one rank) is the single-rank model,
// bit for bit. Every rank of a tp group runs the same tokens; the loss each returns is
// the loss of the whole model (identical on every tp rank).
//
// ---- What is split ------------------------------------------------------------------
//
//   linear_qkv   column-parallel: rank r holds q heads [r Hq/P, (r+1) Hq/P) and the k/v of
//                query groups [r Hkv/P, (r+1) Hkv/P) (rows [q_r | k_r | v_r]); attention runs
//                on those heads locally.
//   linear_proj  row-parallel: the columns of rank r's heads; partial sums are all-reduced.
//   linear_fc1   column-parallel: [gate_r | up_r], rank r's F/P rows of each.
//   linear_fc2   row-parallel: the matching F/P columns.
//   embedding    vocab-parallel: rows [r V/P, (r+1) V/P) of the padded vocabulary; a token
//                outside the slice contributes zeros, the partial sums are all-reduced.
//   output layer column-parallel over the vocabulary (the embedding's slice when tied), with
//                a vocab-parallel cross-entropy (per-row max / sum-exp / target-logit
//                statistics all-gathered; the full logits never exist on one rank).
//   norms        replicated.
//
// Sequence parallel additionally splits the residual stream and the norms by tokens: each
// rank keeps N/P of the N = B*T token rows (contiguous blocks of the batch-major rows; with
// micro-batch 1 that is exactly Megatron's split of the sequence; every op there is per
// token, so any split gives the same math). All-reduces become reduce-scatters, the
// column-parallel inputs are all-gathered. Norm weights then see only their rank's tokens:
// their grads are partial sums (reduce_sequence_parallel_grads()).
//
// ---- The two region boundaries ----------------------------------------------------------
//
// Model code sees only these (forward and backward are conjugate pairs):
//
//                          no SP                        SP
//   enter_tp_region        identity / all-reduce        all-gather / reduce-scatter
//   exit_tp_region         all-reduce / identity        reduce-scatter / all-gather
//
// enter = Megatron's copy_to_tensor_model_parallel_region (no SP) or
// gather_from_sequence_parallel_region (SP); exit = reduce_from_tensor_model_parallel_region
// or reduce_scatter_to_sequence_parallel_region. "Residual rows" below are N/P with SP and
// N without. With NCCL communicators everything stays on the device (token routing is
// computed on the host from the host copy of the token ids, as the model already does).
#pragma once

#include <functional>
#include <vector>

#include "core/arena.h"
#include "core/safetensors.h"
#include "parallel/named_tensor.h"
#include "ops/ops.h"
#include "parallel/communicator.h"

namespace primus::parallel {

// The tensor-parallel setting of a model: which group, and whether sequence parallel is on.
struct TensorParallel {
  Communicator* group = nullptr;  // the tp group (ProcessGroups::tp()); nullptr = one rank
  bool sequence_parallel = false;

  int size() const { return group != nullptr ? group->size() : 1; }
  int rank() const { return group != nullptr ? group->rank() : 0; }
  bool active() const { return size() > 1; }
  bool sp() const { return sequence_parallel && active(); }
  // Rows of the residual stream on this rank for n token rows (n / size under SP).
  int64_t residual_rows(int64_t n) const { return sp() ? n / size() : n; }
};

// ---- region boundaries (see the table above) ---------------------------------------------

// x (residual rows, C) -> the (N, C) rows a column-parallel linear multiplies: x itself, or
// an all-gather into `arena` under SP.
Tensor enter_tp_region(const TensorParallel& tp, const Tensor& x, Arena& arena);
// Backward of enter_tp_region: dx_full (N, C) holds this rank's partial sums (its columns'
// share of d x); writes the reduced gradient into dx (residual rows, C). Without SP dx must
// be dx_full itself (all-reduce in place).
void enter_tp_region_backward(const TensorParallel& tp, Tensor& dx, Tensor& dx_full);
// Row-parallel output: partial (N, C) sums of this rank's columns -> y (residual rows, C).
// Without SP partial must be y itself (all-reduce in place); tp_partial_buffer gives it.
void exit_tp_region(const TensorParallel& tp, Tensor& y, Tensor& partial);
// Backward of exit_tp_region: dy (residual rows, C) -> (N, C): dy itself, or all-gathered.
Tensor exit_tp_region_backward(const TensorParallel& tp, const Tensor& dy, Arena& arena);
// Where (N, C) partial sums for residual-rows tensor `y` go: y itself, or an arena tensor
// under SP (also the dx_full buffer of enter_tp_region_backward).
Tensor tp_partial_buffer(const TensorParallel& tp, Tensor& y, Arena& arena);

// ---- gradients -----------------------------------------------------------------------

// Parameters replicated across tp whose grads are partial under SP (the norm weights):
// empty without SP. DecoderModel::reduce_sequence_parallel_grads() sums them (and LoRA's
// partial adapter grads) over tp once per step, after the last micro-batch's backward.
std::vector<NamedTensor*> sequence_parallel_partial_grads(const TensorParallel& tp,
                                                          const std::vector<NamedTensor*>& params);

// Sum of grad^2 over the FULL model from this rank's parameters: sharded tensors count on
// every rank, replicated ones only on tp rank 0 (Megatron's rule), then the total is
// all-reduced over `reduce_group` (the tp group; with pipeline parallel the model-parallel
// group mp = tp x pp). reduce_group == nullptr: no reduction (one rank).
double grad_sum_of_squares(ops::Context& ctx, const std::vector<NamedTensor*>& params, int tp_rank,
                           Communicator* reduce_group);
// The same as the function AdamW::set_grad_sum_of_squares takes (reduce over tp.group).
std::function<double(ops::Context&, const std::vector<NamedTensor*>&)> grad_sum_of_squares_fn(
    const TensorParallel& tp);

// ---- full tensors <-> shards (checkpoints across a change of layout, tests) -------------------

enum class ParamField { Value, Grad };
// Collective over tp and ep (nullptr: one rank): every parameter's full tensor as a CPU
// tensor, named like the parameter, in params order. Expert-parallel parameters
// (NamedTensor::expert_parallel) are gathered over `ep`, the others over `tp`.
NamedTensorList gather_full_tensors(const std::vector<NamedTensor*>& params, Communicator* tp,
                                    ParamField which = ParamField::Value, Communicator* ep = nullptr);
// Copies full tensors (e.g. saved at another tp size) into each parameter's shard: the entry
// named like the parameter, of its shard.full_shape, is sliced with its ShardSpec and
// written to value (fp32/bf16/fp16 convert). Errors name the missing or mis-shaped tensor.
void load_full_tensors(ops::Context& ctx, const std::vector<NamedTensor*>& params, const NamedTensorList& full);

}  // namespace primus::parallel

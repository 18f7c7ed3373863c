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
#pragma once

#include <vector>

#include "core/arena.h"
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

// y (N, out_local) += s * (enter(x) A^T) B_local^T; x (R, in) as column_parallel_linear_forward.
void lora_column_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                         const LoraAdapter& l);
// dx (R, in) += the tp-reduced d x of the adapter path; A.grad (r, in) += this rank's partial,
// B.grad (out_local, r) += s dy^T u. dy (N, out_local).
void lora_column_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                          const Tensor& x, const LoraAdapter& l);
// y (R, out) += s * reduce(x A_local^T) B^T; x (N, in_local) as row_parallel_linear_forward.
void lora_row_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                      const LoraAdapter& l);
// dx (N, in_local) += enter(s dy B) A_local; A.grad += enter(s dy B)^T x; B.grad (out, r) +=
// s dy^T u (this rank's rows under SP). dy (R, out).
void lora_row_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                       const Tensor& x, const LoraAdapter& l);

// Which adapter grads are partial sums over the tp ranks: A of column-parallel bases (tp > 1),
// B of row-parallel bases (sequence parallel).
void lora_partial_grads(const TensorParallel& tp, const LoraAdapter& column_or_row, bool column,
                        std::vector<NamedTensor*>& out);

}  // namespace primus::parallel

#include "parallel/lora.h"

#include "parallel/layers.h"

namespace primus::parallel {

namespace {

Shape rows_by(int64_t rows, int64_t cols) { return {rows, cols}; }

}  // namespace

void lora_column_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                         const LoraAdapter& l) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t N = y.size(0), r = l.a->value.size(0);
  Tensor u = arena.alloc(rows_by(N, r), y.dtype());
  column_parallel_linear_forward(ctx, tp, arena, u, x, l.a->value);  // u = enter(x) A^T
  ops::matmul(ctx, y, u, ops::Transpose::No, l.b->value, ops::Transpose::Yes, l.scaling, 1.f);
  arena.release(m);
}

void lora_column_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                          const Tensor& x, const LoraAdapter& l) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t N = dy.size(0), r = l.a->value.size(0);
  Tensor u = arena.alloc(rows_by(N, r), dy.dtype());
  column_parallel_linear_forward(ctx, tp, arena, u, x, l.a->value);
  // B.grad += s dy^T u; d u = s dy B (this rank's partial: its output columns' share)
  ops::matmul(ctx, l.b->grad, dy, ops::Transpose::Yes, u, ops::Transpose::No, l.scaling, 1.f);
  Tensor du = arena.alloc(rows_by(N, r), dy.dtype());
  ops::matmul(ctx, du, dy, ops::Transpose::No, l.b->value, ops::Transpose::No, l.scaling, 0.f);
  // d x of u = enter(x) A^T with d u partial: the column-parallel backward reduces it over tp.
  Tensor dx_lora = arena.alloc(dx.shape(), dx.dtype());
  column_parallel_linear_backward(ctx, tp, arena, dx_lora, l.a->grad, du, x, l.a->value, true);
  ops::add(ctx, dx, dx, dx_lora);
  arena.release(m);
}

void lora_row_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                      const LoraAdapter& l) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t R = y.size(0), r = l.a->value.size(0);
  Tensor u = arena.alloc(rows_by(R, r), y.dtype());
  row_parallel_linear_forward(ctx, tp, arena, u, x, l.a->value);  // u = reduce(x A_local^T)
  ops::matmul(ctx, y, u, ops::Transpose::No, l.b->value, ops::Transpose::Yes, l.scaling, 1.f);
  arena.release(m);
}

void lora_row_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                       const Tensor& x, const LoraAdapter& l) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t R = dy.size(0), r = l.a->value.size(0);
  Tensor u = arena.alloc(rows_by(R, r), dy.dtype());
  row_parallel_linear_forward(ctx, tp, arena, u, x, l.a->value);
  ops::matmul(ctx, l.b->grad, dy, ops::Transpose::Yes, u, ops::Transpose::No, l.scaling, 1.f);
  Tensor du = arena.alloc(rows_by(R, r), dy.dtype());
  ops::matmul(ctx, du, dy, ops::Transpose::No, l.b->value, ops::Transpose::No, l.scaling, 0.f);
  Tensor dx_lora = arena.alloc(dx.shape(), dx.dtype());
  row_parallel_linear_backward(ctx, tp, arena, &dx_lora, l.a->grad, du, x, l.a->value, true);
  ops::add(ctx, dx, dx, dx_lora);
  arena.release(m);
}

void lora_partial_grads(const TensorParallel& tp, const LoraAdapter& l, bool column, std::vector<NamedTensor*>& out) {
  if (!l.active() || !tp.active()) return;
  if (column)
    out.push_back(l.a);
  else if (tp.sp())
    out.push_back(l.b);
}

}  // namespace primus::parallel

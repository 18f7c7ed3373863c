#include "parallel/lora.h"

#include "core/error.h"
#include "core/rng.h"
#include "parallel/layers.h"

namespace primus::parallel {

namespace {

Shape rows_by(int64_t rows, int64_t cols) { return {rows, cols}; }

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The first full input feature of this rank's columns of a row-parallel A (ParamSplit::Row).
int64_t row_shard_first_col(const LoraAdapter& l) {
  const ShardSpec& s = l.a->shard;
  if (!s.sharded()) return 0;
  PRIMUS_CHECK(s.dim == 1 && s.parts.size() <= 1, "LoRA dropout: '{}' is split as {}, expected columns in one part",
               l.a->name, s.describe());
  return static_cast<int64_t>(s.rank) * l.a->value.size(1);
}

// The adapter's input as the adapter path reads it: x, or dropout(x) in a new arena tensor.
Tensor adapter_input(ops::Context& ctx, Arena& arena, const Tensor& x, const LoraAdapter& l,
                     const LoraDropoutSite& drop, int64_t first_row, int64_t first_col) {
  if (!drop.active()) return x;
  Tensor xd = arena.alloc(x.shape(), x.dtype());
  ops::dropout(ctx, xd, x, lora_dropout_mask(drop, l, first_row, first_col));
  return xd;
}

// This rank's first token row of a residual-rows tensor (sequence parallel: contiguous blocks).
int64_t residual_first_row(const TensorParallel& tp, int64_t rows) { return tp.sp() ? tp.rank() * rows : 0; }

}  // namespace

uint64_t lora_dropout_key(uint64_t seed, const std::string& lora_a_name) {
  return stream_id(lora_a_name) + 0x9E3779B97F4A7C15ull * (seed + 1);
}

std::vector<uint64_t> lora_dropout_row_keys(int64_t step, const std::vector<int64_t>& samples, int64_t rows) {
  const auto mb = static_cast<int64_t>(samples.size());
  PRIMUS_CHECK(mb > 0 && rows > 0 && rows % mb == 0,
               "LoRA dropout: a micro-batch of {} rows from {} dataset samples (need a whole number of rows per "
               "sample)", rows, mb);
  std::vector<uint64_t> keys(static_cast<size_t>(rows));
  for (int64_t b = 0; b < rows; ++b) {
    const uint64_t sample = static_cast<uint64_t>(samples[static_cast<size_t>(b % mb)]);
    const uint64_t sub = static_cast<uint64_t>(b / mb);
    keys[static_cast<size_t>(b)] = splitmix64(splitmix64(splitmix64(static_cast<uint64_t>(step)) ^ sample) ^ sub);
  }
  return keys;
}

ops::DropoutMask lora_dropout_mask(const LoraDropoutSite& site, const LoraAdapter& l, int64_t first_row,
                                   int64_t first_col) {
  const LoraDropout& d = *site.dropout;
  ops::DropoutMask m;
  m.key = lora_dropout_key(d.seed, l.a->name);
  m.threshold = ops::dropout_threshold(d.p);
  m.scale = static_cast<float>(1.0 / (1.0 - d.p));
  m.T = site.T;
  m.cp_rank = site.cp_rank;
  m.cp_size = site.cp_size;
  m.first_row = first_row;
  m.first_col = first_col;
  m.row_keys = d.row_keys;
  return m;
}

void lora_column_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                         const LoraAdapter& l, const LoraDropoutSite& drop) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t N = y.size(0), r = l.a->value.size(0);
  const Tensor xin = adapter_input(ctx, arena, x, l, drop, residual_first_row(tp, x.size(0)), 0);
  Tensor u = arena.alloc(rows_by(N, r), y.dtype());
  column_parallel_linear_forward(ctx, tp, arena, u, xin, l.a->value);  // u = enter(x) A^T
  ops::matmul(ctx, y, u, ops::Transpose::No, l.b->value, ops::Transpose::Yes, l.scaling, 1.f);
  arena.release(m);
}

void lora_column_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                          const Tensor& x, const LoraAdapter& l, const LoraDropoutSite& drop) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t N = dy.size(0), r = l.a->value.size(0);
  const int64_t first_row = residual_first_row(tp, x.size(0));
  const Tensor xin = adapter_input(ctx, arena, x, l, drop, first_row, 0);  // the mask recomputed
  Tensor u = arena.alloc(rows_by(N, r), dy.dtype());
  column_parallel_linear_forward(ctx, tp, arena, u, xin, l.a->value);
  // B.grad += s dy^T u; d u = s dy B (this rank's partial: its output columns' share)
  ops::matmul(ctx, l.b->grad, dy, ops::Transpose::Yes, u, ops::Transpose::No, l.scaling, 1.f);
  Tensor du = arena.alloc(rows_by(N, r), dy.dtype());
  ops::matmul(ctx, du, dy, ops::Transpose::No, l.b->value, ops::Transpose::No, l.scaling, 0.f);
  // d x of u = enter(x) A^T with d u partial: the column-parallel backward reduces it over tp.
  Tensor dx_lora = arena.alloc(dx.shape(), dx.dtype());
  column_parallel_linear_backward(ctx, tp, arena, dx_lora, l.a->grad, du, xin, l.a->value, true);
  if (drop.active())  // d x = keep / (1 - p) * d dropout(x)
    ops::dropout(ctx, dx_lora, dx_lora, lora_dropout_mask(drop, l, first_row, 0));
  ops::add(ctx, dx, dx, dx_lora);
  arena.release(m);
}

void lora_row_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                      const LoraAdapter& l, const LoraDropoutSite& drop) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t R = y.size(0), r = l.a->value.size(0);
  const Tensor xin = adapter_input(ctx, arena, x, l, drop, 0, row_shard_first_col(l));
  Tensor u = arena.alloc(rows_by(R, r), y.dtype());
  row_parallel_linear_forward(ctx, tp, arena, u, xin, l.a->value);  // u = reduce(x A_local^T)
  ops::matmul(ctx, y, u, ops::Transpose::No, l.b->value, ops::Transpose::Yes, l.scaling, 1.f);
  arena.release(m);
}

void lora_row_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                       const Tensor& x, const LoraAdapter& l, const LoraDropoutSite& drop) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t R = dy.size(0), r = l.a->value.size(0);
  const int64_t first_col = row_shard_first_col(l);
  const Tensor xin = adapter_input(ctx, arena, x, l, drop, 0, first_col);
  Tensor u = arena.alloc(rows_by(R, r), dy.dtype());
  row_parallel_linear_forward(ctx, tp, arena, u, xin, l.a->value);
  ops::matmul(ctx, l.b->grad, dy, ops::Transpose::Yes, u, ops::Transpose::No, l.scaling, 1.f);
  Tensor du = arena.alloc(rows_by(R, r), dy.dtype());
  ops::matmul(ctx, du, dy, ops::Transpose::No, l.b->value, ops::Transpose::No, l.scaling, 0.f);
  Tensor dx_lora = arena.alloc(dx.shape(), dx.dtype());
  row_parallel_linear_backward(ctx, tp, arena, &dx_lora, l.a->grad, du, xin, l.a->value, true);
  if (drop.active())
    ops::dropout(ctx, dx_lora, dx_lora, lora_dropout_mask(drop, l, 0, first_col));
  ops::add(ctx, dx, dx, dx_lora);
  arena.release(m);
}

void lora_replicated_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y, const Tensor& x,
                             const LoraAdapter& l, const LoraDropoutSite& drop) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t R = y.size(0), r = l.a->value.size(0);
  const Tensor xin = adapter_input(ctx, arena, x, l, drop, residual_first_row(tp, x.size(0)), 0);
  Tensor u = arena.alloc(rows_by(R, r), y.dtype());
  ops::linear_forward(ctx, u, xin, l.a->value);
  ops::matmul(ctx, y, u, ops::Transpose::No, l.b->value, ops::Transpose::Yes, l.scaling, 1.f);
  arena.release(m);
}

void lora_replicated_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, const Tensor& dy,
                              const Tensor& x, const LoraAdapter& l, const LoraDropoutSite& drop) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t R = dy.size(0), r = l.a->value.size(0);
  const int64_t first_row = residual_first_row(tp, x.size(0));
  const Tensor xin = adapter_input(ctx, arena, x, l, drop, first_row, 0);
  Tensor u = arena.alloc(rows_by(R, r), dy.dtype());
  ops::linear_forward(ctx, u, xin, l.a->value);
  ops::matmul(ctx, l.b->grad, dy, ops::Transpose::Yes, u, ops::Transpose::No, l.scaling, 1.f);
  Tensor du = arena.alloc(rows_by(R, r), dy.dtype());
  ops::matmul(ctx, du, dy, ops::Transpose::No, l.b->value, ops::Transpose::No, l.scaling, 0.f);
  Tensor dx_lora = arena.alloc(dx.shape(), dx.dtype());
  ops::linear_backward(ctx, &dx_lora, l.a->grad, du, xin, l.a->value, true);
  if (drop.active())
    ops::dropout(ctx, dx_lora, dx_lora, lora_dropout_mask(drop, l, first_row, 0));
  ops::add(ctx, dx, dx, dx_lora);
  arena.release(m);
}

void lora_grouped_forward(ops::Context& ctx, Arena& arena, Tensor& y, const Tensor& x, const LoraAdapter& l,
                          const std::vector<int64_t>& rows) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t M = x.size(0), r = l.a->value.size(1);
  Tensor u = arena.alloc(rows_by(M, r), x.dtype());
  ops::grouped_linear_forward(ctx, u, x, l.a->value, rows);  // u_e = x_e A_e^T
  Tensor v = arena.alloc(y.shape(), y.dtype());
  ops::grouped_linear_forward(ctx, v, u, l.b->value, rows);  // v_e = u_e B_e^T
  ops::scale(ctx, v, l.scaling);
  ops::add(ctx, y, y, v);
  arena.release(m);
}

void lora_grouped_backward(ops::Context& ctx, Arena& arena, Tensor& dx, const Tensor& dy, const Tensor& x,
                           const LoraAdapter& l, const std::vector<int64_t>& rows) {
  if (!l.active()) return;
  const Arena::Mark m = arena.mark();
  const int64_t M = x.size(0), r = l.a->value.size(1);
  Tensor u = arena.alloc(rows_by(M, r), x.dtype());
  ops::grouped_linear_forward(ctx, u, x, l.a->value, rows);
  Tensor sdy = arena.alloc(dy.shape(), dy.dtype());  // s dy: B.grad += s dy^T u, du = s dy B
  ops::copy_cast(ctx, sdy, dy);
  ops::scale(ctx, sdy, l.scaling);
  Tensor du = arena.alloc(rows_by(M, r), x.dtype());
  ops::grouped_linear_backward(ctx, &du, l.b->grad, sdy, u, l.b->value, rows, true);
  Tensor dx_lora = arena.alloc(dx.shape(), dx.dtype());
  ops::grouped_linear_backward(ctx, &dx_lora, l.a->grad, du, x, l.a->value, rows, true);
  ops::add(ctx, dx, dx, dx_lora);
  arena.release(m);
}

void lora_replicated_partial_grads(const TensorParallel& tp, const LoraAdapter& l, std::vector<NamedTensor*>& out) {
  if (!l.active() || !tp.sp()) return;
  out.push_back(l.a);
  out.push_back(l.b);
}

void append_lora_params(std::initializer_list<const LoraAdapter*> adapters, std::vector<NamedTensor*>& out) {
  for (const LoraAdapter* l : adapters)
    if (l->active()) out.insert(out.end(), {l->a, l->b});
}

void lora_partial_grads(const TensorParallel& tp, const LoraAdapter& l, bool column, std::vector<NamedTensor*>& out) {
  if (!l.active() || !tp.active()) return;
  if (column)
    out.push_back(l.a);
  else if (tp.sp())
    out.push_back(l.b);
}

}  // namespace primus::parallel

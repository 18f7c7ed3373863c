#include "parallel/layers.h"

#include <algorithm>

#include "core/error.h"

namespace primus::parallel {

namespace {

Tensor to_device(const Tensor& host, Device device) { return device == Device::CPU ? host : host.to(device); }
Tensor to_host(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

// The local GEMMs of a linear: bf16 (ops::linear_*), or FP8 with the linear's scaling.
void local_forward(ops::Context& ctx, Arena& arena, Tensor& y, const Tensor& x, const Tensor& w,
                   const Tensor* residual, Fp8Use fp8) {
  if (fp8.linear != nullptr) return ops::fp8_linear_forward(ctx, *fp8.linear, arena, y, x, w, residual, fp8.record_amax);
  if (residual != nullptr) return ops::linear_forward_add(ctx, y, x, w, *residual);
  ops::linear_forward(ctx, y, x, w);
}

void local_backward(ops::Context& ctx, Arena& arena, Tensor* dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                    const Tensor& w, bool accumulate_dw, Fp8Use fp8) {
  if (fp8.linear != nullptr) return ops::fp8_linear_backward(ctx, *fp8.linear, arena, dx, dw, dy, x, w, accumulate_dw);
  ops::linear_backward(ctx, dx, dw, dy, x, w, accumulate_dw);
}

}  // namespace

// ---- linear layers -------------------------------------------------------------------------

void column_parallel_linear_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y,
                                    const Tensor& x, const Tensor& w, Fp8Use fp8) {
  const Arena::Mark m = arena.mark();
  const Tensor x_full = enter_tp_region(tp, x, arena);
  local_forward(ctx, arena, y, x_full, w, nullptr, fp8);
  arena.release(m);
}

void column_parallel_linear_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx, Tensor& dw,
                                     const Tensor& dy, const Tensor& x, const Tensor& w, bool accumulate_dw,
                                     Fp8Use fp8) {
  const Arena::Mark m = arena.mark();
  const Tensor x_full = enter_tp_region(tp, x, arena);
  Tensor dx_full = tp_partial_buffer(tp, dx, arena);
  local_backward(ctx, arena, &dx_full, dw, dy, x_full, w, accumulate_dw, fp8);
  enter_tp_region_backward(tp, dx, dx_full);
  arena.release(m);
}

void column_parallel_linear_gathered_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y,
                                             const Tensor& x, const Tensor& w) {
  if (!tp.active()) return ops::linear_forward(ctx, y, x, w);
  const int64_t P = tp.size(), R = y.size(0), out = y.size(1), out_p = w.size(0);
  const int64_t N = tp.sp() ? R * P : R;
  PRIMUS_CHECK(out_p * P == out, "column_parallel_linear_gathered_forward: weight rows {} x {} ranks != output width {}",
               out_p, P, out);
  const Arena::Mark m = arena.mark();
  Tensor local = arena.alloc({N, out_p}, y.dtype());
  column_parallel_linear_forward(ctx, tp, arena, local, x, w);
  Tensor all = arena.alloc({P * N, out_p}, y.dtype());  // rank p's (N, out/P) block at rows [pN, (p+1)N)
  tp.group->all_gather(all, local);
  const int64_t first = tp.sp() ? tp.rank() * R : 0;  // this rank's residual rows of the N
  for (int64_t p = 0; p < P; ++p)
    ops::copy_columns(ctx, y, p * out_p, all.rows(p * N + first, p * N + first + R), 0, out_p);
  arena.release(m);
}

void column_parallel_linear_gathered_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dx,
                                              Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                              bool accumulate_dw) {
  if (!tp.active()) return ops::linear_backward(ctx, &dx, dw, dy, x, w, accumulate_dw);
  const int64_t out_p = w.size(0);
  const Arena::Mark m = arena.mark();
  // The (N, out) gradient on every rank (all-gathered rows under SP; without SP every rank
  // already holds it), then this rank's columns.
  const Tensor dy_full = exit_tp_region_backward(tp, dy, arena);
  Tensor dlocal = arena.alloc({dy_full.size(0), out_p}, dy.dtype());
  ops::copy_columns(ctx, dlocal, 0, dy_full, tp.rank() * out_p, out_p);
  column_parallel_linear_backward(ctx, tp, arena, dx, dw, dlocal, x, w, accumulate_dw);
  arena.release(m);
}

void row_parallel_linear_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& y,
                                 const Tensor& x, const Tensor& w, const Tensor* residual, Fp8Use fp8) {
  if (!tp.active()) return local_forward(ctx, arena, y, x, w, residual, fp8);
  const Arena::Mark m = arena.mark();
  Tensor partial = tp_partial_buffer(tp, y, arena);
  local_forward(ctx, arena, partial, x, w, nullptr, fp8);
  exit_tp_region(tp, y, partial);
  arena.release(m);
  if (residual != nullptr) ops::add(ctx, y, y, *residual);
}

void row_parallel_linear_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor* dx, Tensor& dw,
                                  const Tensor& dy, const Tensor& x, const Tensor& w, bool accumulate_dw,
                                  Fp8Use fp8) {
  const Arena::Mark m = arena.mark();
  const Tensor dy_full = exit_tp_region_backward(tp, dy, arena);
  local_backward(ctx, arena, dx, dw, dy_full, x, w, accumulate_dw, fp8);
  arena.release(m);
}

// ---- vocabulary parallel ------------------------------------------------------------------

VocabRange vocab_range(const TensorParallel& tp, int64_t padded_vocab_size) {
  PRIMUS_CHECK(padded_vocab_size % tp.size() == 0,
               "padded_vocab_size = {} does not split over tensor_model_parallel_size = {}; pad the vocabulary "
               "to a multiple of it (make_vocab_size_divisible_by x tp)", padded_vocab_size, tp.size());
  const int64_t per = padded_vocab_size / tp.size();
  return {tp.rank() * per, (tp.rank() + 1) * per};
}

VocabParallelTokens VocabParallelTokens::route(const Tensor& tokens_host, VocabRange range, Device device) {
  PRIMUS_CHECK(tokens_host.device() == Device::CPU && tokens_host.dtype() == DType::I32,
               "VocabParallelTokens::route: token ids must be int32 on the CPU, got {}", tokens_host.describe());
  const int64_t N = tokens_host.numel();
  const int32_t* ids = tokens_host.data<int32_t>();
  std::vector<int32_t> rows, local;
  for (int64_t i = 0; i < N; ++i)
    if (range.contains(ids[i])) {
      rows.push_back(static_cast<int32_t>(i));
      local.push_back(static_cast<int32_t>(ids[i] - range.begin));
    }
  const auto hits = static_cast<int64_t>(rows.size());
  Tensor map = Tensor::empty({N}, DType::I32);
  for (int64_t i = 0, h = 0; i < N; ++i) map.data<int32_t>()[i] = static_cast<int32_t>(range.contains(ids[i]) ? h++ : hits);
  VocabParallelTokens t;
  t.num_tokens = N;
  t.num_hits = hits;
  Tensor r = Tensor::empty({hits}, DType::I32), l = Tensor::empty({hits}, DType::I32);
  std::copy(rows.begin(), rows.end(), r.data<int32_t>());
  std::copy(local.begin(), local.end(), l.data<int32_t>());
  t.hit_rows = to_device(r, device);
  t.hit_ids = to_device(l, device);
  t.gather_map = to_device(map, device);
  return t;
}

EmbeddingTokens EmbeddingTokens::make(const TensorParallel& tp, const Tensor& tokens, int64_t padded_vocab_size,
                                      Device device) {
  EmbeddingTokens t;
  const Tensor flat = tokens.view({tokens.numel()});
  if (tp.active())
    t.routed = VocabParallelTokens::route(to_host(flat), vocab_range(tp, padded_vocab_size), device);
  else
    t.ids = flat.device() == device ? flat : flat.to(device);
  return t;
}

// Masked lookup with the existing gather kernel, twice: the hit rows of the local table go
// into a compact buffer whose last row is zero, then every token row picks its compact row
// (or the zero row). Then the partial embeddings are summed over tp (exit_tp_region).
void embedding_forward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& out,
                       const EmbeddingTokens& input, const Tensor& table) {
  if (!tp.active()) return ops::embedding_forward(ctx, out, input.ids, table);
  const VocabParallelTokens& tokens = input.routed;
  const Arena::Mark m = arena.mark();
  const int64_t C = table.size(1), hits = tokens.num_hits;
  Tensor partial = tp_partial_buffer(tp, out, arena);
  PRIMUS_CHECK(partial.size(0) == tokens.num_tokens, "vocab-parallel embedding: {} token rows routed, output "
               "covers {}", tokens.num_tokens, partial.size(0));
  Tensor compact = arena.alloc({hits + 1, C}, table.dtype());
  if (hits > 0) {
    Tensor found = compact.rows(0, hits);
    ops::embedding_forward(ctx, found, tokens.hit_ids, table);
  }
  Tensor zero_row = compact.rows(hits, hits + 1);
  ops::fill(ctx, zero_row, 0.f);
  ops::embedding_forward(ctx, partial, tokens.gather_map, compact);
  exit_tp_region(tp, out, partial);
  arena.release(m);
}

void embedding_backward(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& dtable, const Tensor& dout,
                        const EmbeddingTokens& input) {
  if (!tp.active()) return ops::embedding_backward(ctx, dtable, dout, input.ids);
  const VocabParallelTokens& tokens = input.routed;
  const Arena::Mark m = arena.mark();
  const Tensor d_full = exit_tp_region_backward(tp, dout, arena);
  if (tokens.num_hits > 0) {
    Tensor d_hits = arena.alloc({tokens.num_hits, d_full.size(1)}, d_full.dtype());
    ops::embedding_forward(ctx, d_hits, tokens.hit_rows, d_full);  // gather the hit rows of d out
    ops::embedding_backward(ctx, dtable, d_hits, tokens.hit_ids);
  }
  arena.release(m);
}

Tensor vocab_parallel_targets(const Tensor& targets_host, VocabRange range) {
  PRIMUS_CHECK(targets_host.device() == Device::CPU && targets_host.dtype() == DType::I32,
               "vocab_parallel_targets: targets must be int32 on the CPU, got {}", targets_host.describe());
  Tensor out = Tensor::empty(targets_host.shape(), DType::I32);
  const int32_t* t = targets_host.data<int32_t>();
  for (int64_t i = 0; i < targets_host.numel(); ++i)
    out.data<int32_t>()[i] = range.contains(t[i]) ? static_cast<int32_t>(t[i] - range.begin) : -1;
  return out;
}

Tensor classifier_targets(const TensorParallel& tp, const Tensor& targets_host, int64_t padded_vocab_size) {
  if (!tp.active()) return targets_host;
  return vocab_parallel_targets(targets_host, vocab_range(tp, padded_vocab_size));
}

void vocab_parallel_cross_entropy(ops::Context& ctx, const TensorParallel& tp, Arena& arena, Tensor& losses,
                                  Tensor& logits, const Tensor& local_targets, const Tensor* dloss, bool fused) {
  if (!tp.active()) {
    if (dloss == nullptr) return ops::cross_entropy_forward(ctx, losses, logits, local_targets);
    // The plain path computes the losses, then the gradient with the fused kernel in a second
    // pass (which rewrites the same losses).
    if (!fused) ops::cross_entropy_forward(ctx, losses, logits, local_targets);
    return ops::cross_entropy_fused(ctx, losses, logits, local_targets, *dloss);
  }
  const Arena::Mark m = arena.mark();
  const int64_t rows = logits.size(0);
  Tensor stats = arena.alloc({3, rows}, DType::F32);
  ops::cross_entropy_shard_stats(ctx, stats, logits, local_targets);
  Tensor gathered = arena.alloc({tp.size(), 3, rows}, DType::F32);
  tp.group->all_gather(gathered, stats);
  ops::cross_entropy_shard_finish(ctx, losses, dloss != nullptr ? &logits : nullptr, gathered, local_targets,
                                  dloss != nullptr ? *dloss : Tensor());
  arena.release(m);
}

void output_layer_loss(ops::Context& ctx, const TensorParallel& tp, Arena& arena, const Tensor& hidden,
                       const Tensor& weight, Tensor* weight_grad, const Tensor& targets, const Tensor* dloss,
                       Tensor& losses, Tensor* dhidden, const ClassifierOptions& o) {
  PRIMUS_CHECK(o.chunk_rows > 0, "output_layer_loss: chunk_rows must be > 0, got {}", o.chunk_rows);
  PRIMUS_CHECK(dhidden == nullptr || (weight_grad != nullptr && dloss != nullptr),
               "output_layer_loss: the backward needs the weight's gradient and dloss");
  const Arena::Mark outer = arena.mark();
  const Tensor h_all = enter_tp_region(tp, hidden, arena);  // (N, C)
  Tensor dh_all = dhidden != nullptr ? tp_partial_buffer(tp, *dhidden, arena) : Tensor();
  const int64_t N = h_all.size(0), V = weight.size(0);
  for (int64_t r0 = 0; r0 < N; r0 += o.chunk_rows) {
    const int64_t r1 = std::min(N, r0 + o.chunk_rows);
    const Arena::Mark m = arena.mark();
    Tensor logits = arena.alloc({r1 - r0, V}, weight.dtype());
    const Tensor h = h_all.rows(r0, r1);
    ops::linear_forward(ctx, logits, h, weight);
    Tensor loss_rows = losses.rows(r0, r1);
    const Tensor chunk_dloss = dloss != nullptr ? dloss->rows(r0, r1) : Tensor();
    vocab_parallel_cross_entropy(ctx, tp, arena, loss_rows, logits, targets.rows(r0, r1),
                                 dhidden != nullptr ? &chunk_dloss : nullptr, o.fused_cross_entropy);
    if (dhidden != nullptr) {
      Tensor dh = dh_all.rows(r0, r1);
      const bool accumulate = !(o.overwrite_weight_grad && r0 == 0);
      ops::linear_backward(ctx, &dh, *weight_grad, logits, h, weight, accumulate);
    }
    arena.release(m);
  }
  if (dhidden != nullptr) enter_tp_region_backward(tp, *dhidden, dh_all);
  arena.release(outer);
}

Tensor gather_vocab_logits(const TensorParallel& tp, const Tensor& logits) {
  if (!tp.active()) return Tensor::from_floats(logits.to_float_vector(), logits.shape());
  // Each rank holds the columns of its vocabulary slice: gather them into (N, V).
  const int64_t N = logits.size(0), V = logits.size(1) * tp.size();
  const ShardSpec columns = ShardSpec::split({N, V}, 1, tp.rank(), tp.size(), {}, "logits");
  const Tensor full = gather_shards(logits, columns, *tp.group);
  return Tensor::from_floats(full.to_float_vector(), {N, V});
}

}  // namespace primus::parallel

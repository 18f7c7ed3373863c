#include "parallel/tensor_parallel.h"

#include <map>

#include "core/strings.h"

namespace primus::parallel {

namespace {

Shape with_rows(const Tensor& t, int64_t rows) {
  Shape s = t.shape();
  s.at(0) = rows;
  return s;
}

// The reduction at both "partial sums -> residual rows" points (exit forward, enter backward).
void reduce_partial(const TensorParallel& tp, Tensor& y, Tensor& partial, const char* where) {
  if (!tp.active()) {
    PRIMUS_CHECK(y.raw() == partial.raw(), "{}: without tensor parallelism the partial sums must be the output", where);
    return;
  }
  if (tp.sp()) {
    PRIMUS_CHECK(partial.numel() == y.numel() * tp.size(),
                 "{}: partial sums {} must hold {} x the rows of the sequence-parallel output {}", where,
                 partial.describe(), tp.size(), y.describe());
    tp.group->reduce_scatter(y, partial, ReduceOp::Sum);
  } else {
    PRIMUS_CHECK(y.raw() == partial.raw(),
                 "{}: without sequence parallelism the partial sums are reduced in place (pass the output, "
                 "see tp_partial_buffer)", where);
    tp.group->all_reduce(partial, ReduceOp::Sum);
  }
}

Tensor gather_rows(const TensorParallel& tp, const Tensor& x, Arena& arena) {
  if (!tp.sp()) return x;
  Tensor full = arena.alloc(with_rows(x, x.size(0) * tp.size()), x.dtype());
  tp.group->all_gather(full, x);
  return full;
}

Tensor to_device(const Tensor& host, Device device) { return device == Device::CPU ? host : host.to(device); }

}  // namespace

// ---- region boundaries ------------------------------------------------------------------

Tensor enter_tp_region(const TensorParallel& tp, const Tensor& x, Arena& arena) { return gather_rows(tp, x, arena); }

void enter_tp_region_backward(const TensorParallel& tp, Tensor& dx, Tensor& dx_full) {
  reduce_partial(tp, dx, dx_full, "enter_tp_region_backward");
}

void exit_tp_region(const TensorParallel& tp, Tensor& y, Tensor& partial) {
  reduce_partial(tp, y, partial, "exit_tp_region");
}

Tensor exit_tp_region_backward(const TensorParallel& tp, const Tensor& dy, Arena& arena) {
  return gather_rows(tp, dy, arena);
}

Tensor tp_partial_buffer(const TensorParallel& tp, Tensor& y, Arena& arena) {
  if (!tp.sp()) return y;
  return arena.alloc(with_rows(y, y.size(0) * tp.size()), y.dtype());
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

// Masked lookup with the existing gather kernel, twice: the hit rows of the local table go
// into a compact buffer whose last row is zero, then every token row picks its compact row
// (or the zero row). Then the partial embeddings are summed over tp (exit_tp_region).
void vocab_parallel_embedding_forward(ops::Context& ctx, const TensorParallel& tp, Tensor& out,
                                      const VocabParallelTokens& tokens, const Tensor& table_shard, Arena& arena) {
  const Arena::Mark m = arena.mark();
  const int64_t C = table_shard.size(1), hits = tokens.num_hits;
  Tensor partial = tp_partial_buffer(tp, out, arena);
  PRIMUS_CHECK(partial.size(0) == tokens.num_tokens, "vocab_parallel_embedding_forward: {} token rows routed, output "
               "covers {}", tokens.num_tokens, partial.size(0));
  Tensor compact = arena.alloc({hits + 1, C}, table_shard.dtype());
  if (hits > 0) {
    Tensor found = compact.rows(0, hits);
    ops::embedding_forward(ctx, found, tokens.hit_ids, table_shard);
  }
  Tensor zero_row = compact.rows(hits, hits + 1);
  ops::fill(ctx, zero_row, 0.f);
  ops::embedding_forward(ctx, partial, tokens.gather_map, compact);
  exit_tp_region(tp, out, partial);
  arena.release(m);
}

void vocab_parallel_embedding_backward(ops::Context& ctx, const TensorParallel& tp, Tensor& dtable_shard,
                                       const Tensor& dout, const VocabParallelTokens& tokens, Arena& arena) {
  const Arena::Mark m = arena.mark();
  const Tensor d_full = exit_tp_region_backward(tp, dout, arena);
  if (tokens.num_hits > 0) {
    Tensor d_hits = arena.alloc({tokens.num_hits, d_full.size(1)}, d_full.dtype());
    ops::embedding_forward(ctx, d_hits, tokens.hit_rows, d_full);  // gather the hit rows of d out
    ops::embedding_backward(ctx, dtable_shard, d_hits, tokens.hit_ids);
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

void vocab_parallel_cross_entropy(ops::Context& ctx, const TensorParallel& tp, Tensor& losses, Tensor& logits,
                                  const Tensor& local_targets, const Tensor* dloss, Arena& arena) {
  const Arena::Mark m = arena.mark();
  const int64_t rows = logits.size(0);
  Tensor stats = arena.alloc({3, rows}, DType::F32);
  ops::cross_entropy_shard_stats(ctx, stats, logits, local_targets);
  Tensor gathered = stats.view({1, 3, rows});
  if (tp.active()) {
    gathered = arena.alloc({tp.size(), 3, rows}, DType::F32);
    tp.group->all_gather(gathered, stats);
  }
  ops::cross_entropy_shard_finish(ctx, losses, dloss != nullptr ? &logits : nullptr, gathered, local_targets,
                                  dloss != nullptr ? *dloss : Tensor());
  arena.release(m);
}

// ---- gradients ----------------------------------------------------------------------------

std::vector<NamedTensor*> sequence_parallel_partial_grads(const TensorParallel& tp,
                                                          const std::vector<NamedTensor*>& params) {
  std::vector<NamedTensor*> out;
  if (!tp.sp()) return out;
  for (NamedTensor* p : params)
    if (!p->shard.sharded()) out.push_back(p);
  return out;
}

void all_reduce_sequence_parallel_grads(const TensorParallel& tp, const std::vector<NamedTensor*>& params) {
  for (NamedTensor* p : sequence_parallel_partial_grads(tp, params)) tp.group->all_reduce(p->grad, ReduceOp::Sum);
}

double grad_sum_of_squares(ops::Context& ctx, const std::vector<NamedTensor*>& params, int tp_rank,
                           Communicator* reduce_group) {
  std::vector<Tensor> counted;
  for (NamedTensor* p : params)
    if (p->shard.sharded() || tp_rank == 0) counted.push_back(p->grad);
  const double local = counted.empty() ? 0.0 : ops::sum_of_squares(ctx, counted);
  return reduce_group != nullptr ? reduce_group->all_reduce_value(local, ReduceOp::Sum) : local;
}

std::function<double(ops::Context&, const std::vector<NamedTensor*>&)> grad_sum_of_squares_fn(
    const TensorParallel& tp) {
  return [tp](ops::Context& ctx, const std::vector<NamedTensor*>& params) {
    return grad_sum_of_squares(ctx, params, tp.rank(), tp.active() ? tp.group : nullptr);
  };
}

// ---- full tensors <-> shards ------------------------------------------------------------------

namespace {
ShardSpec spec_of(const NamedTensor& p) {
  return p.shard.full_shape.empty() ? ShardSpec::replicated(p.value.shape()) : p.shard;
}
}  // namespace

NamedTensorList gather_full_tensors(const std::vector<NamedTensor*>& params, Communicator* tp, ParamField which) {
  NamedTensorList out;
  for (NamedTensor* p : params) {
    const Tensor& local = which == ParamField::Value ? p->value : p->grad;
    const ShardSpec spec = spec_of(*p);
    if (spec.sharded()) {
      PRIMUS_CHECK(tp != nullptr, "gather_full_tensors: '{}' is sharded ({}) but no tp group was given", p->name,
                   spec.describe());
      out.emplace_back(p->name, gather_shards(local, spec, *tp));
    } else {
      out.emplace_back(p->name, local.device() == Device::CPU ? local.clone() : local.to(Device::CPU));
    }
  }
  return out;
}

void load_full_tensors(ops::Context& ctx, const std::vector<NamedTensor*>& params, const NamedTensorList& full) {
  std::map<std::string, const Tensor*> by_name;
  std::vector<std::string> names;
  for (const auto& [name, t] : full) {
    by_name[name] = &t;
    names.push_back(name);
  }
  for (NamedTensor* p : params) {
    const ShardSpec spec = spec_of(*p);
    auto it = by_name.find(p->name);
    PRIMUS_CHECK(it != by_name.end(), "load_full_tensors: no tensor '{}' among the {} given{}", p->name, full.size(),
                 did_you_mean(p->name, names));
    PRIMUS_CHECK(it->second->shape() == spec.full_shape,
                 "load_full_tensors: '{}' is {}, expected the full shape {} (this rank holds {})", p->name,
                 it->second->describe(), shape_str(spec.full_shape), spec.describe());
    const Tensor local = slice_shard(*it->second, spec);
    if (local.dtype() == p->value.dtype()) {
      p->value.copy_from(local);
    } else {
      const Tensor src = to_device(local, p->value.device());
      ops::copy_cast(ctx, p->value, src);
    }
  }
}

}  // namespace primus::parallel

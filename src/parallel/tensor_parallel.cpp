#include "parallel/tensor_parallel.h"

#include <map>

#include "core/strings.h"
#include "ops/copy_into.h"

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

// ---- gradients ----------------------------------------------------------------------------

std::vector<NamedTensor*> sequence_parallel_partial_grads(const TensorParallel& tp,
                                                          const std::vector<NamedTensor*>& params) {
  std::vector<NamedTensor*> out;
  if (!tp.sp()) return out;
  for (NamedTensor* p : params)
    if (!p->shard.sharded()) out.push_back(p);
  return out;
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

NamedTensorList gather_full_tensors(const std::vector<NamedTensor*>& params, Communicator* tp, ParamField which,
                                    Communicator* ep) {
  NamedTensorList out;
  for (NamedTensor* p : params) {
    const Tensor& local = which == ParamField::Value ? p->value : p->grad;
    const ShardSpec spec = spec_of(*p);
    Tensor full;
    if (spec.sharded()) {
      PRIMUS_CHECK(tp != nullptr, "gather_full_tensors: '{}' is sharded ({}) but no tp group was given", p->name,
                   spec.describe());
      full = gather_shards(local, spec, *tp);
    } else {
      full = local.device() == Device::CPU ? local.clone() : local.to(Device::CPU);
    }
    if (p->expert_parallel) {  // then the experts of the other ep ranks
      PRIMUS_CHECK(ep != nullptr, "gather_full_tensors: '{}' is split over expert-parallel ranks ({}) but no ep group "
                   "was given", p->name, p->expert_shard.describe());
      full = gather_shards(full, p->expert_shard, *ep);
    }
    out.emplace_back(p->name, std::move(full));
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
    const Shape& whole = p->expert_parallel ? p->expert_shard.full_shape : spec.full_shape;
    PRIMUS_CHECK(it->second->shape() == whole,
                 "load_full_tensors: '{}' is {}, expected the full shape {} (this rank holds {}{})", p->name,
                 it->second->describe(), shape_str(whole), spec.describe(),
                 p->expert_parallel ? " of experts " + p->expert_shard.describe() : std::string());
    const Tensor local =
        p->expert_parallel ? slice_shard(slice_shard(*it->second, p->expert_shard), spec) : slice_shard(*it->second, spec);
    ops::copy_into(ctx, p->value, local);
  }
}

}  // namespace primus::parallel

#include "parallel/tensor_parallel_shard.h"

#include <cstring>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "parallel/communicator.h"

namespace primus::parallel {

namespace {

std::vector<int64_t> parts_of(const ShardSpec& s) {
  if (!s.parts.empty()) return s.parts;
  return {s.full_shape.at(static_cast<size_t>(s.dim))};
}

Tensor host_copy(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

}  // namespace

ShardSpec ShardSpec::replicated(Shape full) {
  ShardSpec s;
  s.full_shape = std::move(full);
  return s;
}

ShardSpec ShardSpec::split(Shape full, int dim, int rank, int count, std::vector<int64_t> parts,
                           const std::string& what) {
  PRIMUS_CHECK(dim >= 0 && dim < static_cast<int>(full.size()), "{}: shard dim {} is outside shape {}", what, dim,
               shape_str(full));
  PRIMUS_CHECK(count >= 1 && rank >= 0 && rank < count, "{}: shard rank {} of {} is not a valid piece", what, rank,
               count);
  ShardSpec s;
  s.dim = dim;
  s.rank = rank;
  s.count = count;
  s.parts = std::move(parts);
  s.full_shape = std::move(full);
  const std::vector<int64_t> p = parts_of(s);
  const int64_t total = std::accumulate(p.begin(), p.end(), int64_t{0});
  PRIMUS_CHECK(total == s.full_shape[static_cast<size_t>(dim)],
               "{}: parts [{}] add up to {}, but dim {} of {} has {} entries", what, fmt::join(p, ", "), total, dim,
               shape_str(s.full_shape), s.full_shape[static_cast<size_t>(dim)]);
  for (int64_t len : p)
    PRIMUS_CHECK(len % count == 0,
                 "{}: a part of {} entries along dim {} of {} does not split into {} equal tensor-parallel "
                 "pieces; choose a tensor_model_parallel_size that divides it",
                 what, len, dim, shape_str(s.full_shape), count);
  return s;
}

Shape ShardSpec::local_shape() const {
  Shape s = full_shape;
  if (sharded()) s[static_cast<size_t>(dim)] /= count;
  return s;
}

std::string ShardSpec::describe() const {
  if (!sharded()) return fmt::format("replicated {}", shape_str(full_shape));
  return fmt::format("dim {} parts [{}], piece {} of {} of {}", dim, fmt::join(parts_of(*this), ", "), rank, count,
                     shape_str(full_shape));
}

std::vector<ShardRun> shard_runs(const ShardSpec& spec) {
  const int64_t full_numel = shape_numel(spec.full_shape);
  if (!spec.sharded()) return {ShardRun{0, 0, full_numel}};
  const auto d = static_cast<size_t>(spec.dim);
  int64_t outer = 1, inner = 1;
  for (size_t i = 0; i < d; ++i) outer *= spec.full_shape[i];
  for (size_t i = d + 1; i < spec.full_shape.size(); ++i) inner *= spec.full_shape[i];
  const int64_t full_dim = spec.full_shape[d], local_dim = full_dim / spec.count;
  const std::vector<int64_t> parts = parts_of(spec);
  std::vector<ShardRun> runs;
  runs.reserve(static_cast<size_t>(outer) * parts.size());
  for (int64_t o = 0; o < outer; ++o) {
    int64_t full_start = 0, local_start = 0;  // of the current part, along dim
    for (int64_t len : parts) {
      const int64_t piece = len / spec.count;
      runs.push_back({(o * full_dim + full_start + spec.rank * piece) * inner, (o * local_dim + local_start) * inner,
                      piece * inner});
      full_start += len;
      local_start += piece;
    }
  }
  return runs;
}

std::vector<ShardRun> shard_runs(const ShardSpec& inner, const ShardSpec& outer) {
  const std::vector<ShardRun> base = shard_runs(outer);
  PRIMUS_CHECK(base.size() == 1, "shard_runs: the outer split ({}) is not one contiguous piece", outer.describe());
  PRIMUS_CHECK(inner.full_shape == outer.local_shape(), "shard_runs: the inner split ({}) is not of the outer piece {}",
               inner.describe(), shape_str(outer.local_shape()));
  std::vector<ShardRun> runs = shard_runs(inner);
  for (ShardRun& r : runs) r.full_offset += base[0].full_offset;
  return runs;
}

Tensor slice_shard(const Tensor& full_in, const ShardSpec& spec) {
  PRIMUS_CHECK(full_in.shape() == spec.full_shape, "slice_shard: tensor {} does not have the full shape of {}",
               full_in.describe(), spec.describe());
  const Tensor full = host_copy(full_in);
  Tensor local = Tensor::empty(spec.local_shape(), full.dtype());
  const size_t es = dtype_size(full.dtype());
  for (const ShardRun& r : shard_runs(spec))
    std::memcpy(static_cast<char*>(local.raw()) + r.local_offset * es,
                static_cast<const char*>(full.raw()) + r.full_offset * es, static_cast<size_t>(r.numel) * es);
  return local;
}

void place_shard(Tensor& full, const Tensor& local_in, const ShardSpec& spec) {
  PRIMUS_CHECK(full.device() == Device::CPU && full.shape() == spec.full_shape,
               "place_shard: target {} must be a CPU tensor of the full shape of {}", full.describe(),
               spec.describe());
  PRIMUS_CHECK(local_in.numel() == shape_numel(spec.local_shape()) && local_in.dtype() == full.dtype(),
               "place_shard: shard {} does not match {} ({} of {})", local_in.describe(), spec.describe(),
               dtype_name(full.dtype()), shape_str(spec.local_shape()));
  const Tensor local = host_copy(local_in);
  const size_t es = dtype_size(full.dtype());
  for (const ShardRun& r : shard_runs(spec))
    std::memcpy(static_cast<char*>(full.raw()) + r.full_offset * es,
                static_cast<const char*>(local.raw()) + r.local_offset * es, static_cast<size_t>(r.numel) * es);
}

Tensor assemble_shards(const std::vector<Tensor>& shards, const ShardSpec& spec) {
  const int count = spec.sharded() ? spec.count : 1;
  PRIMUS_CHECK(static_cast<int>(shards.size()) == count, "assemble_shards: {} shards given for {}", shards.size(),
               spec.describe());
  Tensor full = Tensor::empty(spec.full_shape, shards.at(0).dtype());
  for (int r = 0; r < count; ++r) {
    ShardSpec piece = spec;
    piece.rank = r;
    place_shard(full, shards[static_cast<size_t>(r)], piece);
  }
  return full;
}

Tensor gather_shards(const Tensor& local, const ShardSpec& spec, Communicator& tp) {
  if (!spec.sharded()) return local.device() == Device::CPU ? local.clone() : local.to(Device::CPU);
  PRIMUS_CHECK(tp.size() == spec.count, "gather_shards: the {} group has {} ranks but the tensor is split in {} ({})",
               tp.name(), tp.size(), spec.count, spec.describe());
  const int64_t n = local.numel();
  Tensor all = Tensor::empty({spec.count * n}, local.dtype(), tp.device());
  const Tensor in = local.device() == tp.device() ? local.view({n}) : local.to(tp.device()).view({n});
  tp.all_gather(all, in);
  tp.synchronize();
  const Tensor host = host_copy(all);
  std::vector<Tensor> shards;
  for (int r = 0; r < spec.count; ++r) shards.push_back(host.rows(r * n, (r + 1) * n));
  return assemble_shards(shards, spec);
}

}  // namespace primus::parallel

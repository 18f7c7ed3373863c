#include "parallel/flat_layout.h"

#include <unordered_set>

#include "core/strings.h"

namespace primus::parallel {
namespace {
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
}  // namespace

FlatLayout FlatLayout::build(const std::vector<ParamSpec>& params, const FlatLayoutOptions& o) {
  PRIMUS_CHECK(o.shard_count >= 1, "flat layout: shard_count {} must be at least 1", o.shard_count);
  PRIMUS_CHECK(o.align >= 1, "flat layout: align {} must be at least 1", o.align);
  FlatLayout L;
  L.shard_count_ = o.shard_count;
  std::unordered_set<std::string> seen;
  const int64_t bucket_quantum = o.align * o.shard_count;

  Bucket open;
  int64_t cursor = 0;  // next free element
  auto close = [&] {
    open.end = open.begin + round_up(std::max<int64_t>(cursor - open.begin, 1), bucket_quantum);
    cursor = open.end;
    L.buckets_.push_back(std::move(open));
    open = Bucket{};
    open.begin = cursor;
  };
  for (const ParamSpec& spec : params) {
    PRIMUS_CHECK(seen.insert(spec.name).second, "flat layout: parameter '{}' is listed twice",
                 spec.name);
    for (int64_t d : spec.shape)
      PRIMUS_CHECK(d >= 0, "flat layout: parameter '{}' has shape {} with a negative dim",
                   spec.name, shape_str(spec.shape));
    Param p;
    p.name = spec.name;
    p.shape = spec.shape;
    p.numel = shape_numel(spec.shape);
    p.offset = round_up(cursor, o.align);
    p.bucket = static_cast<int>(L.buckets_.size());
    cursor = p.offset + p.numel;
    open.params.push_back(L.params_.size());
    L.params_.push_back(std::move(p));
    if (o.bucket_numel > 0 && cursor - open.begin >= o.bucket_numel) close();
  }
  if (!open.params.empty() || L.buckets_.empty()) close();
  L.total_ = cursor;
  return L;
}

size_t FlatLayout::index_of(std::string_view name) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].name == name) return i;
  std::vector<std::string> names;
  for (const Param& p : params_) names.push_back(p.name);
  fail("flat layout: no parameter '{}'{}", name, did_you_mean(name, names));
}

void FlatLayout::check_flat(const Tensor& flat) const {
  PRIMUS_CHECK(flat.numel() == total_,
               "flat layout: buffer {} has {} elements but the layout needs {}", flat.describe(),
               flat.numel(), total_);
}

Tensor FlatLayout::param_view(const Tensor& flat, size_t i) const {
  check_flat(flat);
  const Param& p = params_.at(i);
  return flat.view({total_}).rows(p.offset, p.offset + p.numel).view(p.shape);
}

Tensor FlatLayout::bucket_view(const Tensor& flat, int b) const {
  check_flat(flat);
  const Bucket& k = buckets_.at(b);
  return flat.view({total_}).rows(k.begin, k.end);
}

Tensor FlatLayout::shard_view(const Tensor& flat, int b, int shard) const {
  PRIMUS_CHECK(shard >= 0 && shard < shard_count_, "flat layout: shard {} is outside [0, {})",
               shard, shard_count_);
  const int64_t s = shard_numel(b);
  return bucket_view(flat, b).rows(shard * s, (shard + 1) * s);
}

}  // namespace primus::parallel

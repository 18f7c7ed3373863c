#include "parallel/distributed_optimizer_shards.h"

#include <algorithm>

namespace primus::parallel {

DistributedOptimizerShards::DistributedOptimizerShards(const FlatLayout& layout, int dp_rank)
    : layout_(layout), rank_(dp_rank) {
  PRIMUS_CHECK(dp_rank >= 0 && dp_rank < layout.shard_count(),
               "distributed optimizer: dp rank {} is outside [0, {}) shards of the layout", dp_rank,
               layout.shard_count());
  for (int b = 0; b < static_cast<int>(layout.buckets().size()); ++b) {
    const Range shard = bucket_shard(b);
    for (size_t i : layout.buckets()[b].params) {
      const FlatLayout::Param& p = layout.params()[i];
      const int64_t lo = std::max(shard.begin, p.offset);
      const int64_t hi = std::min(shard.end, p.offset + p.numel);
      if (lo >= hi) continue;
      pieces_.push_back({i, lo - p.offset, lo, hi - lo});
      owned_numel_ += hi - lo;
    }
  }
}

DistributedOptimizerShards::Range DistributedOptimizerShards::bucket_shard(int b) const {
  const FlatLayout::Bucket& k = layout_.buckets().at(b);
  const int64_t s = layout_.shard_numel(b);
  return {k.begin + rank_ * s, k.begin + (rank_ + 1) * s};
}

Tensor DistributedOptimizerShards::piece_view(const Tensor& flat, const Piece& piece) const {
  PRIMUS_CHECK(flat.numel() == layout_.total_numel(),
               "distributed optimizer: buffer {} has {} elements, the layout {}", flat.describe(),
               flat.numel(), layout_.total_numel());
  return flat.view({flat.numel()}).rows(piece.flat_offset, piece.flat_offset + piece.numel);
}

CommHandle DistributedOptimizerShards::all_gather_bucket_async(Communicator& dp, Tensor& param_flat,
                                                               int bucket) const {
  PRIMUS_CHECK(dp.size() == dp_size() && dp.rank() == rank_,
               "distributed optimizer: shards are for rank {} of {} but the group is {}", rank_,
               dp_size(), dp.describe());
  Tensor all = layout_.bucket_view(param_flat, bucket);
  Tensor mine = layout_.shard_view(param_flat, bucket, rank_);
  return dp.all_gather_async(all, mine);
}

std::vector<CommHandle> DistributedOptimizerShards::all_gather_params_async(Communicator& dp,
                                                                             Tensor& param_flat) const {
  std::vector<CommHandle> handles;
  for (int b = 0; b < static_cast<int>(layout_.buckets().size()); ++b)
    handles.push_back(all_gather_bucket_async(dp, param_flat, b));
  return handles;
}

void DistributedOptimizerShards::all_gather_params(Communicator& dp, Tensor& param_flat) const {
  for (CommHandle& h : all_gather_params_async(dp, param_flat)) h->wait();
}

}  // namespace primus::parallel

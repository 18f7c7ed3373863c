// DistributedOptimizerShards: which part of the flat buffers each data-parallel rank
// owns when optimizer state and master weights are sharded (use_distributed_optimizer).
//
// Each bucket of the FlatLayout (built with shard_count = dp size) is cut into dp equal,
// contiguous shards; rank r owns shard r of every bucket. A step then is
//   1. GradBuckets with GradReduce::ReduceScatter: rank r's shard of the gradient buffer
//      holds the dp-averaged gradient (the rest of the buffer is stale);
//   2. the optimizer updates only the pieces() this rank owns: fp32 master weights and
//      Adam moments sized owned_numel(), never the full model;
//   3. all_gather_params(): every rank's updated shard is copied into every other rank's
//      parameter buffer (same layout, any dtype, e.g. bf16 weights from fp32 masters).
// With overlap_param_gather the per-bucket all-gathers are started asynchronously and
// waited for before the forward pass needs the bucket's params.
#pragma once

#include <vector>

#include "parallel/communicator.h"
#include "parallel/flat_layout.h"

namespace primus::parallel {

class DistributedOptimizerShards {
 public:
  // A contiguous run of one parameter that lies in this rank's shard.
  struct Piece {
    size_t param = 0;          // index into layout.params()
    int64_t param_offset = 0;  // first element within the parameter (row-major)
    int64_t flat_offset = 0;   // the same element in the flat buffer
    int64_t numel = 0;
  };
  struct Range {
    int64_t begin = 0, end = 0;
  };

  // `layout` must have been built with shard_count = dp size and must outlive this.
  DistributedOptimizerShards(const FlatLayout& layout, int dp_rank);

  int dp_rank() const { return rank_; }
  int dp_size() const { return layout_.shard_count(); }
  // This rank's shard of bucket b in the flat buffer (padding included).
  Range bucket_shard(int bucket) const;
  // Every piece of a parameter in this rank's shards, in flat order.
  const std::vector<Piece>& pieces() const { return pieces_; }
  // Elements of parameters this rank updates (padding excluded).
  int64_t owned_numel() const { return owned_numel_; }

  // View of one piece in a flat buffer with this layout (1-D, numel elements).
  Tensor piece_view(const Tensor& flat, const Piece& piece) const;

  // In-place all-gather of every bucket of `param_flat` over `dp` (size must match).
  void all_gather_params(Communicator& dp, Tensor& param_flat) const;
  // The same, bucket by bucket, without waiting (overlap_param_gather).
  std::vector<CommHandle> all_gather_params_async(Communicator& dp, Tensor& param_flat) const;
  // Bucket b's all-gather alone, not waited for.
  CommHandle all_gather_bucket_async(Communicator& dp, Tensor& param_flat, int bucket) const;

 private:
  const FlatLayout& layout_;
  int rank_;
  std::vector<Piece> pieces_;
  int64_t owned_numel_ = 0;
};

}  // namespace primus::parallel

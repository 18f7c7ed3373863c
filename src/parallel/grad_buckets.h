// GradBuckets: data-parallel gradient reduction in flat fp32 (or bf16) buckets.
//
// Owns one buffer of options.dtype (fp32 by default; bf16 for Megatron's grad_reduce_in_bf16) (on the data-parallel communicator's device) laid out by a
// FlatLayout; grad(i) is parameter i's gradient as a view into it. The backward pass
// accumulates into those views (`+=` across micro-batches); then the buckets are reduced
// over the data-parallel group:
//   GradReduce::AllReduce      every rank ends with the full averaged gradient
//   GradReduce::ReduceScatter  (distributed optimizer) rank r ends with the averaged
//                              gradient of its shard r of every bucket only
// With overlap_grad_reduce, a bucket's collective starts the moment the last of its
// params is marked ready, while backward goes on with earlier layers; finish() starts
// whatever is left and waits for all. Without it, finish() does all the work.
//
// The training loop, per optimizer step (see docs/PARALLEL.md):
//     grads.zero();
//     for each micro-batch: forward; backward into grads.grad(i)
//         (on the last micro-batch, grads.mark_ready(i) as each grad is final)
//     grads.finish();        // now averaged over dp
//     clip + optimizer step
#pragma once

#include <vector>

#include "parallel/communicator.h"
#include "parallel/flat_layout.h"

namespace primus::parallel {

enum class GradReduce : uint8_t { AllReduce, ReduceScatter };

struct GradBucketOptions {
  // Megatron's default: 40M elements (160 MB of fp32). Smaller buckets start reducing
  // sooner during backward; larger ones make fewer, more efficient collectives.
  int64_t bucket_size_bytes = 160'000'000;
  bool overlap_grad_reduce = false;
  GradReduce reduce = GradReduce::AllReduce;
  // Average over the group (the loss is a per-rank mean); false sums.
  bool average = true;
  DType dtype = DType::F32;  // of the gradients, the buffer and the collectives
};

class GradBuckets {
 public:
  // `params` in the order backward finishes them. `dp` must outlive this object.
  GradBuckets(const std::vector<ParamSpec>& params, Communicator& dp, GradBucketOptions options = {});
  ~GradBuckets();

  const FlatLayout& layout() const { return layout_; }
  const GradBucketOptions& options() const { return options_; }
  Communicator& group() const { return dp_; }
  Tensor flat() const { return flat_; }  // options().dtype [layout().total_numel()]
  Tensor grad(size_t param) const { return layout_.param_view(flat_, param); }
  Tensor grad(std::string_view name) const { return grad(layout_.index_of(name)); }

  // Zeros every gradient (clear_values false: leaves the values to a caller that overwrites
  // them) and the ready marks. Throws if a reduction is still in flight.
  void zero(bool clear_values = true);
  // Param i's gradient is final for this step. Starts its bucket's collective when this
  // was the last one (overlap on). Throws when marked twice in one step.
  void mark_ready(size_t param);
  void mark_ready(std::string_view name) { mark_ready(layout_.index_of(name)); }
  // Starts every bucket not started yet and waits for all (NCCL: stream-ordered).
  void finish();

  // Buckets whose collective started from mark_ready() in the last step (for tests/logs).
  int buckets_started_early() const { return started_early_; }

 private:
  void start(int bucket);

  Communicator& dp_;
  GradBucketOptions options_;
  FlatLayout layout_;
  Tensor flat_;
  std::vector<bool> ready_;
  std::vector<int> pending_;  // per bucket: params not marked ready yet
  std::vector<CommHandle> in_flight_;  // per bucket; null when not started
  size_t next_start_ = 0;  // buckets [0, next_start_) have been started this step
  int started_early_ = 0;
};

}  // namespace primus::parallel

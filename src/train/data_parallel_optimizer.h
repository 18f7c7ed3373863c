// DataParallelOptimizer: AdamW across data-parallel ranks, as Megatron's DDP + (distributed)
// optimizer do it.
//
// It takes over the model's gradients: every NamedTensor::grad becomes a view into one flat
// fp32 buffer cut into buckets (parallel::GradBuckets), so a bucket of many gradients is one
// collective. Per optimizer step:
//   zero_grads();  micro-batches' forward+backward accumulate into the views
//                  (overlap_grad_reduce: grad_ready(p) on the last micro-batch starts a
//                  bucket's reduction as soon as its last gradient is final);
//   reduce_grads();  every bucket summed over the data-parallel group;
//   step(lr, wd, grad_scale);
//
// Plain data parallel (use_distributed_optimizer false): buckets are all-reduced, and every
// rank runs the same AdamW on every parameter (fp32 master + two moments per element).
//
// Distributed optimizer (use_distributed_optimizer true): the parameters' values also move
// into one flat buffer with the same layout; buckets are reduce-scattered, so rank r holds
// the summed gradient of its shard r of each bucket only, and AdamW runs over those pieces:
// master weights and moments exist for 1/dp of the model per rank. After the update each
// rank's shard of the new weights is all-gathered into every rank's parameter buffer.
//
// Expert parallel: the expert-parallel parameters (NamedTensor::expert_parallel, the routed
// experts' shards) form a second group with its own buckets, reduced over the
// expert-data-parallel group (the ranks that hold the same experts) instead of dp, and with the
// distributed optimizer sharded over that group; everything else is as above.
//
// The global gradient norm (for clipping and the log) is the same number on every rank and
// in every layout: each element is counted once (tensor-parallel replicated tensors on tp
// rank 0 only, distributed-optimizer shards on their owner) and the sum is all-reduced over
// the groups that hold different elements (the experts' sum also over ep).
//
// state_tensors() / load_state_tensors() speak AdamW's per-parameter format
// ("<param>.exp_avg", ".exp_avg_sq", ".master", "step") whatever the layout, so checkpoints
// move between plain and distributed optimizers and between data-parallel sizes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "parallel/named_tensor.h"
#include "optim/adamw.h"
#include "parallel/communicator.h"
#include "parallel/distributed_optimizer_shards.h"
#include "parallel/grad_buckets.h"

namespace primus::train {

struct DataParallelOptions {
  bool overlap_grad_reduce = false;
  bool distributed_optimizer = false;  // use_distributed_optimizer
  // Distributed optimizer: step() only starts the parameter all-gathers (one per bucket, in
  // the order the forward needs them); param_needed() waits for a bucket when the next
  // forward first reads one of its parameters.
  bool overlap_param_gather = false;
  int64_t bucket_size_bytes = 160'000'000;  // Megatron's ddp_bucket_size default: 40M fp32 elements
  // Parameters left out of the grad norm because another rank counts the same tensor (the
  // last pipeline stage's copy of a tied embedding).
  std::vector<const NamedTensor*> excluded_from_norm;
};

// Where expert-parallel parameters are reduced (expert_dp: the ranks holding the same experts)
// and which group holds the other experts (ep, for the norm). Both null: no expert parallelism.
struct ExpertReduceGroups {
  parallel::Communicator* expert_dp = nullptr;
  parallel::Communicator* ep = nullptr;
};

class DataParallelOptimizer {
 public:
  // `params` (this rank's tensors, forward order) must outlive the optimizer; so must `dp`
  // and `model_parallel` (the group whose ranks hold different parts of the model: tp x pp;
  // null when there is one). `tp_rank` decides who counts replicated tensors in the norm.
  // Parameters with expert_parallel set need `experts` (throws naming one otherwise).
  DataParallelOptimizer(ops::Context& ctx, std::vector<NamedTensor*> params, parallel::Communicator& dp,
                        parallel::Communicator* model_parallel, int tp_rank, const AdamWConfig& adam,
                        const DataParallelOptions& options, ExpertReduceGroups experts = {});
  ~DataParallelOptimizer();

  const DataParallelOptions& options() const { return options_; }
  // Starts a step: the ready marks reset and every gradient zeroed, or, with clear_values
  // false, left to a model that zeroes or overwrites each one itself
  // (PipelinedModel::zero_grads_for_overwrite).
  void zero_grads(bool clear_values = true);
  // overlap_grad_reduce: `p`'s gradient is final for this step (call during the last
  // micro-batch's backward, once per parameter). A no-op without overlap.
  void grad_ready(const NamedTensor& p);
  // Sums every gradient bucket over the data-parallel group (what is left of it with overlap).
  void reduce_grads();
  // Clipping, AdamW and (distributed optimizer) the all-gather of the new weights. A step
  // with a non-finite norm changes nothing (AdamW::StepInfo::skipped).
  AdamW::StepInfo step(double lr, double weight_decay, float grad_scale);
  // overlap_param_gather: the forward is about to read `p`'s value; waits for the all-gather
  // of its bucket if that is still in flight. A no-op otherwise.
  void param_needed(const NamedTensor& p);
  // Waits for every parameter all-gather still in flight: before anything reads the weights
  // outside a forward that calls param_needed (checkpoint save, parameter norms, the end).
  void finish_param_gather();
  // overlap_param_gather: buckets of the last step's all-gather (one per bucket) that were
  // waited for inside the forward (by param_needed).
  int param_buckets_waited_in_forward() const { return waited_in_forward_; }
  // The log's `num zeros`: zero gradient elements over the whole model (a collective over dp, ep and
  // tp/pp: every rank calls it; the single-rank count at every layout).
  int64_t count_zero_grads();
  // Weights were loaded into the params: make the fp32 masters equal to them again.
  void reset_masters_from_params();

  NamedTensorList state_tensors();
  void load_state_tensors(const NamedTensorList& state);
  int64_t steps_taken() const { return adam_->steps_taken(); }
  // overlap_grad_reduce: buckets whose reduction started during the last backward, of all.
  int buckets_started_early() const;
  int num_buckets() const;
  // Bytes of optimizer state (masters + moments) this rank holds.
  int64_t state_bytes() const;

 private:
  // Parameters reduced over one group: the dense ones over dp, the experts over expert_dp.
  struct Group {
    parallel::Communicator* dp = nullptr;      // where grads are summed (and the shards live)
    parallel::Communicator* across = nullptr;  // ranks holding different tensors of this kind (ep)
    DType grad_dtype = DType::F32;             // of its parameters' gradients and buckets
    std::vector<NamedTensor*> params;          // forward order
    std::unique_ptr<parallel::GradBuckets> buckets;
    // Distributed optimizer only: the flat parameter buffer, this rank's shards, the range of
    // pieces_ that are this group's, the bucket of each parameter and the all-gathers in flight.
    Tensor param_flat;
    std::unique_ptr<parallel::DistributedOptimizerShards> shards;
    size_t first_piece = 0, num_pieces = 0;
    std::vector<int> bucket_of_param;
    std::vector<parallel::CommHandle> param_gathers;
  };
  void build_group(Group& g);
  double grad_sum_of_squares(const std::vector<NamedTensor*>& optimized);
  NamedTensorList group_state_tensors(Group& g, const std::map<std::string, Tensor>& mine);
  const NamedTensor* owner_of(const std::string& name) const;

  ops::Context& ctx_;
  std::vector<NamedTensor*> params_;
  parallel::Communicator* model_parallel_;
  int tp_rank_;
  DataParallelOptions options_;
  std::vector<Group> groups_;  // [0] dense, [1] experts (when any)
  // param -> (its group, its index in that group's flat layout)
  std::unordered_map<const NamedTensor*, std::pair<size_t, size_t>> layout_index_;
  // Distributed optimizer only: the NamedTensors AdamW sees (one per piece of a parameter in
  // this rank's shards, group by group).
  std::vector<std::unique_ptr<NamedTensor>> pieces_;
  // What AdamW optimizes (the params, or with the distributed optimizer pieces_), and per entry
  // its group and whether this rank counts it in the norm (tp replication, tied copies).
  std::vector<NamedTensor*> entries_;
  std::vector<size_t> entry_group_;
  std::vector<bool> entry_counted_;
  std::unordered_set<const NamedTensor*> excluded_;  // options_.excluded_from_norm
  std::unique_ptr<AdamW> adam_;
  int waited_in_forward_ = 0;
};

}  // namespace primus::train

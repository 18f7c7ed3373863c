#include "parallel/grad_buckets.h"

#include "core/dtype.h"

namespace primus::parallel {

GradBuckets::GradBuckets(const std::vector<ParamSpec>& params, Communicator& dp,
                         GradBucketOptions options)
    : dp_(dp), options_(options) {
  PRIMUS_CHECK(options.bucket_size_bytes >= 0, "grad buckets: bucket_size_bytes {} must be >= 0",
               options.bucket_size_bytes);
  FlatLayoutOptions lo;
  PRIMUS_CHECK(is_float(options.dtype), "grad buckets: dtype {} is not a float type", dtype_name(options.dtype));
  lo.bucket_numel = options.bucket_size_bytes / static_cast<int64_t>(dtype_size(options.dtype));
  lo.shard_count = options.reduce == GradReduce::ReduceScatter ? dp.size() : 1;
  layout_ = FlatLayout::build(params, lo);
  flat_ = Tensor::zeros({layout_.total_numel()}, options.dtype, dp.device());
  const size_t nb = layout_.buckets().size();
  in_flight_.resize(nb);
  ready_.assign(layout_.params().size(), false);
  pending_.resize(nb);
  for (size_t b = 0; b < nb; ++b) pending_[b] = static_cast<int>(layout_.buckets()[b].params.size());
}

GradBuckets::~GradBuckets() {
  // Never leave a collective writing into freed memory.
  for (CommHandle& h : in_flight_)
    if (h) h->wait();
}

void GradBuckets::zero(bool clear_values) {
  for (size_t b = 0; b < in_flight_.size(); ++b)
    PRIMUS_CHECK(!in_flight_[b], "grad buckets: zero() while bucket {} is still being reduced; "
                 "call finish() first", b);
  if (clear_values) flat_.zero_();
  ready_.assign(ready_.size(), false);
  next_start_ = 0;
  for (size_t b = 0; b < pending_.size(); ++b)
    pending_[b] = static_cast<int>(layout_.buckets()[b].params.size());
  started_early_ = 0;
}

void GradBuckets::mark_ready(size_t i) {
  PRIMUS_CHECK(i < ready_.size(), "grad buckets: param index {} is outside [0, {})", i, ready_.size());
  const auto& p = layout_.params()[i];
  PRIMUS_CHECK(!ready_[i], "grad buckets: gradient of '{}' marked ready twice in one step; call "
               "zero() at the start of each step", p.name);
  ready_[i] = true;
  --pending_[p.bucket];
  // Buckets start strictly in index order, on every rank alike: MPI and NCCL match
  // collectives by issue order, so a rank that finished bucket 2 before bucket 1 must
  // still issue 1 first.
  while (options_.overlap_grad_reduce && next_start_ < pending_.size() &&
         pending_[next_start_] == 0) {
    start(static_cast<int>(next_start_++));
    ++started_early_;
  }
  // MPI moves non-blocking collectives forward only inside MPI calls: poke the ones in flight.
  for (CommHandle& h : in_flight_)
    if (h) h->test();
}

void GradBuckets::start(int b) {
  const ReduceOp op = options_.average ? ReduceOp::Avg : ReduceOp::Sum;
  Tensor bucket = layout_.bucket_view(flat_, b);
  if (options_.reduce == GradReduce::AllReduce) {
    in_flight_[b] = dp_.all_reduce_async(bucket, op);
  } else {
    Tensor mine = layout_.shard_view(flat_, b, dp_.rank());
    in_flight_[b] = dp_.reduce_scatter_async(mine, bucket, op);
  }
}

void GradBuckets::finish() {
  while (next_start_ < pending_.size()) start(static_cast<int>(next_start_++));
  for (CommHandle& h : in_flight_) {
    if (h) h->wait();
    h.reset();
  }
}

}  // namespace primus::parallel

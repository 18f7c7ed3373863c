#include "train/data_parallel_optimizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"

namespace primus::train {

namespace {

// Optimizer-state kinds in AdamW's naming; ".master" exists only when params are not fp32.
constexpr const char* kMoments[] = {"exp_avg", "exp_avg_sq"};

Tensor flat_1d(const Tensor& t) { return t.view({t.numel()}); }

Tensor host_copy(const Tensor& t) { return t.device() == Device::CPU ? t.clone() : t.to(Device::CPU); }

}  // namespace

DataParallelOptimizer::DataParallelOptimizer(ops::Context& ctx, std::vector<NamedTensor*> params,
                                             parallel::Communicator& dp, parallel::Communicator* model_parallel,
                                             int tp_rank, const AdamWConfig& adam, const DataParallelOptions& options)
    : ctx_(ctx), params_(std::move(params)), dp_(dp), model_parallel_(model_parallel), tp_rank_(tp_rank),
      options_(options) {
  PRIMUS_CHECK(!params_.empty(), "DataParallelOptimizer: no parameters");
  excluded_.insert(options_.excluded_from_norm.begin(), options_.excluded_from_norm.end());
  // Buckets in the order backward finishes the gradients (the reverse of the forward order),
  // so that with overlap the first bucket is complete first.
  std::vector<parallel::ParamSpec> specs;
  for (auto it = params_.rbegin(); it != params_.rend(); ++it) specs.push_back({(*it)->name, (*it)->value.shape()});
  parallel::GradBucketOptions bo;
  bo.bucket_size_bytes = options_.bucket_size_bytes;
  bo.overlap_grad_reduce = options_.overlap_grad_reduce;
  bo.reduce = options_.distributed_optimizer ? parallel::GradReduce::ReduceScatter : parallel::GradReduce::AllReduce;
  bo.average = false;  // the loss weights already make the gradient that of the global batch's mean loss
  buckets_ = std::make_unique<parallel::GradBuckets>(specs, dp_, bo);
  const parallel::FlatLayout& layout = buckets_->layout();
  for (NamedTensor* p : params_) {
    const size_t i = layout.index_of(p->name);
    layout_index_[p] = i;
    Tensor view = buckets_->grad(i);
    PRIMUS_CHECK(view.device() == p->grad.device(),
                 "DataParallelOptimizer: the data-parallel group '{}' works on {} tensors but '{}' lives on {}",
                 dp_.name(), device_name(view.device()), p->name, device_name(p->grad.device()));
    view.copy_from(p->grad);
    p->grad = view;
  }

  if (!options_.distributed_optimizer) {
    adam_ = std::make_unique<AdamW>(ctx_, params_, adam);
    adam_->set_grad_sum_of_squares(
        [this](ops::Context&, const std::vector<NamedTensor*>& ps) { return grad_sum_of_squares(ps); });
    return;
  }

  // Distributed optimizer: the weights move into a flat buffer of the same layout, and AdamW
  // sees only the pieces of it that this rank owns.
  const DType dtype = params_.front()->value.dtype();
  param_flat_ = Tensor::zeros({layout.total_numel()}, dtype, params_.front()->value.device());
  for (NamedTensor* p : params_) {
    PRIMUS_CHECK(p->value.dtype() == dtype, "DataParallelOptimizer: parameters mix {} and {} ('{}')",
                 dtype_name(dtype), dtype_name(p->value.dtype()), p->name);
    Tensor view = layout.param_view(param_flat_, layout_index_.at(p));
    view.copy_from(p->value);
    p->value = view;
  }
  shards_ = std::make_unique<parallel::DistributedOptimizerShards>(layout, dp_.rank());
  bucket_of_param_.assign(layout.params().size(), -1);
  for (size_t b = 0; b < layout.buckets().size(); ++b)
    for (size_t i : layout.buckets()[b].params) bucket_of_param_[i] = static_cast<int>(b);
  const Tensor grad_flat = buckets_->flat();
  std::vector<NamedTensor*> piece_ptrs;
  for (const auto& piece : shards_->pieces()) {
    const auto& lp = layout.params()[piece.param];
    const NamedTensor* owner = nullptr;
    for (NamedTensor* p : params_)
      if (p->name == lp.name) owner = p;
    auto nt = std::make_unique<NamedTensor>();
    nt->name = fmt::format("{}[{}:{}]", lp.name, piece.param_offset, piece.param_offset + piece.numel);
    nt->value = shards_->piece_view(param_flat_, piece);
    nt->grad = shards_->piece_view(grad_flat, piece);
    nt->no_weight_decay = owner->no_weight_decay;
    piece_counted_.push_back((owner->shard.sharded() || tp_rank_ == 0) && !excluded_.count(owner));
    piece_ptrs.push_back(nt.get());
    pieces_.push_back(std::move(nt));
  }
  adam_ = std::make_unique<AdamW>(ctx_, piece_ptrs, adam);
  adam_->set_grad_sum_of_squares(
      [this](ops::Context&, const std::vector<NamedTensor*>& ps) { return grad_sum_of_squares(ps); });
}

DataParallelOptimizer::~DataParallelOptimizer() {
  // Never leave a collective writing into freed buffers; a failed one was reported where it
  // failed (or the job is being torn down), so its error is not rethrown from a destructor.
  for (parallel::CommHandle& h : param_gathers_) {
    if (!h) continue;
    try {
      h->wait();
    } catch (...) {
    }
  }
}

double DataParallelOptimizer::grad_sum_of_squares(const std::vector<NamedTensor*>& optimized) {
  std::vector<Tensor> counted;
  if (options_.distributed_optimizer) {
    for (size_t i = 0; i < optimized.size(); ++i)
      if (piece_counted_[i]) counted.push_back(optimized[i]->grad);
  } else {
    for (NamedTensor* p : optimized)
      if ((p->shard.sharded() || tp_rank_ == 0) && !excluded_.count(p)) counted.push_back(p->grad);
  }
  double local = counted.empty() ? 0.0 : ops::sum_of_squares(ctx_, counted);
  // Shards of the distributed optimizer are disjoint over dp; tp/pp ranks hold different tensors.
  if (options_.distributed_optimizer && dp_.size() > 1) local = dp_.all_reduce_value(local);
  if (model_parallel_ != nullptr && model_parallel_->size() > 1) local = model_parallel_->all_reduce_value(local);
  return local;
}

void DataParallelOptimizer::zero_grads(bool clear_values) { buckets_->zero(clear_values); }

void DataParallelOptimizer::grad_ready(const NamedTensor& p) {
  if (!options_.overlap_grad_reduce) return;
  const auto it = layout_index_.find(&p);
  PRIMUS_CHECK(it != layout_index_.end(), "DataParallelOptimizer: '{}' is not one of the optimized parameters",
               p.name);
  buckets_->mark_ready(it->second);
}

void DataParallelOptimizer::reduce_grads() { buckets_->finish(); }

AdamW::StepInfo DataParallelOptimizer::step(double lr, double weight_decay, float grad_scale) {
  finish_param_gather();  // the masters' weights are about to change
  const AdamW::StepInfo info = adam_->step(lr, weight_decay, grad_scale);
  if (!options_.distributed_optimizer || info.skipped) return info;
  if (!options_.overlap_param_gather) {
    shards_->all_gather_params(dp_, param_flat_);
    return info;
  }
  // Buckets hold the parameters in backward order, so the forward needs the last one first:
  // start them in reverse; collectives on one group complete in the order they were started.
  const int n = num_buckets();
  param_gathers_.clear();
  param_gathers_.resize(static_cast<size_t>(n));
  for (int b = n - 1; b >= 0; --b) param_gathers_[static_cast<size_t>(b)] = shards_->all_gather_bucket_async(dp_, param_flat_, b);
  waited_in_forward_ = 0;
  return info;
}

void DataParallelOptimizer::param_needed(const NamedTensor& p) {
  if (param_gathers_.empty()) return;
  const auto it = layout_index_.find(&p);
  PRIMUS_CHECK(it != layout_index_.end(), "DataParallelOptimizer: '{}' is not one of the optimized parameters",
               p.name);
  parallel::CommHandle& h = param_gathers_[static_cast<size_t>(bucket_of_param_[it->second])];
  if (!h) return;
  h->wait();
  h.reset();
  ++waited_in_forward_;
}

void DataParallelOptimizer::finish_param_gather() {
  for (parallel::CommHandle& h : param_gathers_)
    if (h) {
      h->wait();
      h.reset();
    }
  param_gathers_.clear();
}

int64_t DataParallelOptimizer::count_zero_grads() {
  const int64_t local = adam_->count_zero_grads();
  if (!options_.distributed_optimizer || dp_.size() == 1) return local;
  return static_cast<int64_t>(std::llround(dp_.all_reduce_value(static_cast<double>(local))));
}

void DataParallelOptimizer::reset_masters_from_params() {
  finish_param_gather();
  adam_->reset_masters_from_params();
}

int64_t DataParallelOptimizer::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& [name, t] : adam_->state_tensors()) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

NamedTensorList DataParallelOptimizer::state_tensors() {
  finish_param_gather();
  if (!options_.distributed_optimizer) return adam_->state_tensors();
  // Reassemble each parameter's state from the dp ranks' pieces, one bucket at a time (a
  // transient buffer of one bucket, not of the whole model): every rank writes its pieces
  // into its shard of the bucket, an in-place all-gather completes it.
  const NamedTensorList mine = adam_->state_tensors();
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, t] : mine) by_name[name] = t;
  std::vector<std::string> kinds(std::begin(kMoments), std::end(kMoments));
  if (!pieces_.empty() && by_name.count(pieces_.front()->name + ".master")) kinds.emplace_back("master");
  // Every rank must agree on the kinds even when it owns no pieces.
  const bool has_master = dp_.all_reduce_value(kinds.size() > 2 ? 1.0 : 0.0, parallel::ReduceOp::Max) > 0;
  if (has_master && kinds.size() == 2) kinds.emplace_back("master");

  const parallel::FlatLayout& layout = buckets_->layout();
  const Device dev = buckets_->flat().device();
  NamedTensorList out;
  for (const std::string& kind : kinds) {
    for (int b = 0; b < static_cast<int>(layout.buckets().size()); ++b) {
      const auto& bucket = layout.buckets()[b];
      Tensor buf = Tensor::zeros({bucket.numel()}, DType::F32, dev);
      for (size_t i = 0; i < pieces_.size(); ++i) {
        const auto& piece = shards_->pieces()[i];
        if (layout.params()[piece.param].bucket != b) continue;
        const Tensor& src = by_name.at(pieces_[i]->name + "." + kind);
        buf.rows(piece.flat_offset - bucket.begin, piece.flat_offset - bucket.begin + piece.numel)
            .copy_from(flat_1d(src));
      }
      const int64_t S = layout.shard_numel(b);
      Tensor own = buf.rows(dp_.rank() * S, (dp_.rank() + 1) * S);
      dp_.all_gather(buf, own);
      for (size_t pi : bucket.params) {
        const auto& lp = layout.params()[pi];
        const Tensor part = buf.rows(lp.offset - bucket.begin, lp.offset - bucket.begin + lp.numel);
        out.emplace_back(lp.name + "." + kind, host_copy(part).view(lp.shape));
      }
    }
  }
  out.emplace_back("step", by_name.at("step"));
  // AdamW's order: per parameter exp_avg, exp_avg_sq[, master]; then step.
  std::map<std::string, size_t> rank_of;
  for (size_t i = 0; i < params_.size(); ++i) rank_of[params_[i]->name] = i;
  std::stable_sort(out.begin(), out.end(), [&](const auto& a, const auto& b) {
    auto key = [&](const std::string& n) {
      const size_t dot = n.rfind('.');
      const auto it = dot == std::string::npos ? rank_of.end() : rank_of.find(n.substr(0, dot));
      return it == rank_of.end() ? params_.size() : it->second;
    };
    return key(a.first) < key(b.first);
  });
  return out;
}

void DataParallelOptimizer::load_state_tensors(const NamedTensorList& state) {
  finish_param_gather();
  if (!options_.distributed_optimizer) {
    adam_->load_state_tensors(state);
    return;
  }
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : state) by_name[name] = &t;
  // Per piece: its slice of the parameter's full state, under the piece's name for AdamW's
  // checked loader (which validates names, shapes and dtypes before changing anything).
  const NamedTensorList current = adam_->state_tensors();
  NamedTensorList sliced;
  for (const auto& [name, like] : current) {
    if (name == "step") {
      const auto it = by_name.find("step");
      PRIMUS_CHECK(it != by_name.end(), "optimizer state has no tensor 'step'");
      sliced.emplace_back("step", *it->second);
      continue;
    }
    const size_t dot = name.rfind('.');
    const std::string piece_name = name.substr(0, dot), kind = name.substr(dot + 1);
    size_t i = 0;
    while (i < pieces_.size() && pieces_[i]->name != piece_name) ++i;
    PRIMUS_CHECK(i < pieces_.size(), "DataParallelOptimizer: unknown piece '{}'", piece_name);
    const auto& piece = shards_->pieces()[i];
    const auto& lp = buckets_->layout().params()[piece.param];
    const std::string full_name = lp.name + "." + kind;
    const auto it = by_name.find(full_name);
    PRIMUS_CHECK(it != by_name.end(),
                 "optimizer state has no tensor '{}' (was it saved by a different model or with fp32 params?)",
                 full_name);
    PRIMUS_CHECK(it->second->numel() == lp.numel && it->second->dtype() == DType::F32,
                 "optimizer state tensor '{}' is {}, expected fp32 {}", full_name, it->second->describe(),
                 shape_str(lp.shape));
    sliced.emplace_back(name, flat_1d(*it->second).rows(piece.param_offset, piece.param_offset + piece.numel));
  }
  adam_->load_state_tensors(sliced);
  // The masters were restored on their owners only: every rank needs the new weights.
  shards_->all_gather_params(dp_, param_flat_);
}

}  // namespace primus::train

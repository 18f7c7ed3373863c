#include "train/data_parallel_optimizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "ops/copy_into.h"

namespace primus::train {

namespace {

// Optimizer-state kinds in AdamW's naming; ".master" exists only when params are not fp32.
constexpr const char* kMoments[] = {"exp_avg", "exp_avg_sq"};

Tensor flat_1d(const Tensor& t) { return t.view({t.numel()}); }

Tensor host_copy(const Tensor& t) { return t.device() == Device::CPU ? t.clone() : t.to(Device::CPU); }

}  // namespace

DataParallelOptimizer::DataParallelOptimizer(ops::Context& ctx, std::vector<NamedTensor*> params,
                                             parallel::Communicator& dp, parallel::Communicator* model_parallel,
                                             int tp_rank, const AdamWConfig& adam, const DataParallelOptions& options,
                                             ExpertReduceGroups experts)
    : ctx_(ctx), params_(std::move(params)), model_parallel_(model_parallel), tp_rank_(tp_rank), options_(options) {
  PRIMUS_CHECK(!params_.empty(), "DataParallelOptimizer: no parameters");
  excluded_.insert(options_.excluded_from_norm.begin(), options_.excluded_from_norm.end());
  // One group per (dense | expert-parallel) x gradient dtype (grad_reduce_in_bf16 holds the
  // projections' gradients in bf16, the rest in fp32), created in the parameters' order, which
  // every rank of a group shares: their collectives then match.
  for (NamedTensor* p : params_) {
    const bool expert = p->expert_parallel;
    PRIMUS_CHECK(!expert || (experts.expert_dp != nullptr && experts.ep != nullptr),
                 "DataParallelOptimizer: '{}' is an expert-parallel parameter but no expert groups were given", p->name);
    auto it = std::find_if(groups_.begin(), groups_.end(), [&](const Group& g) {
      return (g.across != nullptr) == expert && g.grad_dtype == p->grad.dtype();
    });
    if (it == groups_.end()) {
      Group g;
      g.dp = expert ? experts.expert_dp : &dp;
      g.across = expert ? experts.ep : nullptr;
      g.grad_dtype = p->grad.dtype();
      groups_.push_back(std::move(g));
      it = groups_.end() - 1;
    }
    it->params.push_back(p);
  }
  PRIMUS_CHECK(std::any_of(groups_.begin(), groups_.end(), [](const Group& g) { return g.across == nullptr; }),
               "DataParallelOptimizer: no dense parameters");
  for (Group& g : groups_) build_group(g);

  if (!options_.distributed_optimizer) {
    entries_ = params_;
    for (NamedTensor* p : params_) {
      entry_group_.push_back(layout_index_.at(p).first);
      entry_counted_.push_back((p->shard.sharded() || tp_rank_ == 0) && !excluded_.count(p));
    }
  } else {
    for (auto& piece : pieces_) entries_.push_back(piece.get());
  }
  adam_ = std::make_unique<AdamW>(ctx_, entries_, adam);
  adam_->set_grad_sum_of_squares(
      [this](ops::Context&, const std::vector<NamedTensor*>& ps) { return grad_sum_of_squares(ps); });
}

void DataParallelOptimizer::build_group(Group& g) {
  const size_t gi = static_cast<size_t>(&g - groups_.data());
  // Buckets in the order backward finishes the gradients (the reverse of the forward order),
  // so that with overlap the first bucket is complete first.
  std::vector<parallel::ParamSpec> specs;
  for (auto it = g.params.rbegin(); it != g.params.rend(); ++it) specs.push_back({(*it)->name, (*it)->value.shape()});
  parallel::GradBucketOptions bo;
  bo.bucket_size_bytes = options_.bucket_size_bytes;
  bo.overlap_grad_reduce = options_.overlap_grad_reduce;
  bo.reduce = options_.distributed_optimizer ? parallel::GradReduce::ReduceScatter : parallel::GradReduce::AllReduce;
  bo.average = false;  // the loss weights already make the gradient that of the global batch's mean loss
  bo.dtype = g.grad_dtype;
  g.buckets = std::make_unique<parallel::GradBuckets>(specs, *g.dp, bo);
  const parallel::FlatLayout& layout = g.buckets->layout();
  for (NamedTensor* p : g.params) {
    const size_t i = layout.index_of(p->name);
    layout_index_[p] = {gi, i};
    Tensor view = g.buckets->grad(i);
    PRIMUS_CHECK(view.device() == p->grad.device(),
                 "DataParallelOptimizer: the data-parallel group '{}' works on {} tensors but '{}' lives on {}",
                 g.dp->name(), device_name(view.device()), p->name, device_name(p->grad.device()));
    view.copy_from(p->grad);
    p->grad = view;
  }
  if (!options_.distributed_optimizer) return;

  // Distributed optimizer: the weights move into a flat buffer of the same layout, and AdamW
  // sees only the pieces of it that this rank owns.
  const DType dtype = g.params.front()->value.dtype();
  g.param_flat = Tensor::zeros({layout.total_numel()}, dtype, g.params.front()->value.device());
  for (NamedTensor* p : g.params) {
    PRIMUS_CHECK(p->value.dtype() == dtype, "DataParallelOptimizer: parameters mix {} and {} ('{}')",
                 dtype_name(dtype), dtype_name(p->value.dtype()), p->name);
    Tensor view = layout.param_view(g.param_flat, layout_index_.at(p).second);
    view.copy_from(p->value);
    p->value = view;
  }
  g.shards = std::make_unique<parallel::DistributedOptimizerShards>(layout, g.dp->rank());
  g.bucket_of_param.assign(layout.params().size(), -1);
  for (size_t b = 0; b < layout.buckets().size(); ++b)
    for (size_t i : layout.buckets()[b].params) g.bucket_of_param[i] = static_cast<int>(b);
  const Tensor grad_flat = g.buckets->flat();
  g.first_piece = pieces_.size();
  for (const auto& piece : g.shards->pieces()) {
    const auto& lp = layout.params()[piece.param];
    const NamedTensor* owner = owner_of(lp.name);
    auto nt = std::make_unique<NamedTensor>();
    nt->name = fmt::format("{}[{}:{}]", lp.name, piece.param_offset, piece.param_offset + piece.numel);
    nt->value = g.shards->piece_view(g.param_flat, piece);
    nt->grad = g.shards->piece_view(grad_flat, piece);
    nt->no_weight_decay = owner->no_weight_decay;
    entry_group_.push_back(gi);
    entry_counted_.push_back((owner->shard.sharded() || tp_rank_ == 0) && !excluded_.count(owner));
    pieces_.push_back(std::move(nt));
  }
  g.num_pieces = pieces_.size() - g.first_piece;
}

const NamedTensor* DataParallelOptimizer::owner_of(const std::string& name) const {
  for (NamedTensor* p : params_)
    if (p->name == name) return p;
  throw Error(fmt::format("DataParallelOptimizer: no parameter '{}'", name));
}

DataParallelOptimizer::~DataParallelOptimizer() {
  // Never leave a collective writing into freed buffers; a failed one was reported where it
  // failed (or the job is being torn down), so its error is not rethrown from a destructor.
  for (Group& g : groups_)
    for (parallel::CommHandle& h : g.param_gathers) {
      if (!h) continue;
      try {
        h->wait();
      } catch (...) {
      }
    }
}

double DataParallelOptimizer::grad_sum_of_squares(const std::vector<NamedTensor*>& optimized) {
  PRIMUS_CHECK(optimized.size() == entry_counted_.size(), "DataParallelOptimizer: {} tensors to norm, {} known",
               optimized.size(), entry_counted_.size());
  std::vector<std::vector<Tensor>> counted(groups_.size());
  for (size_t i = 0; i < optimized.size(); ++i)
    if (entry_counted_[i]) counted[entry_group_[i]].push_back(optimized[i]->grad);
  double total = 0;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const Group& g = groups_[gi];
    double local = counted[gi].empty() ? 0.0 : ops::sum_of_squares(ctx_, counted[gi]);
    // Shards of the distributed optimizer are disjoint over their group; ep ranks hold other experts.
    if (options_.distributed_optimizer && g.dp->size() > 1) local = g.dp->all_reduce_value(local);
    if (g.across != nullptr && g.across->size() > 1) local = g.across->all_reduce_value(local);
    total += local;
  }
  // tp/pp ranks hold different tensors.
  if (model_parallel_ != nullptr && model_parallel_->size() > 1) total = model_parallel_->all_reduce_value(total);
  return total;
}

void DataParallelOptimizer::zero_grads(bool clear_values) {
  for (Group& g : groups_) g.buckets->zero(clear_values);
}

void DataParallelOptimizer::grad_ready(const NamedTensor& p) {
  if (!options_.overlap_grad_reduce) return;
  const auto it = layout_index_.find(&p);
  PRIMUS_CHECK(it != layout_index_.end(), "DataParallelOptimizer: '{}' is not one of the optimized parameters",
               p.name);
  groups_[it->second.first].buckets->mark_ready(it->second.second);
}

void DataParallelOptimizer::reduce_grads() {
  for (Group& g : groups_) g.buckets->finish();
}

int DataParallelOptimizer::buckets_started_early() const {
  int n = 0;
  for (const Group& g : groups_) n += g.buckets->buckets_started_early();
  return n;
}

int DataParallelOptimizer::num_buckets() const {
  int n = 0;
  for (const Group& g : groups_) n += static_cast<int>(g.buckets->layout().buckets().size());
  return n;
}

AdamW::StepInfo DataParallelOptimizer::step(double lr, double weight_decay, float grad_scale) {
  finish_param_gather();  // the masters' weights are about to change
  const AdamW::StepInfo info = adam_->step(lr, weight_decay, grad_scale);
  if (!options_.distributed_optimizer || info.skipped) return info;
  for (Group& g : groups_) {
    if (!options_.overlap_param_gather) {
      g.shards->all_gather_params(*g.dp, g.param_flat);
      continue;
    }
    // Buckets hold the parameters in backward order, so the forward needs the last one first:
    // start them in reverse; collectives on one group complete in the order they were started.
    const int n = static_cast<int>(g.buckets->layout().buckets().size());
    g.param_gathers.clear();
    g.param_gathers.resize(static_cast<size_t>(n));
    for (int b = n - 1; b >= 0; --b)
      g.param_gathers[static_cast<size_t>(b)] = g.shards->all_gather_bucket_async(*g.dp, g.param_flat, b);
  }
  waited_in_forward_ = 0;
  return info;
}

void DataParallelOptimizer::param_needed(const NamedTensor& p) {
  const auto it = layout_index_.find(&p);
  PRIMUS_CHECK(it != layout_index_.end(), "DataParallelOptimizer: '{}' is not one of the optimized parameters",
               p.name);
  Group& g = groups_[it->second.first];
  if (g.param_gathers.empty()) return;
  parallel::CommHandle& h = g.param_gathers[static_cast<size_t>(g.bucket_of_param[it->second.second])];
  if (!h) return;
  h->wait();
  h.reset();
  ++waited_in_forward_;
}

void DataParallelOptimizer::finish_param_gather() {
  for (Group& g : groups_) {
    for (parallel::CommHandle& h : g.param_gathers)
      if (h) {
        h->wait();
        h.reset();
      }
    g.param_gathers.clear();
  }
}

int64_t DataParallelOptimizer::count_zero_grads() {
  // Megatron's count_zeros_fp32, counted like the gradient norm: per group its AdamW entries'
  // zeros (each tensor once over tp, the tied embedding's copy not at all), summed over the
  // group's shards and over the ranks that hold other tensors of its kind, then over tp/pp --
  // the single-rank count at every layout.
  double total = 0;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    std::vector<Tensor> grads;
    for (size_t i = 0; i < entries_.size(); ++i)
      if (entry_group_[i] == gi && entry_counted_[i]) grads.push_back(entries_[i]->grad);
    double n = grads.empty() ? 0.0 : static_cast<double>(ops::count_zeros(ctx_, grads));
    const Group& g = groups_[gi];
    if (options_.distributed_optimizer && g.dp->size() > 1) n = g.dp->all_reduce_value(n);
    if (g.across != nullptr && g.across->size() > 1) n = g.across->all_reduce_value(n);
    total += n;
  }
  if (model_parallel_ != nullptr && model_parallel_->size() > 1) total = model_parallel_->all_reduce_value(total);
  return static_cast<int64_t>(std::llround(total));
}

void DataParallelOptimizer::reset_masters_from_params() {
  finish_param_gather();
  adam_->reset_masters_from_params();
}

int64_t DataParallelOptimizer::state_bytes() const {
  return adam_->state_bytes();
}

NamedTensorList DataParallelOptimizer::state_tensors() {
  finish_param_gather();
  if (!options_.distributed_optimizer) return adam_->state_tensors();
  const NamedTensorList mine = adam_->state_tensors();
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, t] : mine) by_name[name] = t;
  NamedTensorList out;
  for (Group& g : groups_) {
    NamedTensorList part = group_state_tensors(g, by_name);
    for (auto& e : part) out.push_back(std::move(e));
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

// Reassembles each parameter's state of group g from its dp ranks' pieces, one bucket at a time
// (a transient buffer of one bucket, not of the whole model): every rank writes its pieces into
// its shard of the bucket, an in-place all-gather completes it.
NamedTensorList DataParallelOptimizer::group_state_tensors(Group& g, const std::map<std::string, Tensor>& by_name) {
  std::vector<std::string> kinds(std::begin(kMoments), std::end(kMoments));
  if (g.num_pieces > 0 && by_name.count(pieces_[g.first_piece]->name + ".master")) kinds.emplace_back("master");
  // Every rank must agree on the kinds even when it owns no pieces.
  const bool has_master = g.dp->all_reduce_value(kinds.size() > 2 ? 1.0 : 0.0, parallel::ReduceOp::Max) > 0;
  if (has_master && kinds.size() == 2) kinds.emplace_back("master");

  const parallel::FlatLayout& layout = g.buckets->layout();
  const Device dev = g.buckets->flat().device();
  NamedTensorList out;
  for (const std::string& kind : kinds) {
    for (int b = 0; b < static_cast<int>(layout.buckets().size()); ++b) {
      const auto& bucket = layout.buckets()[b];
      Tensor buf = Tensor::zeros({bucket.numel()}, DType::F32, dev);
      for (size_t i = g.first_piece; i < g.first_piece + g.num_pieces; ++i) {
        const auto& piece = g.shards->pieces()[i - g.first_piece];
        if (layout.params()[piece.param].bucket != b) continue;
        const Tensor& src = by_name.at(pieces_[i]->name + "." + kind);
        Tensor dst = buf.rows(piece.flat_offset - bucket.begin, piece.flat_offset - bucket.begin + piece.numel);
        ops::copy_into(ctx_, dst, flat_1d(src));  // bf16 moments (exp_avg_dtype) are saved in fp32
      }
      const int64_t S = layout.shard_numel(b);
      Tensor own = buf.rows(g.dp->rank() * S, (g.dp->rank() + 1) * S);
      g.dp->all_gather(buf, own);
      for (size_t pi : bucket.params) {
        const auto& lp = layout.params()[pi];
        const Tensor part = buf.rows(lp.offset - bucket.begin, lp.offset - bucket.begin + lp.numel);
        out.emplace_back(lp.name + "." + kind, host_copy(part).view(lp.shape));
      }
    }
  }
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
  NamedTensorList sliced;
  for (const std::string& name : adam_->state_names()) {
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
    const Group& g = groups_[entry_group_[i]];
    const auto& piece = g.shards->pieces()[i - g.first_piece];
    const auto& lp = g.buckets->layout().params()[piece.param];
    const std::string full_name = lp.name + "." + kind;
    const auto it = by_name.find(full_name);
    PRIMUS_CHECK(it != by_name.end(),
                 "optimizer state has no tensor '{}' (was it saved by a different model or with fp32 params?)",
                 full_name);
    // Moments may have been saved in bf16 (exp_avg_dtype); AdamW casts them to this run's dtype.
    const bool moment = kind != "master";
    PRIMUS_CHECK(it->second->numel() == lp.numel &&
                     (it->second->dtype() == DType::F32 || (moment && it->second->dtype() == DType::BF16)),
                 "optimizer state tensor '{}' is {}, expected {} {}", full_name, it->second->describe(),
                 moment ? "fp32 or bf16" : "fp32", shape_str(lp.shape));
    sliced.emplace_back(name, flat_1d(*it->second).rows(piece.param_offset, piece.param_offset + piece.numel));
  }
  adam_->load_state_tensors(sliced);
  // The masters were restored on their owners only: every rank needs the new weights.
  for (Group& g : groups_) g.shards->all_gather_params(*g.dp, g.param_flat);
}

}  // namespace primus::train

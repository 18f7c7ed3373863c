#include "pipeline/pipelined_model.h"

#include <fmt/format.h>

#include "core/error.h"
#include "parallel/context_parallel.h"

namespace primus::pipeline {

namespace {
const char* const kEmbeddingName = "embedding.word_embeddings.weight";
}

void PipelinedModel::wait_sends() {
  for (SendBuffer& b : send_buffers_)
    if (b.pending) {
      b.pending->wait();
      b.pending.reset();
    }
}

PipelinedModel::PipelinedModel(const ModelConfig& config, ops::Context& ctx, const DecoderOptions& options,
                               const PipelineOptions& pipeline)
    : ctx_(ctx), lora_dropout_(options.lora.active() ? options.lora.dropout : 0.0), seed_(options.seed),
      cp_(options.context_parallel), v_(pipeline.virtual_stages) {
  if (pipeline.pp != nullptr && pipeline.pp->size() > 1) {
    pp_ = pipeline.pp;
    pp_size_ = pp_->size();
    pp_rank_ = pp_->rank();
    PRIMUS_CHECK(pp_->device() == ctx.device(),
                 "PipelinedModel: the pp group '{}' works on {} tensors but the model runs on {}", pp_->name(),
                 device_name(pp_->device()), device_name(ctx.device()));
  }
  PRIMUS_CHECK(v_ >= 1, "PipelineOptions.virtual_stages = {} must be >= 1", v_);
  PRIMUS_CHECK(v_ == 1 || pp_size_ > 1,
               "PipelineOptions.virtual_stages = {}: virtual pipeline stages (num_layers_per_virtual_pipeline_stage) "
               "need pipeline_model_parallel_size > 1", v_);
  if (pp_size_ == 1) {
    DecoderOptions o = options;
    o.stage = PipelineStage{};
    chunks_.push_back(std::make_unique<DecoderModel>(config, ctx, o));
    return;
  }
  PRIMUS_CHECK(v_ == 1 || !pipeline.split.uneven(),
               "PipelinedModel: an uneven pipeline split (decoder_first/last_pipeline_num_layers) with {} virtual "
               "stages is not supported", v_);
  const int S = pp_size_ * v_;
  for (int c = 0; c < v_; ++c) {
    const int s = parallel::virtual_stage(pp_size_, pp_rank_, c);
    const parallel::LayerRange layers = v_ == 1 ? parallel::pipeline_layer_range(config.num_layers, S, s, pipeline.split)
                                                : parallel::pipeline_layer_range(config.num_layers, S, s);
    DecoderOptions o = options;
    o.stage = PipelineStage{layers.first, layers.count, s == 0, s == S - 1};
    chunks_.push_back(std::make_unique<DecoderModel>(config, ctx, o));
  }
  // Collective, in the same order on every pp rank.
  const char* names[4] = {"_activations", "_activations_wrap", "_gradients", "_gradients_wrap"};
  for (int k = 0; k < 4; ++k) {
    const auto ch = static_cast<parallel::P2pChannel>(k);
    const bool wrap = ch == parallel::P2pChannel::ActivationsWrap || ch == parallel::P2pChannel::GradientsWrap;
    if (!wrap || v_ > 1) p2p_[k] = pp_->split(0, pp_rank_, pp_->name() + names[k]);
  }
  const bool ends = pp_rank_ == 0 || pp_rank_ == pp_size_ - 1;
  std::unique_ptr<parallel::Communicator> emb =
      pp_->split(ends ? 0 : -1, pp_rank_, pp_->name() + "_embedding");
  if (config.last_stage_reads_embedding()) embedding_group_ = std::move(emb);
}

PipelinedModel::~PipelinedModel() { wait_sends(); }

parallel::Communicator& PipelinedModel::channel(parallel::PipelineOp sent_by, int from_rank) {
  parallel::Communicator* c = p2p_[static_cast<int>(parallel::p2p_channel(sent_by, pp_size_, from_rank))].get();
  PRIMUS_CHECK(c != nullptr, "PipelinedModel: no communicator for a wrap-around message without interleaving");
  return *c;
}

std::vector<NamedTensor*> PipelinedModel::parameters() {
  std::vector<NamedTensor*> out;
  for (auto& c : chunks_)
    for (NamedTensor* p : c->parameters()) out.push_back(p);
  return out;
}

std::vector<NamedTensor*> PipelinedModel::buffers() {
  std::vector<NamedTensor*> out;
  for (auto& c : chunks_)
    for (NamedTensor* b : c->buffers()) out.push_back(b);
  return out;
}

std::vector<MoeMlp*> PipelinedModel::moe_layers() {
  std::vector<MoeMlp*> out;
  for (auto& c : chunks_)
    for (MoeMlp* m : c->moe_layers()) out.push_back(m);
  return out;
}

int64_t PipelinedModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& c : chunks_) n += c->num_parameters();
  return n;
}

void PipelinedModel::zero_grads() {
  for (auto& c : chunks_) c->zero_grads();
}

void PipelinedModel::zero_grads_for_overwrite() {
  if (pp_size_ > 1 || chunks_.size() != 1) return zero_grads();
  chunks_.front()->zero_grads_for_overwrite();
}

void PipelinedModel::reduce_sequence_parallel_grads() {
  for (auto& c : chunks_) c->reduce_sequence_parallel_grads();
}

std::vector<NamedTensor*> PipelinedModel::tied_embedding_copies() {
  std::vector<NamedTensor*> out;
  // Under LoRA both copies are frozen: nothing to keep in step.
  if (embedding_group_ == nullptr || pp_rank_ != pp_size_ - 1 || chunks_.back()->options().lora.active()) return out;
  out.push_back(&chunks_.back()->parameter(kEmbeddingName));
  return out;
}

void PipelinedModel::finish_grads() {
  if (embedding_group_ == nullptr || chunks_.front()->options().lora.active()) return;
  DecoderModel& holder = pp_rank_ == 0 ? *chunks_.front() : *chunks_.back();
  embedding_group_->all_reduce(holder.parameter(kEmbeddingName).grad, parallel::ReduceOp::Sum);
}

size_t PipelinedModel::activation_bytes_high_water() const {
  size_t n = 0;
  for (const auto& c : chunks_) n += c->activation_bytes_high_water();
  for (const auto& s : states_) n += s->activation_bytes_high_water();
  for (const auto& b : send_buffers_) n += b.data.nbytes();
  return n;
}

DecoderModel::StageState* PipelinedModel::acquire_state() {
  if (!free_states_.empty()) {
    DecoderModel::StageState* st = free_states_.back();
    free_states_.pop_back();
    return st;
  }
  states_.push_back(std::make_unique<DecoderModel::StageState>(ctx_.device()));
  return states_.back().get();
}

// Never waits for an earlier send (see the header): takes a buffer whose send completed,
// else makes a new one. Their number is bounded by the messages not yet received.
void PipelinedModel::send(parallel::Communicator& comm, const Tensor& t, int peer) {
  SendBuffer* buf = nullptr;
  for (SendBuffer& b : send_buffers_) {
    if (b.pending && !b.pending->test()) continue;
    b.pending.reset();
    if (b.data.shape() == t.shape() && b.data.dtype() == t.dtype()) {
      buf = &b;
      break;
    }
  }
  if (buf == nullptr) {
    send_buffers_.push_back({Tensor::empty(t.shape(), t.dtype(), ctx_.device()), nullptr});
    buf = &send_buffers_.back();
  }
  ops::copy_cast(ctx_, buf->data, t);
  buf->pending = comm.send_async(buf->data, peer);
}

Tensor& PipelinedModel::recv_buffer(Tensor& buf, const Shape& shape) {
  const DType dt = chunks_.front()->options().param_dtype;
  if (!buf.defined() || buf.shape() != shape) buf = Tensor::empty(shape, dt, ctx_.device());
  return buf;
}

std::vector<data::Batch> PipelinedModel::context_parallel_share(const std::vector<data::Batch>& micro_batches) const {
  std::vector<data::Batch> out = micro_batches;
  for (data::Batch& b : out) {  // packed rows (positions / segments) are refused by DecoderModel under cp
    b.tokens = parallel::context_parallel_columns(b.tokens, cp_.rank(), cp_.size());
    b.labels = parallel::context_parallel_columns(b.labels, cp_.rank(), cp_.size());
    b.loss_mask = parallel::context_parallel_columns(b.loss_mask, cp_.rank(), cp_.size());
  }
  return out;
}

namespace {
MicroBatchExtras extras_of(const data::Batch& b, const LossWeightsHook* loss_weights = nullptr,
                           bool keep_token_losses = false, const parallel::LoraDropout* dropout = nullptr) {
  MicroBatchExtras e;
  e.lora_dropout = dropout;
  if (b.positions.defined()) {
    e.positions = &b.positions;
    e.segments = &b.segments;
  }
  e.loss_weights = loss_weights;
  e.keep_token_losses = keep_token_losses;
  return e;
}
}  // namespace

std::vector<parallel::LoraDropout> PipelinedModel::lora_dropouts(const std::vector<data::Batch>& micro_batches,
                                                                  int64_t step) const {
  std::vector<parallel::LoraDropout> out;
  if (lora_dropout_ <= 0.0) return out;
  for (const data::Batch& b : micro_batches) {
    PRIMUS_CHECK(!b.samples.empty(), "LoRA dropout: a micro-batch without dataset sample ids (data::Batch::samples) "
                 "cannot key its dropout masks");
    out.push_back({lora_dropout_, seed_, parallel::lora_dropout_row_keys(step, b.samples, b.tokens.size(0))});
  }
  return out;
}

DecoderModel::StepResult PipelinedModel::forward_backward(const std::vector<data::Batch>& whole_rows,
                                                          float loss_weight, float aux_loss_weight,
                                                          const std::vector<LossWeightsHook>* loss_weights,
                                                          int64_t step) {
  const std::vector<data::Batch> micro_batches = cp_.active() ? context_parallel_share(whole_rows) : whole_rows;
  PRIMUS_CHECK(loss_weights == nullptr || loss_weights->size() == micro_batches.size(),
               "PipelinedModel: {} loss-weight hooks for {} micro-batches", loss_weights ? loss_weights->size() : 0,
               micro_batches.size());
  const std::vector<parallel::LoraDropout> dropout = lora_dropouts(micro_batches, step);
  // Every micro-batch's masks must have reached the layers (a model that drops nothing would
  // train without the dropout it was asked for).
  auto check_applied = [&] {
    for (const parallel::LoraDropout& d : dropout)
      PRIMUS_CHECK(d.applied, "lora_dropout = {}: the model's layers were not handed the dropout masks "
                   "(DecoderModel::stage_forward must pass MicroBatchExtras::lora_dropout on to LayerEnv)", d.p);
  };
  if (pp_size_ == 1) {
    DecoderModel::StepResult sum;
    for (size_t m = 0; m < micro_batches.size(); ++m) {
      const data::Batch& b = micro_batches[m];
      sum += chunks_[0]->forward_backward(b.tokens, b.labels, b.loss_mask, loss_weight, aux_loss_weight,
                                          extras_of(b, loss_weights ? &(*loss_weights)[m] : nullptr, false,
                                                    dropout.empty() ? nullptr : &dropout[m]));
    }
    check_applied();
    return sum;
  }
  DecoderModel::StepResult sum = run(micro_batches, true, loss_weight, aux_loss_weight,
                                     dropout.empty() ? nullptr : &dropout, loss_weights);
  check_applied();
  return sum;
}

DecoderModel::StepResult PipelinedModel::forward_only(const std::vector<data::Batch>& whole_rows,
                                                      bool keep_token_losses) {
  const std::vector<data::Batch> micro_batches = cp_.active() ? context_parallel_share(whole_rows) : whole_rows;
  if (pp_size_ == 1) {
    DecoderModel::StepResult sum;
    for (const data::Batch& b : micro_batches) {
      sum += chunks_[0]->forward_only(b.tokens, b.labels, b.loss_mask, extras_of(b, nullptr, keep_token_losses));
    }
    return sum;
  }
  PRIMUS_CHECK(!keep_token_losses, "PipelinedModel: per-token losses of a forward pass are kept without pipeline "
               "parallelism so far (pipeline_model_parallel_size 1)");
  return run(micro_batches, false, 0.f, 0.f);
}

DecoderModel::StepResult PipelinedModel::run(const std::vector<data::Batch>& mbs, bool train, float loss_weight,
                                             float aux_loss_weight, const std::vector<parallel::LoraDropout>* dropout,
                                             const std::vector<LossWeightsHook>* loss_weights) {
  const int P = pp_size_, r = pp_rank_, S = P * v_;
  const int M = static_cast<int>(mbs.size());
  PRIMUS_CHECK(M >= 1, "PipelinedModel: no micro-batches to run");
  const std::vector<parallel::PipelineAction> actions =
      train ? parallel::pipeline_schedule(P, r, M, v_) : parallel::forward_only_schedule(P, r, M, v_);
  // Every state is free at the start of a step (also after a step that threw half-way).
  free_states_.clear();
  for (auto& st : states_) free_states_.push_back(st.get());
  // (micro-batch, chunk) -> its activations, between forward and backward
  std::map<std::pair<int, int>, DecoderModel::StageState*> live;
  DecoderModel::StepResult sum;
  std::vector<std::vector<double>> row_sums(static_cast<size_t>(M));  // per micro-batch, on the last stage
  for (const parallel::PipelineAction& a : actions) {
    const int s = parallel::virtual_stage(P, r, a.chunk);
    const int prev = parallel::rank_of_virtual_stage(P, (s + S - 1) % S);
    const int next = parallel::rank_of_virtual_stage(P, (s + 1) % S);
    DecoderModel& model = *chunks_[static_cast<size_t>(a.chunk)];
    const data::Batch& b = mbs[static_cast<size_t>(a.micro_batch)];
    const Shape hidden = model.stage_hidden_shape(b.tokens);
    if (a.op == parallel::PipelineOp::Forward) {
      DecoderModel::StageState* state = acquire_state();
      Tensor* input = nullptr;
      if (s > 0) {
        input = &recv_buffer(recv_activation_, hidden);
        channel(parallel::PipelineOp::Forward, prev).recv(*input, prev);
      }
      const auto mb = static_cast<size_t>(a.micro_batch);
      // A non-linear objective's hook runs where the loss is: on the last stage.
      const LossWeightsHook* hook = loss_weights != nullptr && s == S - 1 ? &(*loss_weights)[mb] : nullptr;
      const Tensor out =
          model.stage_forward(*state, b.tokens, &b.labels, &b.loss_mask, input, loss_weight, train, aux_loss_weight,
                              extras_of(b, hook, false, dropout != nullptr ? &(*dropout)[mb] : nullptr));
      if (s == S - 1) {
        DecoderModel::StepResult losses;  // the loss sums; the row sums go in micro-batch order below
        losses.loss_sum = state->result().loss_sum;
        losses.num_tokens = state->result().num_tokens;
        losses.mtp_loss_sums = state->result().mtp_loss_sums;
        losses.mtp_num_tokens = state->result().mtp_num_tokens;
        sum += losses;
        row_sums[mb] = state->result().row_loss_sums;
      } else {
        send(channel(parallel::PipelineOp::Forward, r), out, next);
      }
      if (train)
        live[{a.micro_batch, a.chunk}] = state;
      else
        free_states_.push_back(state);
    } else {
      auto it = live.find({a.micro_batch, a.chunk});
      PRIMUS_CHECK(it != live.end(), "PipelinedModel: schedule runs backward {} before its forward",
                   parallel::to_string(a));
      DecoderModel::StageState* state = it->second;
      live.erase(it);
      Tensor* d_output = nullptr;
      if (s < S - 1) {
        d_output = &recv_buffer(recv_gradient_, hidden);
        channel(parallel::PipelineOp::Backward, next).recv(*d_output, next);
      }
      const Tensor d_input = model.stage_backward(*state, d_output);
      if (s > 0) send(channel(parallel::PipelineOp::Backward, r), d_input, prev);
      free_states_.push_back(state);
    }
  }
  wait_sends();
  // The losses live on the last stage; every pp rank reports them, in one all-reduce:
  // [loss sum, tokens, each MTP depth's loss sum and tokens, every micro-batch's row sums].
  const bool last = r == P - 1;
  const auto D = static_cast<size_t>(chunks_.front()->config().mtp_num_layers);
  size_t rows = 0;
  for (const data::Batch& b : mbs) rows += static_cast<size_t>(b.tokens.size(0));
  std::vector<double> v(2 + 2 * D + rows, 0.0);
  if (last) {
    v[0] = sum.loss_sum;
    v[1] = sum.num_tokens;
    for (size_t k = 0; k < D; ++k) {
      v[2 + k] = sum.mtp_loss_sums.at(k);
      v[2 + D + k] = sum.mtp_num_tokens.at(k);
    }
    size_t at = 2 + 2 * D;
    for (size_t m = 0; m < row_sums.size(); ++m) {
      PRIMUS_CHECK(row_sums[m].size() == static_cast<size_t>(mbs[m].tokens.size(0)),
                   "PipelinedModel: micro-batch {} reported {} row sums for {} rows", m, row_sums[m].size(),
                   mbs[m].tokens.size(0));
      std::copy(row_sums[m].begin(), row_sums[m].end(), v.begin() + static_cast<std::ptrdiff_t>(at));
      at += row_sums[m].size();
    }
  }
  v = pp_->all_reduce_values(std::move(v));
  sum.loss_sum = v[0];
  sum.num_tokens = v[1];
  const auto it = [&](size_t i) { return v.begin() + static_cast<std::ptrdiff_t>(i); };
  if (D > 0) {
    sum.mtp_loss_sums.assign(it(2), it(2 + D));
    sum.mtp_num_tokens.assign(it(2 + D), it(2 + 2 * D));
  }
  sum.row_loss_sums.assign(it(2 + 2 * D), v.end());
  return sum;
}

}  // namespace primus::pipeline

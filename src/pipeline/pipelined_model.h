// PipelinedModel: the one model object the training loop calls, for any pipeline size.
//
// Pipeline parallel (pp > 1) cuts the Llama model into P * v virtual stages of
// num_layers / (P v) consecutive layers each (Megatron's even split; v = virtual_stages,
// the model chunks per rank), or, with v = 1, Megatron's uneven split: the first and/or last
// stage hold decoder_first/last_pipeline_num_layers and the others share the rest. Virtual stage s = c * P + r is model chunk c on pipeline rank
// r, a DecoderModel built with DecoderOptions::stage = its layers (+ the embedding on s = 0,
// final norm + output layer + loss on s = P v - 1). Parameters keep their global names.
//
// forward_backward runs all micro-batches of one optimizer step by the schedule of
// parallel/pipeline_schedule.h (1F1B, or interleaved 1F1B when v > 1): each forward
// receives its input hidden (R,C) from the previous virtual stage's rank, each backward its
// output gradient from the next one; results are copied into a send buffer and sent
// asynchronously: the engine never waits for a send (a send completes only when the peer
// posts its receive, and the peer may be waiting for this rank's next message), and a
// micro-batch's activations are free for the next one as soon as its backward ran.
// Activations and gradients travel on communicators split from the pp group, one per
// parallel::P2pChannel (neighbour and wrap-around traffic apart), so that on each the
// messages between two ranks are received in the order they were sent (communicators carry
// no tags) and NCCL's one stream per communicator cannot deadlock the interleaved schedule
// (see pipeline_schedule.h). Every pp rank passes the SAME list of micro-batches (the first stage reads the
// tokens, the last the labels and mask; every stage their shape).
//
// Memory: 1F1B keeps at most P - r micro-batches' activations alive on rank r (the
// interleaved schedule up to (P - r - 1) * 2 + (v - 1) * P + 1 chunk-micro-batches), each in
// its own arena that is reused for later micro-batches; plus one (R,C) send buffer per
// message that its receiver has not taken yet.
//
// Tied embeddings (untie_embeddings_and_output_weights false) or multi-token prediction
// (mtp_num_layers > 0, whose depths embed shifted tokens on the last stage) with pp > 1:
// the last stage holds a copy of embedding.word_embeddings.weight (same name, same init);
// finish_grads()
// sums the two copies' grads over the first and last pp rank (Megatron's embedding group),
// so the optimizer moves both identically. tied_embedding_copies() lists the copy: leave
// it out of the global grad norm and of checkpoints (gather_named_tensors_to_root drops it).
//
// pp == 1 (PipelineOptions::pp null or of size 1) is exactly the plain loop
//   for each micro-batch: DecoderModel::forward_backward(tokens, labels, loss_mask, loss_weight)
// on one whole model, bit for bit.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "data/data_config.h"
#include "model/decoder.h"
#include "parallel/communicator.h"
#include "parallel/context_parallel.h"
#include "parallel/pipeline_schedule.h"

namespace primus::pipeline {

struct PipelineOptions {
  parallel::Communicator* pp = nullptr;  // the pp group (ProcessGroups::pp()); null or size 1: no pipeline
  int virtual_stages = 1;                // model chunks per pp rank (interleaved schedule when > 1)
  parallel::UnevenSplit split;           // decoder_first/last_pipeline_num_layers (virtual_stages 1 only)
};

class PipelinedModel {
 public:
  // Collective over the pp group (splits the p2p communicators and the embedding group from
  // it). Throws naming num_layers when it does not split over pp * virtual_stages stages.
  // `options.stage` is set here per chunk; everything else (tensor parallel, recompute,
  // grad_ready, ...) applies to every chunk. `ctx` and the pp group must outlive the model.
  PipelinedModel(const ModelConfig& config, ops::Context& ctx, const DecoderOptions& options,
                 const PipelineOptions& pipeline);
  ~PipelinedModel();

  // This rank's parameters over its chunks, chunk 0 first, each in forward order, with
  // global names.
  std::vector<NamedTensor*> parameters();
  // This rank's buffers (DecoderModel::buffers) and MoE blocks, chunk 0 first.
  std::vector<NamedTensor*> buffers();
  std::vector<MoeMlp*> moe_layers();
  int64_t num_parameters() const;
  void zero_grads();
  // pp 1: DecoderModel::zero_grads_for_overwrite (the first micro-batch writes the linear
  // weights' grads instead of adding to zeroed ones); pp > 1: zero_grads().
  void zero_grads_for_overwrite();

  // One optimizer step's forward + backward over all micro-batches (the same list on every
  // pp rank), by the schedule. Grads accumulate as DecoderModel::forward_backward's do.
  // Returns the sums over the micro-batches, the same on EVERY pp rank (the last stage's
  // loss is all-reduced over pp).
  // Packed batches (data::Batch positions / segments) keep attention inside documents. With
  // loss_weights (one per micro-batch: DPO, GRPO), the gradient weighs each token's loss by the
  // hook's answer (DecoderModel::MicroBatchExtras); with pp > 1 the hooks run on the last stage
  // only. row_loss_sums of the result list every micro-batch's rows in order, on every pp rank
  // (with pp > 1 they come from the last stage with the loss).
  // Context parallel (DecoderOptions::context_parallel active): the micro-batches are the WHOLE
  // rows, the same on every cp rank; each cp rank runs its columns (context_parallel_columns).
  // loss_sum / num_tokens are then this rank's columns' share (summed over dp x cp by the
  // caller); row_loss_sums, the hooks' token losses and kept token losses are whole rows'
  // (DecoderModel gathers them over cp), the same on every cp rank.
  // step: the optimizer step (iteration) these micro-batches train, the same on every rank: with
  // LoRA dropout (DecoderOptions::lora.dropout > 0) it keys the masks with the batches'
  // samples (parallel/lora.h lora_dropout_row_keys), so they do not depend on the split.
  DecoderModel::StepResult forward_backward(const std::vector<data::Batch>& micro_batches, float loss_weight,
                                            float aux_loss_weight = 0.f,
                                            const std::vector<LossWeightsHook>* loss_weights = nullptr,
                                            int64_t step = 0);
  // keep_token_losses (pp 1): StepResult::token_losses of every micro-batch, in order.
  DecoderModel::StepResult forward_only(const std::vector<data::Batch>& micro_batches, bool keep_token_losses = false);

  // Sequence parallel: all-reduce the norm weights' partial grads over tp, every chunk.
  void reduce_sequence_parallel_grads();
  // Tied embeddings with pp > 1: grad of embedding.word_embeddings.weight summed between
  // the first and the last pp rank. No-op otherwise. Once per step, after the last backward.
  void finish_grads();
  // Parameters that duplicate one held by another pp rank (the last stage's tied embedding
  // copy); empty otherwise.
  std::vector<NamedTensor*> tied_embedding_copies();

  // Activation memory: the high-water marks of every micro-batch state's arena, summed
  // (they are alive together), plus the chunks' own.
  size_t activation_bytes_high_water() const;
  const std::vector<std::unique_ptr<DecoderModel>>& chunks() { return chunks_; }
  // Micro-batch states (activation arenas) created so far = the most micro-batch chunks
  // alive at once in any step; send buffers created so far.
  size_t num_stage_states() const { return states_.size(); }
  size_t num_send_buffers() const { return send_buffers_.size(); }

  int pp_size() const { return pp_size_; }
  int pp_rank() const { return pp_rank_; }
  int virtual_stages() const { return v_; }
  bool holds_first_stage() const { return pp_rank_ == 0; }
  bool holds_last_stage() const { return pp_rank_ == pp_size_ - 1; }

 private:
  DecoderModel::StageState* acquire_state();
  // Copies `t` into a send buffer whose previous send completed (or a new one) and sends it.
  void send(parallel::Communicator& comm, const Tensor& t, int peer);
  void wait_sends();
  // Context parallel: the micro-batches with only this cp rank's columns of tokens, labels and
  // loss_mask (parallel::context_parallel_columns); packed rows are refused by DecoderModel.
  std::vector<data::Batch> context_parallel_share(const std::vector<data::Batch>& micro_batches) const;
  DecoderModel::StepResult run(const std::vector<data::Batch>& micro_batches, bool train, float loss_weight,
                               float aux_loss_weight, const std::vector<parallel::LoraDropout>* dropout = nullptr,
                               const std::vector<LossWeightsHook>* loss_weights = nullptr);
  // The LoRA dropout of each micro-batch of a training step (empty when lora_dropout is 0).
  std::vector<parallel::LoraDropout> lora_dropouts(const std::vector<data::Batch>& micro_batches, int64_t step) const;
  Tensor& recv_buffer(Tensor& buf, const Shape& shape);

  ops::Context& ctx_;
  double lora_dropout_ = 0;  // DecoderOptions::lora.dropout
  uint64_t seed_ = 0;        // DecoderOptions::seed (keys the dropout masks)
  parallel::ContextParallel cp_;  // DecoderOptions::context_parallel
  int pp_size_ = 1, pp_rank_ = 0, v_ = 1;
  parallel::Communicator* pp_ = nullptr;
  std::unique_ptr<parallel::Communicator> p2p_[4];  // by parallel::P2pChannel (wrap ones only when v > 1)
  std::unique_ptr<parallel::Communicator> embedding_group_;
  parallel::Communicator& channel(parallel::PipelineOp sent_by, int from_rank);
  std::vector<std::unique_ptr<DecoderModel>> chunks_;
  std::vector<std::unique_ptr<DecoderModel::StageState>> states_;
  std::vector<DecoderModel::StageState*> free_states_;
  struct SendBuffer {
    Tensor data;
    parallel::CommHandle pending;  // null once completed
  };
  std::vector<SendBuffer> send_buffers_;
  Tensor recv_activation_, recv_gradient_;
};

}  // namespace primus::pipeline

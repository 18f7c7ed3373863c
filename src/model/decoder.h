// DecoderModel: the decoder of every model in the zoo (Llama 2/3/3.1, Mixtral, ...), with
// explicit backward, built from decoder_spec's parameter table and layer parts.
//
//   tokens (B,T) -> embedding -> layers (attention block + MLP block each) -> RMSNorm
//   -> output layer -> logits (B,T,V) -> cross-entropy against labels, weighted by loss_mask
//   [-> multi-token prediction depths (model/mtp.h) on the last layer's output, their losses
//   added with mtp_loss_scaling_factor / mtp_num_layers].
//
// Parameters carry Megatron-core names (decoder_spec.h); init follows Megatron: every weight
// N(0, init_method_std), the residual output projections N(0, init_method_std / sqrt(2
// num_layers)), norms 1. Each tensor draws from CounterRng(seed, stream_id(name)) at the
// index of each element in the FULL tensor, so init does not depend on sharding or order.
//
// All math goes through ops/ops.h, so the same model runs on the CPU backend (fp32) and
// the CUDA backend (bf16 params and activations, fp32 grads; the fp32 master weights
// belong to the optimizer). Activations live in an arena reset at each micro-batch.
//
// Tensor / sequence parallel: set DecoderOptions::tensor_parallel = {&groups.tp(),
// sequence_parallel} (parallel/tensor_parallel.h explains the layout and the per-step
// calls). Every tp rank then holds its shard of each parameter under the parameter's full
// name (NamedTensor::shard says which), initialised to exactly its slice of the
// single-rank init, and forward_backward on the same micro-batch gives every tp rank the
// loss of the whole model. The communication lives in parallel/layers.h; the model code
// has none. Leaving it unset is the single-rank model, unchanged.
//
// Pipeline parallel: DecoderOptions::stage makes the model hold only a slice of the layers
// (and the embedding on the first stage, final norm + output layer + loss on the last).
// Parameters keep their GLOBAL names (decoder.layers.{global index}...), so init and
// checkpoints do not depend on the layout. stage_forward / stage_backward run one
// micro-batch through the slice with the activations in a caller-owned StageState, so that
// several micro-batches can be in flight at once (train/pipelined_model.h drives them by a
// schedule). With tied embeddings the last stage holds its own copy of
// embedding.word_embeddings.weight, initialised identically; the pipeline engine sums the
// two copies' grads (Megatron's embedding group), so they stay equal.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/arena.h"
#include "model/decoder_layer.h"
#include "model/decoder_spec.h"
#include "model/fp8_training.h"
#include "model/rotary.h"
#include "model/mlp_moe.h"
#include "model/mtp.h"
#include "model/model_config.h"
#include "parallel/named_tensor.h"
#include "ops/ops.h"
#include "parallel/context_parallel.h"
#include "parallel/tensor_parallel.h"

namespace primus {

// "none"/""/"null" -> None, "selective", "full"; anything else throws naming the choices.
Recompute parse_recompute_granularity(std::string_view value);

// The slice of the model one pipeline stage (one model chunk) holds. The default is the
// whole model.
struct PipelineStage {
  int64_t first_layer = 0;   // global index of the first decoder layer held
  int64_t num_layers = -1;   // layers held; -1: every layer from first_layer on
  bool pre_process = true;   // holds the embedding (the first virtual stage)
  bool post_process = true;  // holds final norm, output layer and computes the loss (the last)
};

struct DecoderOptions {
  DType param_dtype = DType::F32;  // fp32 on CPU; bf16 on CUDA
  // The gradients of the projections (ParamRole Linear and RoutedExperts: what the GEMMs'
  // weight-gradient pass writes) are held in this dtype; every other gradient (embeddings,
  // norms, router, output layer) stays fp32. bf16 is Megatron's grad_reduce_in_bf16: half the
  // memory and traffic of those gradients, each rounded to bf16 once per micro-batch (as
  // PyTorch autocast's bf16 weight gradients are).
  DType linear_grad_dtype = DType::F32;
  uint64_t seed = 1234;
  Recompute recompute = Recompute::None;
  // With Recompute::Full: recompute only the first N layers (Megatron's `block` method);
  // 0 recomputes every layer.
  int64_t recompute_num_layers = 0;
  // Rows of logits (x vocabulary) materialised at once in the classifier.
  int64_t logits_chunk_rows = 1024;
  // The classifier's loss and logits gradient in one pass over each chunk of logits (llm.c's
  // fused classifier; Megatron's cross_entropy_loss_fusion); false: the plain path, a loss
  // pass and then a gradient pass.
  bool fused_cross_entropy = true;
  // Tensor parallel group and sequence parallel (default: one rank). The group must live
  // on the context's device and outlive the model.
  parallel::TensorParallel tensor_parallel{};
  // Expert parallel group (default: one rank): ep rank r holds routed experts
  // [r E/P, (r+1) E/P) of every MoE layer (parallel/expert_parallel.h). Must live on the
  // context's device and outlive the model.
  parallel::ExpertParallel expert_parallel{};
  // Context parallel group (default: one rank; parallel/context_parallel.h): each micro-batch
  // passed in holds this cp rank's two chunks of every row (context_parallel_columns of tokens,
  // labels and loss_mask); RoPE uses their real positions and attention runs as a ring over the
  // group. Loss sums and parameter grads are this rank's share (the caller sums them over cp).
  // Must live on the context's device and outlive the model. GQA attention, dense MLPs, no MTP,
  // no packed rows (refused by name otherwise).
  parallel::ContextParallel context_parallel{};
  // Pipeline parallel: which layers (and ends) this model holds. Default: all of it.
  PipelineStage stage{};
  // LoRA (decoder_spec.h LoraSpec, parallel/lora.h): adapters on the targeted linears are the
  // only parameters(); every other tensor is frozen (held in buffers(), in param_dtype, with
  // no grad and no optimizer state).
  LoraSpec lora{};
  // Called once per parameter and backward, as soon as that parameter's gradient
  // contribution of the current micro-batch is complete (each layer's parameters after
  // the layer's backward; final norm, output layer (and a last stage's tied embedding
  // copy) right after the classifier's backward; the embedding at the end). Empty: not
  // called. For overlapping the data-parallel gradient reduction with backward.
  std::function<void(NamedTensor&)> grad_ready;
  // Called before the forward first reads a parameter's value: the embedding, each layer's
  // parameters as the layer starts, the final norm and output layer before the classifier.
  // Empty: not called. For overlapping the distributed optimizer's parameter all-gather with
  // the forward (overlap_param_gather).
  std::function<void(const NamedTensor&)> param_needed;
  // FP8 training (ops/fp8.h, model/fp8_training.h): the layers' projections run their GEMMs in
  // FP8 with these options; unset: bf16 (fp32 on the CPU). Not with LoRA.
  std::optional<ops::Fp8Options> fp8;
};

// A non-linear objective of the token log-probabilities (DPO's sequence sums, GRPO's clipped
// ratios): given the micro-batch's token losses (B*T, row-major: loss_mask * cross-entropy, i.e.
// -mask * log p(label)), the gradient weight of each token's loss (d objective / d token loss,
// with the caller's normalisation and loss scale; the model multiplies it by the mask). Called on
// the last stage between the classifier's loss and its backward, so the objective need not be
// linear in the token losses.
using LossWeightsHook = std::function<std::vector<float>(const std::vector<float>& token_losses)>;
// A sequence-level objective (DPO) as such a hook: `fn` maps the `rows` rows' summed token losses
// to one weight per row, which every token of that row gets.
using RowLossWeights = std::function<std::vector<float>(const std::vector<double>& row_loss_sums)>;
LossWeightsHook row_loss_weights(int64_t rows, RowLossWeights fn);
// What a micro-batch may carry besides tokens, labels and mask.
struct MicroBatchExtras {
  // Packed rows (data::Batch): positions (B,T) int32 (RoPE position of each token) and
  // segments (B,T) int32 (document ids; attention stays inside one), on the host or device.
  const Tensor* positions = nullptr;
  const Tensor* segments = nullptr;
  // With for_backward: the gradient weights of the tokens (else loss_weight for every token).
  const LossWeightsHook* loss_weights = nullptr;
  // Fill StepResult::token_losses (e.g. a reference model's log-probs of sampled completions).
  bool keep_token_losses = false;
  // LoRA dropout of a training micro-batch (parallel/lora.h; B row keys); null: none. Must live
  // until stage_forward returns (the layers keep a copy for the backward).
  const parallel::LoraDropout* lora_dropout = nullptr;
};

class DecoderModel {
 public:
  // Checks that `config` asks only for parts the decoder builds (check_buildable), creates the
  // parameters of decoder_spec's table this stage and rank hold, and initialises them
  // (init_weights(options.seed)). `ctx` must outlive the model.
  DecoderModel(const ModelConfig& config, ops::Context& ctx, const DecoderOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const DecoderOptions& options() const { return options_; }
  void set_recompute(Recompute mode, int64_t num_layers = 0);

  // parameter_table() order: embedding, then each layer's (e.g. input_layernorm, linear_qkv,
  // linear_proj, pre_mlp_layernorm, linear_fc1, linear_fc2), then final_layernorm,
  // output_layer (untied).
  // Under tensor parallel each value is this rank's shard (see NamedTensor::shard). A
  // pipeline stage lists only what it holds, in the same order (a last stage's copy of the
  // tied embedding comes last, where the output layer would be).
  std::vector<NamedTensor*> parameters();
  NamedTensor& parameter(const std::string& name);  // throws with "did you mean"
  // Tensors of the model that are not trained by the optimizer but saved with it: the MoE
  // expert bias (fp32, updated by its own rule), under LoRA the frozen base model, and under
  // FP8 the linears' scaling states (Fp8Training).
  std::vector<NamedTensor*> buffers();
  // The FP8 state of the linears (null without DecoderOptions::fp8).
  Fp8Training* fp8() { return fp8_.get(); }
  // The MoE blocks of the held layers, in layer order.
  std::vector<MoeMlp*> moe_layers();
  int64_t num_parameters() const;  // elements held by this rank (the whole model at tp 1)

  const parallel::TensorParallel& tensor_parallel() const { return options_.tensor_parallel; }
  // The parameters whose grads hold only this rank's share of a sum over the tp group:
  // under sequence parallel the replicated ones (norm weights: this rank's tokens), and LoRA
  // adapters (parallel/lora.h). reduce_sequence_parallel_grads() all-reduces them over tp:
  // call it once per optimizer step, after the last micro-batch's backward.
  std::vector<NamedTensor*> sequence_parallel_partial_grads();
  void reduce_sequence_parallel_grads();

  void init_weights(uint64_t seed);
  void zero_grads();
  // Zeroes only the grads that backward accumulates into (norms, embedding); the next
  // forward_backward then WRITES the linear weights' grads (beta = 0 GEMMs) instead of adding
  // to zeros: the same values without a memset and a read of every fp32 linear gradient. The
  // micro-batches after the first accumulate as usual. Whole-model use (forward_backward) only.
  void zero_grads_for_overwrite();

  struct StepResult {
    double loss_sum = 0;    // sum over tokens of loss_mask * cross-entropy
    double num_tokens = 0;  // sum of loss_mask
    // Multi-token prediction, per depth (mtp_num_layers entries, else empty): the same sums over
    // that depth's shifted labels (positions past the sequence's end carry no loss).
    std::vector<double> mtp_loss_sums, mtp_num_tokens;
    // Per row of the micro-batch (B): sum over the row's tokens of loss_mask * cross-entropy,
    // i.e. minus the row's masked log-likelihood (DPO's log pi(y|x)); appended by +=.
    std::vector<double> row_loss_sums;
    // With MicroBatchExtras::keep_token_losses: loss_mask * cross-entropy of every token (B*T,
    // row-major); appended by +=.
    // Context parallel: loss_sum, num_tokens and the MTP sums are this cp rank's columns' share;
    // row_loss_sums and token_losses are the WHOLE rows' (B*T*cp tokens, in sequence order),
    // gathered over cp, as are the token losses a LossWeightsHook sees (its weights are for
    // the whole rows too).
    std::vector<float> token_losses;
    StepResult& operator+=(const StepResult& o);
  };



 private:
  struct Batch;  // host-side preparation of one micro-batch

 public:
  // The activations of ONE micro-batch in flight through this stage: its own arena (reset
  // by each stage_forward), the layer inputs and kept activations, and on the last stage
  // d hidden (computed with the loss) and the loss. Owned by the caller; a state may be
  // reused for another micro-batch once its backward ran (or after a forward without
  // backward). Must not outlive the model that filled it.
  class StageState {
   public:
    explicit StageState(Device device);
    ~StageState();
    StageState(const StageState&) = delete;
    StageState& operator=(const StageState&) = delete;
    // The loss of the micro-batch (post_process stages; zeros elsewhere).
    const StepResult& result() const { return result_; }
    size_t activation_bytes_high_water() const { return arena_.high_water_bytes(); }

   private:
    friend class DecoderModel;
    Arena arena_;
    std::unique_ptr<Batch> batch_;
    TokenDims dims_;
    std::vector<Tensor> xs_;                    // layer inputs, then the last layer's output
    std::vector<LayerActivations> acts_;        // per held layer
    Tensor final_rstd_, dhidden_;               // post_process: final norm stats, d normed hidden
    // Multi-token prediction (post_process): per depth its batch (rolled tokens and labels),
    // activations and d normed hidden.
    std::vector<std::unique_ptr<Batch>> mtp_batches_;
    std::vector<MtpModule::Acts> mtp_acts_;
    std::vector<Tensor> mtp_dhidden_;
    StepResult result_;
    float aux_loss_weight_ = 0.f;               // the forward's, for a backward that re-runs it
    Tensor rope_cos_, rope_sin_, segments_;     // packed rows: per-token tables, document ids
    bool backward_pending_ = false;             // forward kept activations for a backward
  };

  const PipelineStage& stage() const { return options_.stage; }
  bool pre_process() const { return options_.stage.pre_process; }
  bool post_process() const { return options_.stage.post_process; }
  // Shape of the hidden state a stage receives / sends for a micro-batch of `tokens` (B,T):
  // (R, C) with R = this rank's residual rows (B*T, or B*T/tp under sequence parallel),
  // dtype options().param_dtype, on the context's device.
  Shape stage_hidden_shape(const Tensor& tokens) const;

  // Forward of one micro-batch through this stage. tokens (B,T) int32 always (its shape
  // sets the dims; the ids are read on pre_process stages); labels and loss_mask on
  // post_process stages (as forward_backward); input_hidden (R,C) on the others (copied).
  // for_backward = false keeps no activations (evaluation). Returns the output hidden (R,C)
  // to send to the next stage, living in state's arena until the state's next
  // stage_forward; on post_process stages returns an empty Tensor and the loss is in
  // state.result() (with for_backward, the output layer's grad is accumulated here and d
  // hidden kept for stage_backward, as forward_backward does).
  // aux_loss_weight: the weight of the MoE layers' auxiliary losses in the objective (loss
  // scale / micro-batches of the global batch; see LayerEnv).
  Tensor stage_forward(StageState& state, const Tensor& tokens, const Tensor* labels, const Tensor* loss_mask,
                       const Tensor* input_hidden, float loss_weight, bool for_backward = true,
                       float aux_loss_weight = 0.f, const MicroBatchExtras& extras = {});
  // Backward of the micro-batch whose forward filled `state`. d_output (R,C): d loss / d
  // output hidden, from the next stage (null on post_process stages). Accumulates grads
  // (calling grad_ready) and returns d loss / d input hidden (R,C) to send to the previous
  // stage, in state's arena; empty on pre_process stages.
  Tensor stage_backward(StageState& state, const Tensor* d_output);

  // Forward + backward of one micro-batch. tokens, labels (B,T) int32; loss_mask (B,T)
  // fp32 (any device; a negative label is ignored like mask 0). Every parameter's grad
  // ACCUMULATES d(loss_weight * sum_i mask_i * loss_i) / d param; e.g. loss_weight =
  // 1 / (loss tokens in the global batch) gives the gradient of the mean loss.
  // aux_loss_weight as stage_forward's (0: the MoE auxiliary losses shape no gradient).
  StepResult forward_backward(const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask,
                              float loss_weight, float aux_loss_weight = 0.f, const MicroBatchExtras& extras = {});
  StepResult forward_only(const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask,
                          const MicroBatchExtras& extras = {});
  // Logits (B,T,V) fp32 on CPU, for tests and generation (the full vocabulary: gathered
  // over tp, a collective then).
  Tensor logits(const Tensor& tokens);

  // Activation memory of the last step (arena high-water mark), for memory reports.
  size_t activation_bytes_high_water() const { return own_->activation_bytes_high_water(); }

 private:
  TokenDims dims_for(int64_t B, int64_t T) const;
  LayerEnv make_env(const TokenDims& d, Arena& arena);
  // Packed rows: per-token RoPE tables (B*T, R/2) gathered at `positions` and the segments on
  // the device, into st (kept for the backward).
  void set_packing(StageState& st, const MicroBatchExtras& extras, const TokenDims& d);
  void use_packing(LayerEnv& env, const StageState& st) const;
  // Recompute mode of the i-th layer this model holds (Megatron's `block` method counts
  // recompute_num_layers per pipeline stage).
  Recompute layer_mode(int64_t layer) const;
  void require_whole_model(const char* what) const;
  // Layer inputs -> final hidden: xs[0] (the embedding output or the received hidden) must
  // be set; runs the held layers into xs[1..] and acts. keep_acts = false keeps nothing for
  // backward (forward_only / logits). Returns the last layer's output (R,C) (R = residual
  // rows: N, or N/tp under sequence parallel).
  void forward_layers(LayerEnv& env, std::vector<Tensor>& xs, std::vector<LayerActivations>& acts, bool keep_acts);
  // Output layer + cross-entropy into losses (N), chunk by chunk; with dhidden (R,C) also
  // their backward (output-layer grad accumulated, dhidden written).
  // may_overwrite: this call may write the output layer's grad (the step's first classifier).
  void classifier(const Batch& batch, const Tensor& hidden, Tensor& losses, Tensor* dhidden, Arena& arena,
                  bool may_overwrite = true);
  // The MTP depths after the main head (stage_forward) and their backward, which returns
  // d loss / d (main last layer output) to add to the trunk's gradient (stage_backward).
  void mtp_forward(StageState& st, LayerEnv& env, const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask,
                   float loss_weight, bool for_backward);
  Tensor mtp_backward(StageState& st, LayerEnv& env);
  NamedTensor& output_weight();
  void grad_ready(NamedTensor* p) const {  // frozen tensors (no grad) have nothing to report
    if (options_.grad_ready && p != nullptr && p->grad.defined()) options_.grad_ready(*p);
  }
  void param_needed(const NamedTensor* p) const {
    if (options_.param_needed && p != nullptr && p->grad.defined()) options_.param_needed(*p);
  }

  ModelConfig config_;
  ops::Context& ctx_;
  DecoderOptions options_;
  std::vector<std::unique_ptr<NamedTensor>> params_;
  std::vector<std::unique_ptr<NamedTensor>> buffers_;
  std::unique_ptr<Fp8Training> fp8_;  // options_.fp8 set: the FP8 linears' state
  std::vector<std::pair<NamedTensor*, ParamSpec>> specs_;  // every parameter and buffer, in creation order
  NamedTensor* embedding_ = nullptr;
  NamedTensor* final_norm_ = nullptr;
  NamedTensor* output_ = nullptr;  // null when tied to the embedding
  std::vector<DecoderLayer> layers_;  // the held layers, layers_[i] is global layer first_layer + i
  std::vector<MtpModule> mtp_;        // multi-token prediction depths (the last stage of a whole model)
  Rotary rotary_;
  Tensor rope_cos_, rope_sin_;  // cached for the last sequence length
  std::unique_ptr<StageState> own_;  // forward_backward / forward_only / logits
  bool overwrite_pending_ = false;   // zero_grads_for_overwrite: the next backward writes linear grads
};

}  // namespace primus

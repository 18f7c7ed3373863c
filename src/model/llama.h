// LlamaModel: the Llama 2 / 3 / 3.1 decoder with explicit backward.
//
//   tokens (B,T) -> embedding -> num_layers x LlamaLayer -> RMSNorm -> output layer
//   -> logits (B,T,V) -> cross-entropy against labels, weighted by loss_mask.
//
// Parameters carry Megatron-core names (see parameters()); init follows Megatron: every
// weight N(0, init_method_std), the residual output projections (linear_proj,
// linear_fc2) N(0, init_method_std / sqrt(2 num_layers)), norms 1. Each tensor draws from
// CounterRng(seed, stream_id(name)), so init does not depend on sharding or order.
//
// All math goes through ops/ops.h, so the same model runs on the CPU backend (fp32) and
// the CUDA backend (bf16 params and activations, fp32 grads; the fp32 master weights
// belong to the optimizer). Activations live in an arena reset at each micro-batch.
//
// Tensor / sequence parallel: set LlamaOptions::tensor_parallel = {&groups.tp(),
// sequence_parallel} (parallel/tensor_parallel.h explains the layout and the per-step
// calls). Every tp rank then holds its shard of each parameter under the parameter's full
// name (NamedTensor::shard says which), initialised to exactly its slice of the
// single-rank init, and forward_backward on the same micro-batch gives every tp rank the
// loss of the whole model. Leaving it unset is the single-rank model, unchanged.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/arena.h"
#include "model/llama_layer.h"
#include "model/model_config.h"
#include "model/named_tensor.h"
#include "ops/ops.h"
#include "parallel/tensor_parallel.h"

namespace primus {

// "none"/""/"null" -> None, "selective", "full"; anything else throws naming the choices.
Recompute parse_recompute_granularity(std::string_view value);

struct LlamaOptions {
  DType param_dtype = DType::F32;  // fp32 on CPU; bf16 on CUDA
  uint64_t seed = 1234;
  Recompute recompute = Recompute::None;
  // With Recompute::Full: recompute only the first N layers (Megatron's `block` method);
  // 0 recomputes every layer.
  int64_t recompute_num_layers = 0;
  // Rows of logits (x vocabulary) materialised at once in the classifier.
  int64_t logits_chunk_rows = 1024;
  // Tensor parallel group and sequence parallel (default: one rank). The group must live
  // on the context's device and outlive the model.
  parallel::TensorParallel tensor_parallel{};
};

class LlamaModel {
 public:
  // Validates that `config` describes a dense Llama (RMSNorm, SwiGLU, RoPE, no biases)
  // and initialises the weights (init_weights(options.seed)). `ctx` must outlive the model.
  LlamaModel(const ModelConfig& config, ops::Context& ctx, const LlamaOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const LlamaOptions& options() const { return options_; }
  void set_recompute(Recompute mode, int64_t num_layers = 0);

  // Stable order: embedding, then per layer input_layernorm, linear_qkv, linear_proj,
  // pre_mlp_layernorm, linear_fc1, linear_fc2, then final_layernorm, output_layer (untied).
  // Under tensor parallel each value is this rank's shard (see NamedTensor::shard).
  std::vector<NamedTensor*> parameters();
  NamedTensor& parameter(const std::string& name);  // throws with "did you mean"
  int64_t num_parameters() const;  // elements held by this rank (the whole model at tp 1)

  const parallel::TensorParallel& tensor_parallel() const { return options_.tensor_parallel; }
  // Sequence parallel: the replicated parameters (norm weights) whose grads hold only this
  // rank's tokens' share; empty otherwise. reduce_sequence_parallel_grads() all-reduces
  // them over tp: call it once per optimizer step, after the last micro-batch's backward.
  std::vector<NamedTensor*> sequence_parallel_partial_grads();
  void reduce_sequence_parallel_grads();

  void init_weights(uint64_t seed);
  void zero_grads();

  struct StepResult {
    double loss_sum = 0;    // sum over tokens of loss_mask * cross-entropy
    double num_tokens = 0;  // sum of loss_mask
  };
  // Forward + backward of one micro-batch. tokens, labels (B,T) int32; loss_mask (B,T)
  // fp32 (any device; a negative label is ignored like mask 0). Every parameter's grad
  // ACCUMULATES d(loss_weight * sum_i mask_i * loss_i) / d param; e.g. loss_weight =
  // 1 / (loss tokens in the global batch) gives the gradient of the mean loss.
  StepResult forward_backward(const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask,
                              float loss_weight);
  StepResult forward_only(const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask);
  // Logits (B,T,V) fp32 on CPU, for tests and generation (the full vocabulary: gathered
  // over tp, a collective then).
  Tensor logits(const Tensor& tokens);

  // Activation memory of the last step (arena high-water mark), for memory reports.
  size_t activation_bytes_high_water() const { return arena_.high_water_bytes(); }

 private:
  struct Batch;  // host-side preparation of one micro-batch
  LlamaDims dims_for(int64_t B, int64_t T) const;
  LlamaLayerEnv make_env(const LlamaDims& d);
  Recompute layer_mode(int64_t layer) const;
  // Embedding + layers + final norm. Returns the final normalised hidden (R,C) (R =
  // residual rows: N, or N/tp under sequence parallel); fills xs (layer inputs, plus the
  // last layer's output) and acts; keep_acts = false keeps nothing for backward
  // (forward_only / logits).
  Tensor forward_hidden(LlamaLayerEnv& env, const Batch& batch, std::vector<Tensor>& xs,
                        std::vector<LlamaLayerActivations>& acts, Tensor& final_rstd, bool keep_acts);
  // Output layer + cross-entropy into losses (N), chunk by chunk; with dhidden (R,C) also
  // their backward (output-layer grad accumulated, dhidden written).
  void classifier(const Batch& batch, const LlamaDims& d, const Tensor& hidden, Tensor& losses, Tensor* dhidden);
  NamedTensor& output_weight();

  ModelConfig config_;
  ops::Context& ctx_;
  LlamaOptions options_;
  std::vector<std::unique_ptr<NamedTensor>> params_;
  NamedTensor* embedding_ = nullptr;
  NamedTensor* final_norm_ = nullptr;
  NamedTensor* output_ = nullptr;  // null when tied to the embedding
  std::vector<LlamaLayer> layers_;
  std::vector<float> inv_freq_;
  Tensor rope_cos_, rope_sin_;  // cached for the last sequence length
  Arena arena_;
};

}  // namespace primus

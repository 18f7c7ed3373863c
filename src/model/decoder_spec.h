// DecoderSpec: the one place a ModelConfig becomes a decoder's parts and parameter table.
//
// Every model of the zoo is the same stack, composed Megatron-core ModuleSpec style:
//
//   embedding -> layer 0 .. layer L-1 -> final norm -> output layer  [-> MTP modules]
//   layer l   = attention part (GQA | MLA)  +  MLP part (dense SwiGLU | MoE)
//               each part is pre-norm with a residual: x + f(norm(x))
//
// decoder_layers() says which parts each layer has; parameter_table() lists every tensor
// the model holds: its Megatron-core name, full shape, how it is split over tensor- and
// expert-parallel ranks, how it is initialised and what role it plays. Training
// (DecoderModel), generation (infer::CachedDecoder), conversion (convert/hf_model),
// accounting (model_stats: --dry-run) and GEMM tuning (safe/model_shapes) all read it;
// none keeps its own list.
//
// Names (l = layer index, E = num_experts; D = head dim, Hq/Hkv query/kv heads, F/Fe/Fs the
// dense, expert and shared-expert inner sizes):
//
//   embedding.word_embeddings.weight                 (V, C)          vocab rows over tp
//   decoder.layers.l.input_layernorm.weight          (C)
//     GQA  self_attention.linear_qkv.weight          ((Hq+2Hkv)D, C) column: [q | k | v] heads
//          self_attention.linear_proj.weight         (C, Hq D)       row
//     MLA  self_attention.linear_q_down_proj / q_layernorm / linear_q_up_proj (or linear_q_proj),
//          linear_kv_down_proj / kv_layernorm / linear_kv_up_proj, linear_proj  (attention_mla.h)
//   decoder.layers.l.pre_mlp_layernorm.weight        (C)
//     dense mlp.linear_fc1.weight                    (2F, C)         column: [gate | up]
//           mlp.linear_fc2.weight                    (C, F)          row
//     MoE   mlp.router.weight                        (E, C)          replicated
//           mlp.router.expert_bias                   (E)             buffer (not trained)
//           mlp.experts.linear_fc1.weight            (E, 2Fe, C)     whole experts over ep
//           mlp.experts.linear_fc2.weight            (E, C, Fe)      whole experts over ep
//           mlp.shared_experts.linear_fc1.weight     (2Fs, C)        column
//           mlp.shared_experts.linear_fc2.weight     (C, Fs)         row
//   decoder.final_layernorm.weight                   (C)
//   output_layer.weight                              (V, C)          vocab rows (untied only)
//   mtp.layers.k.{enorm,hnorm,eh_proj,final_layernorm}, mtp.layers.k.transformer_layer.*  (mtp.h)
//
// Routed experts are stacked into one tensor per projection ((E, out, in)): one grouped GEMM
// reads them, and expert parallelism holds a contiguous range of whole experts. Biases,
// LayerNorm and learned positions are listed so that every zoo model is counted exactly; the
// training model refuses the parts it does not build yet (check_buildable) by key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"
#include "parallel/parallel_dims.h"
#include "parallel/tensor_parallel_shard.h"

namespace primus {

enum class AttentionKind { GQA, MLA };
enum class MlpKind { Dense, MoE };

struct LayerSpec {
  int64_t index = 0;    // 0..num_layers-1; an MTP module k's layer is num_layers + k
  AttentionKind attention = AttentionKind::GQA;
  MlpKind mlp = MlpKind::Dense;
  std::string prefix;   // "decoder.layers.3." or "mtp.layers.0.transformer_layer."
};

// How a tensor is split across ranks.
enum class ParamSplit {
  Replicated,  // every rank holds all of it (norms, router, MLA down-projections)
  Column,      // dim 0 over tensor-parallel ranks, part by part (`parts`): output features,
               // vocabulary rows
  Row,         // dim 1 over tensor-parallel ranks: input features
  Experts,        // dim 0 over expert-parallel ranks: whole experts of a stacked (E, ...) tensor
  ExpertsColumn,  // Experts, and each expert's output features (dim 1, by `parts`) over tp
  ExpertsRow,     // Experts, and each expert's input features (dim 2) over tp
};
inline bool splits_experts(ParamSplit s) {
  return s == ParamSplit::Experts || s == ParamSplit::ExpertsColumn || s == ParamSplit::ExpertsRow;
}

// How a tensor is initialised (Megatron: init_method / output_layer_init_method).
enum class ParamInit {
  Normal,        // N(0, init_method_std^2)
  ScaledNormal,  // N(0, (init_method_std / sqrt(2 num_layers))^2): projections into the residual
  Ones,          // norm weights
  Zeros,         // biases, the expert bias
  LoraA,         // LoRA's A: N(0, 1 / (3 in)), the variance of PEFT's kaiming-uniform(a = sqrt 5)
};

// What a tensor does, for accounting (model_stats) and the optimizer.
enum class ParamRole {
  Embedding,          // word (and learned position) embeddings
  Norm,               // normalization weights and LayerNorm biases: no weight decay
  Bias,               // linear biases: no weight decay
  Linear,             // a dense projection (what 6N counts)
  Router,             // MoE router projection (E, C)
  RoutedExperts,      // stacked routed-expert projections (E, out, in): top-k of them per token
  ExpertBias,         // aux-loss-free balancing bias: a buffer, updated by a rule, not trained
  OutputLayer,        // the untied output projection
  Adapter,            // a LoRA adapter matrix (lora_A / lora_B): the only trained tensors under LoRA
};

struct ParamSpec {
  std::string name;              // full Megatron-core name
  Shape shape;                   // the full (single-rank) shape
  ParamSplit split = ParamSplit::Replicated;
  std::vector<int64_t> parts;    // Column/Row: lengths of the pieces along the split dim, each
                                 // split on its own (qkv: {Hq D, Hkv D, Hkv D}); empty = one
  ParamInit init = ParamInit::Normal;
  ParamRole role = ParamRole::Linear;
  int64_t layer = -1;            // the layer it belongs to (LayerSpec::index); -1 outside layers
  bool frozen = false;           // held and saved, never trained (a LoRA run's base model)

  bool trainable() const { return role != ParamRole::ExpertBias && !frozen; }
  bool no_weight_decay() const { return role == ParamRole::Norm || role == ParamRole::Bias; }
  // A projection whose weight gradient a GEMM writes (the tensors grad_reduce_in_bf16 holds in bf16).
  bool projection() const { return role == ParamRole::Linear || role == ParamRole::RoutedExperts; }
  int64_t numel() const { return shape_numel(shape); }
};

// The main decoder's layers, in order (MTP modules' layers are in mtp_layer()).
std::vector<LayerSpec> decoder_layers(const ModelConfig& c);
LayerSpec decoder_layer(const ModelConfig& c, int64_t index);
LayerSpec mtp_layer(const ModelConfig& c, int64_t module);

// Pieces of the table, each in forward order.
std::vector<ParamSpec> embedding_params(const ModelConfig& c);  // word (+ position) embeddings
std::vector<ParamSpec> layer_params(const ModelConfig& c, const LayerSpec& layer);
// Final norm, and the output layer when untied (a pipeline's last stage with a tied output
// layer holds its own copy of the word embedding: DecoderModel adds it).
std::vector<ParamSpec> head_params(const ModelConfig& c);
// MTP module k: enorm, hnorm, eh_proj, its transformer layer, final_layernorm.
std::vector<ParamSpec> mtp_params(const ModelConfig& c, int64_t module);

// LoRA (parallel/lora.h): rank r > 0 adapts the layer linears named in `targets` (Megatron's
// module names: linear_qkv, linear_proj, linear_fc1, linear_fc2) with
//   <base>.lora_A.weight (r, in)  and  <base>.lora_B.weight (out, r)     (<base> = ".../linear_qkv")
// split as parallel/lora.h's table says; every other tensor of the model is frozen.
struct LoraSpec {
  int64_t rank = 0;  // lora_dim; 0: no LoRA
  double alpha = 32;  // lora_alpha: scaling alpha / rank
  std::vector<std::string> targets{"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"};
  // lora_dropout: dropout probability on the adapters' input in training (parallel/lora.h);
  // the model draws nothing itself: the trainer passes each micro-batch's LoraDropout
  // (MicroBatchExtras::lora_dropout, PipelinedModel::forward_backward's step).
  double dropout = 0;
  bool active() const { return rank > 0; }
  float scaling() const { return static_cast<float>(alpha / static_cast<double>(rank)); }
};
// The target module names LoRA knows.
const std::vector<std::string>& lora_target_names();
// The adapters of one layer's tensors `layer` (layer_params order): two per targeted weight,
// right after it (a routed-expert stack gets stacked adapters, one per expert). Throws naming
// the key when a target is unknown or `c` has parts LoRA does not adapt yet (MTP layers).
std::vector<ParamSpec> with_lora(const ModelConfig& c, std::vector<ParamSpec> layer, const LoraSpec& lora);
// "decoder.layers.0.self_attention.linear_qkv.weight" -> its adapter names.
std::string lora_a_name(const std::string& base_weight);
std::string lora_b_name(const std::string& base_weight);

// Every tensor of the model in forward order: embedding, layers, head, MTP modules.
std::vector<ParamSpec> parameter_table(const ModelConfig& c);
// Elements of the trainable tensors of `table` (buffers such as the expert bias excluded).
int64_t count_table_parameters(const std::vector<ParamSpec>& table);

// The tensor-parallel piece of `p` a rank holds: for Column/Row of the full tensor, for the
// routed experts (ExpertsColumn/Row) of this expert-parallel rank's experts (expert_shard_of);
// replicated when tp_size is 1 or the tensor is not split over tp. Throws naming the tensor
// when a piece does not divide.
parallel::ShardSpec shard_of(const ParamSpec& p, int tp_rank, int tp_size, int ep_rank = 0, int ep_size = 1);
// The expert-parallel piece (whole experts, dim 0) of a routed-expert tensor; replicated for
// every other tensor or when ep_size is 1.
parallel::ShardSpec expert_shard_of(const ParamSpec& p, int ep_rank, int ep_size);

// Throws, naming the key and value, when `c` asks for a part the training and generation
// code do not build yet (biases, LayerNorm, learned positions, dropout) or is
// inconsistent (heads not divisible by query groups, odd rotary dims, ...). `who` starts the
// message ("the decoder", "generate").
void check_buildable(const ModelConfig& c, const char* who = "the decoder");

// Whether the model fits a parallel layout: heads, query groups, FFN, vocabulary and experts
// divisible by tp / ep, layers by the pipeline split (even, uneven or interleaved), sequence by
// sp / cp, batch by micro-batch x dp, expert x tensor parallelism with sequence parallelism.
// Throws one error that lists every violated rule with its fix; runs before any communicator or
// tensor exists. The rules config::validate also checks are parallel/parallel_dims.h's.
void check_parallel_layout(const ModelConfig& c, const parallel::ParallelDims& dims,
                           const parallel::LayoutChecks& checks = {});

}  // namespace primus

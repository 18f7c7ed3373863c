// Model accounting from a ModelConfig: exact parameter counts (dense, MoE, MLA, MTP),
// parameters activated per token, training FLOPs per token, and an estimate of memory
// per GPU for a parallel layout. Pure arithmetic: no tensors, no config files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace primus {

// Parameters of one transformer layer, by part (weights and biases).
struct LayerParams {
  int64_t attention = 0;             // all attention projections, their biases, q/k (or MLA latent) norms
  int64_t attention_replicated = 0;  // the part of `attention` that TP does not split (MLA down-projections, norms)
  int64_t mlp = 0;                   // the dense MLP (0 in an MoE layer)
  int64_t experts = 0;               // all routed experts of an MoE layer
  int64_t expert = 0;                // one routed expert
  int64_t shared_experts = 0;        // the always-on shared experts
  int64_t router = 0;                // the router's expert-score projection
  int64_t norms = 0;                 // the two pre-normalizations
  // Of all the above, the parameters that are not projections (ParamRole Linear or
  // RoutedExperts, ParamSpec::projection): norms, biases, the router. Their gradients stay fp32
  // under grad_reduce_in_bf16.
  int64_t unprojected = 0;
  int64_t total() const { return attention + mlp + experts + shared_experts + router + norms; }
};

// Layer `layer` (0-based) of the main model; layer >= num_layers is an MTP module's layer.
LayerParams layer_params(const ModelConfig& m, int64_t layer);

struct ParamCounts {
  int64_t embedding = 0;     // padded_vocab_size * hidden (+ learned positions)
  int64_t output_layer = 0;  // 0 when tied to the embedding
  int64_t final_norm = 0;
  int64_t attention = 0, dense_mlp = 0, moe_experts = 0, moe_shared_experts = 0, moe_router = 0, layer_norms = 0;
  int64_t total = 0;         // the main model (what model cards publish), MTP excluded
  int64_t mtp = 0;           // MTP modules: their norms, projection and layer (embedding/output shared)
  int64_t activated = 0;     // parameters one token uses: total minus the routed experts it skips
  // Parameters in the matrix multiplies one token goes through (the N of 6N): attention
  // and MLP matrices, the top-k experts, the router and the output layer (counted even when
  // tied to the embedding); not the embedding lookup, norms or biases. MTP excluded.
  int64_t matmul = 0;
  int64_t mtp_matmul = 0;    // the same for the MTP modules (output layer included per module)
};

ParamCounts count_parameters(const ModelConfig& m);

// Training FLOPs per token (forward + backward) by PaLM's accounting (Chowdhery et al.
// 2022, appendix B): 6 * N_matmul for the weights plus, for attention scores and values,
//   6 * layers * seq * heads * (d_qk + d_v)
// which is 12 * layers * hidden * seq for standard attention (d_qk = d_v = hidden/heads).
// Causal masking is not discounted (as in PaLM). MTP modules are included when present.
struct FlopsPerToken {
  double matmul = 0;     // 6 * (matmul + mtp_matmul)
  double attention = 0;  // 6 * L * s * heads * (d_qk + d_v), L including MTP layers
  double total() const { return matmul + attention; }
};
FlopsPerToken training_flops_per_token(const ModelConfig& m, int64_t seq_length);

struct ParallelLayout {
  int64_t tp = 1, pp = 1, cp = 1, dp = 1, ep = 1;
  int64_t etp = 0;  // expert tensor parallel; 0 = tp
  int64_t virtual_stages = 1;  // interleaved pipeline chunks per rank
  // Uneven pipelines (Megatron's decoder_first/last_pipeline_num_layers): layers on the
  // first/last stage; 0 = an even share. The other stages split the rest evenly.
  int64_t first_stage_layers = 0, last_stage_layers = 0;
  bool sequence_parallel = false;
};

enum class Precision { kBf16, kFp16, kFp32 };
enum class Recompute { kNone, kSelective, kFullUniform, kFullBlock };

struct TrainingSetup {
  int64_t seq_length = 4096;
  int64_t micro_batch_size = 1;
  int64_t global_batch_size = 1;
  Precision precision = Precision::kBf16;
  bool distributed_optimizer = false;
  Recompute recompute = Recompute::kNone;
  int64_t recompute_num_layers = 0;
  bool cross_entropy_fusion = false;  // no fp32 copy of the logits
  int64_t logits_chunk_mb = 2048;     // the logits are made a chunk of rows at a time (logits_chunk_rows)
  bool grad_reduce_in_bf16 = false;   // the projections' gradients (not embeddings, norms, router) in 2 B
  // use_precision_aware_optimizer: Adam's moments in 2 B each when bf16 (exp_avg_dtype,
  // exp_avg_sq_dtype), and with 16-bit bf16 weights the fp32 master held as a 2 B remainder
  // beside the weight (store_param_remainders).
  bool exp_avg_bf16 = false, exp_avg_sq_bf16 = false, master_remainders = false;
  // LoRA (peft: lora): the adapters' share of the parameters; only they have gradients and
  // optimizer states (the frozen base keeps its 16-bit weights only). 1: everything trains.
  double trainable_fraction = 1.0;
  // fp8: the layers' projections (attention and dense / shared-expert MLP; model/fp8_training.h)
  // keep their FP8 casts w and w^T between optimizer steps: 2 B per such parameter.
  bool fp8 = false;
};

// Memory per GPU on the fullest pipeline stage. Mixed precision (bf16/fp16) keeps 16-bit
// weights (2 B), fp32 gradients (4 B; 2 B for the projections with grad_reduce_in_bf16) and
// fp32 master weights + Adam m, v (12 B; less with the precision-aware optimizer's bf16
// moments and master remainders) per parameter; fp32 training keeps 4 + 4 + 8 B; fp8 adds 2 B
// per projection parameter for its cached FP8 casts (counted with the weights). The distributed optimizer divides the
// optimizer part by the data-parallel (x context-parallel) size, or for expert weights by
// the expert-data-parallel size. Activations are the tensors saved for backward with
// flash attention (no seq x seq scores), 16-bit (32-bit for fp32 runs), times the
// micro-batches a 1F1B pipeline keeps in flight on that stage, plus on the last stage one
// chunk of logits (model/logits_chunk.h: the output layer makes them a chunk of rows at a
// time); selective recompute therefore saves nothing here (it recomputes only the core
// attention). Not counted: CUDA context, library workspaces (a step table measures them:
// safe/step_table.h), the backward's working buffers, allocator fragmentation, communication
// buffers (docs/SAFE.md has the measured error).
struct MemoryEstimate {
  int64_t stage = 0;                   // the pipeline stage estimated (the fullest)
  int64_t params = 0;                  // parameters held by one GPU of that stage
  int64_t expert_params = 0;           // of which routed-expert parameters
  int64_t microbatches_in_flight = 1;
  double weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
  double total_bytes() const { return weight_bytes + grad_bytes + optimizer_bytes + activation_bytes; }
};

// Layers held by each pipeline stage (size pp). Throws primus::Error when they do not split.
std::vector<int64_t> stage_layer_counts(int64_t num_layers, const ParallelLayout& layout);

MemoryEstimate estimate_memory(const ModelConfig& m, const ParallelLayout& layout, const TrainingSetup& setup);

// "8.03B", "70.6B", "141B", "9.44M": three significant digits with a K/M/B/T suffix.
std::string format_count(int64_t n);

}  // namespace primus

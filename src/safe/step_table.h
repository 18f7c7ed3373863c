// The measured compute of a training step, per tensor-parallel size: what `primus bench step`
// writes on a GPU and `primus projection --bench-table` reads instead of one --tflops number.
//
//   primus bench step --config EXP.yaml [--set ...] --tp 1,2,4,8 --out h100_1b.json   (on the GPU)
//   primus projection --config EXP.yaml --nodes 4 --gpus-per-node 8 --bench-table h100_1b.json
//
// For each tp the bench builds the shapes one rank of that tensor-parallel group computes (heads,
// query groups, FFN and vocabulary / tp; sequence parallel's norms on tokens / tp) and times,
// for one micro-batch of the experiment (micro_batch_size x seq_length tokens), the kernels that
// `primus train` runs for them, one after another on one stream:
//
//   part          forward                                   backward
//   GEMMs         every layer's projections (model_shapes'   their data and weight gradients
//                 training_gemms: the engine's algorithm,    (weight gradients in the
//                 residual in the epilogue)                  experiment's dtype)
//   attention     cuDNN / flash forward per layer            its backward
//   elementwise   RMSNorm x 2, RoPE, SwiGLU per layer         their backwards
//   head          embedding, final norm, output layer GEMMs and the fused cross-entropy (fwd + bwd)
//   optimizer     multi-tensor AdamW with the experiment's dtypes + the gradient norm, per parameter
//
// A layout's compute (table_compute_seconds) is then, with m = global_batch / (micro_batch x dp)
// micro-batches, the fullest pipeline stage's share f of the layers and cp the context-parallel size
// (each rank computes 1/cp of every token-proportional op and, load-balanced, of the attention):
//
//   compute = m x (f x (layers_fwd + layers_bwd [+ layers_fwd again under full recompute]) + head) / cp
//             + optimizer_ns_per_param x trainable parameters of the GPU (/ dp x cp with the
//               distributed optimizer) x 1e-9
//
// The table also holds the device memory of the runtime (CUDA context, library workspaces), which
// the projection adds to every layout's memory.
//
// Not in the table: MoE routing, permutation and its host synchronisation (the experts' GEMMs are
// in it, at an even share of the routed rows), the launch gaps between kernels, data loading.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_stats.h"

namespace primus::safe {

struct StepTableEntry {
  int64_t tp = 1;
  double layers_fwd_us = 0;          // all decoder layers, one micro-batch
  double layers_bwd_us = 0;
  double head_us = 0;                // embedding + final norm + output layer + loss, forward and backward
  double optimizer_ns_per_param = 0; // AdamW + gradient norm
  nlohmann::json parts;              // the breakdown (gemm / attention / elementwise, us), for reading
};

struct StepTable {
  std::string model, device;
  int64_t layers = 0, hidden = 0, seq_length = 0, micro_batch_size = 0;
  // Device memory a training process holds besides its tensors: the CUDA context and the
  // cuBLAS / cuDNN handles and workspaces, measured after their first use (cudaMemGetInfo).
  double runtime_bytes = 0;
  std::vector<StepTableEntry> entries;
};

nlohmann::json to_json(const StepTable& t);
// `source` names the file in errors.
StepTable step_table_from_json(const nlohmann::json& j, const std::string& source);
StepTable read_step_table(const std::string& path);

// The model one rank of a tensor-parallel group of `tp` computes: heads, query groups, FFN sizes
// and the vocabulary divided by tp (head dims kept). Fails by name where tp does not divide them.
ModelConfig tp_local_model(const ModelConfig& m, int64_t tp);

// Fails with a named error unless the table was measured for this model at this seq_length and
// micro_batch_size.
void check_step_table(const StepTable& t, const ModelConfig& m, const TrainingSetup& s, const std::string& source);
// The entry of `tp`, or null.
const StepTableEntry* step_table_entry(const StepTable& t, int64_t tp);

// The formula above. `params` is the parameter count one GPU holds (MemoryEstimate::params).
double table_compute_seconds(const StepTableEntry& e, const ModelConfig& m, const TrainingSetup& s,
                             const ParallelLayout& l, int64_t params);

}  // namespace primus::safe

// Model shapes for the benchmarks and the GEMM tuner: `primus bench gemm-dense`, `primus bench
// attention`, `primus bench ops` and `primus tune --model-config`. A model is a built-in
// shape (the PyTorch peers'), a zoo name or a model file; its training GEMMs come from
// decoder_spec's parameter table.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/model_config.h"

namespace primus::safe {

struct DenseShape {
  std::string name;
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0;
  bool untied_head = true;
};

// The dense peer's shapes (pt_llama_bench.py): "llama-tiny", "llama3.2-1B", "llama3.2-3B", as
// dense Llama configs (RMSNorm, SwiGLU, RoPE, untied output layer).
std::optional<ModelConfig> builtin_model(const std::string& name);
std::vector<std::string> builtin_shape_names();
// A built-in name, a zoo name (configs/models/megatron/<name>.yaml, with its `extends:` chain
// and the trainer's defaults: config::load_model) or a model file path.
ModelConfig resolve_model(const std::string& spec);

// The sizes the attention and op benchmarks read, of a model / a dense Llama of these sizes.
DenseShape shape_of(const ModelConfig& m);
ModelConfig model_of(const DenseShape& s);
std::optional<DenseShape> builtin_shape(const std::string& name);
DenseShape resolve_shape(const std::string& spec);

// Shape flags of the CLI: a model (built-in name, zoo name or yaml) and/or explicit sizes that
// override it (0 = keep). Without a model, layers/hidden/heads are required.
struct ShapeFlags {
  std::string model;
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0;
};
DenseShape shape_from_flags(const ShapeFlags& f, const std::string& default_model);

// One GEMM of a training step, in the engine's row-major convention (see ops/cuda/gemm.h).
struct GemmProblem {
  std::string label;  // e.g. "qkv fwd"
  int64_t m = 0, n = 0, k = 0;
  bool ta = false, tb = false;
  DType in = DType::BF16, out = DType::BF16;
  bool accumulate = false;
  int64_t count = 1;  // how many times a step runs it
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
};

// The GEMMs `primus train` runs for one micro-batch of `tokens` = micro_batch * seq tokens
// (tp = 1), with the keys the engine sees, so a table tuned from this list applies in training:
// forward (y = x w^T; the attention and MLP output projections add the residual in the
// epilogue, beta = 1), data gradient (dx = dy w) and weight gradient (dw = dy^T x in fp32,
// written with beta = 0: the step's first micro-batch; later ones run the same GEMM with
// beta = 1). The output layer runs in chunks of `logits_chunk_rows` rows (the trainer's
// default 4096): its weight gradient is written by the first chunk when the head is untied
// and accumulated by the others.
// Problems with the same shape and flags are one entry (count = the layers that run it).
// `layer_grad` is the layers' projections' weight-gradient dtype (bf16 with grad_reduce_in_bf16;
// the output layer's stays fp32).
std::vector<GemmProblem> training_gemms(const ModelConfig& m, int64_t tokens, int64_t logits_chunk_rows = 4096,
                                        DType layer_grad = DType::F32);
inline std::vector<GemmProblem> training_gemms(const DenseShape& s, int64_t tokens, int64_t logits_chunk_rows = 4096) {
  return training_gemms(model_of(s), tokens, logits_chunk_rows);
}

}  // namespace primus::safe

// The GEMM and attention shapes of a dense Llama-like model, for `primus bench gemm-dense`,
// `primus bench attention` and `primus tune --model-config`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace primus::safe {

struct DenseShape {
  std::string name;
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0;
  bool untied_head = true;
};

// The shapes of ../shared/anchors/pt_llama_bench.py: "llama-tiny", "llama3.2-1B", "llama3.2-3B".
std::optional<DenseShape> builtin_shape(const std::string& name);
std::vector<std::string> builtin_shape_names();

// A model zoo file (configs/models/megatron/<name>.yaml or a path), following its `extends:`
// chain; the vocabulary is padded to make_vocab_size_divisible_by (default 128).
DenseShape shape_from_model_yaml(const std::string& name_or_path);
// builtin name, zoo name or yaml path.
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
std::vector<GemmProblem> training_gemms(const DenseShape& s, int64_t tokens, int64_t logits_chunk_rows = 4096);

}  // namespace primus::safe

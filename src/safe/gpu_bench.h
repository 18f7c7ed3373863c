// GPU benchmark drivers behind `primus bench` and bench/gpu_*.cpp: GEMMs (single shapes or a
// model's training GEMMs, against the best cuBLASLt candidate), attention forward+backward over
// model shapes and micro-batches, and the memory-bound fused ops against their HBM floor.
// Each returns a process exit code; without CUDA (build or device) they print why and return 2.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_stats.h"
#include "safe/model_shapes.h"
#include "safe/report_table.h"

namespace primus::safe {

// Exit code for "this needs a GPU / a CUDA build".
constexpr int kNoGpuExitCode = 2;
// Prints the reason and returns false when there is no CUDA build or no visible GPU.
bool gpu_ready(const char* command);

#ifdef PRIMUS_WITH_CUDA
}  // namespace primus::safe
namespace primus::cuda {
struct GemmKey;
class CudaBackend;
}
namespace primus::safe {
// The GEMM engine's key for a problem (full 256-byte alignment, as fresh allocations have).
cuda::GemmKey gemm_key_of(const GemmProblem& p);
// A device tensor of uniform values in [lo, hi) (seeded), filled on the backend's stream.
Tensor random_tensor(cuda::CudaBackend& be, Shape s, DType dt, uint64_t seed, float lo = -1.f, float hi = 1.f);
#endif

struct GemmBenchOptions {
  std::vector<GemmProblem> problems;
  int warmup = 5, iters = 20;
  bool compare_best = true;  // also time every cuBLASLt candidate and report the best
  int candidates = 32;
  TableFormat format = TableFormat::Markdown;
  std::string output_file;  // also write the table there (optional)
};
int run_gemm_bench(const GemmBenchOptions& o);

struct AttentionShape {
  std::string label;
  int64_t batch = 1, seq = 2048, heads = 32, kv_heads = 8, head_dim = 64;
  int64_t v_head_dim = 0;  // the value head dim when it differs (MLA: 128 with head_dim 192); 0 = head_dim
  int64_t dv() const { return v_head_dim > 0 ? v_head_dim : head_dim; }
  bool causal = true;
  // > 0: packed sequences, every row split into documents of doc_len tokens (the last one
  // shorter) and attention masked to each document (segments); 0: one sequence per row.
  int64_t doc_len = 0;
};
struct AttentionBenchOptions {
  std::vector<AttentionShape> shapes;
  int warmup = 3, iters = 10;
  bool all_configs = false;  // time every flash tiling variant, not just the default
  // all: every kernel (flash, cuDNN, and the plain one where training would fall back to it); or one
  // kernel as the experiment key attention_backend names it: auto (cuDNN, flash fallback), fused
  // (cuDNN only), flash, unfused / local (the plain kernel).
  std::string backend = "all";
  TableFormat format = TableFormat::Markdown;
  std::string output_file;
};
int run_attention_bench(const AttentionBenchOptions& o);
// Causal-aware FLOPs: forward 2*B*H*T*T*(D + Dv) (QK^T and PV; halved when causal), backward
// 2.5x forward; with doc_len, T*T becomes the sum of the documents' squared lengths (the
// unmasked work).
double attention_forward_flops(const AttentionShape& s);

struct OpsBenchOptions {
  DenseShape shape;       // hidden, ffn, heads, vocab
  int64_t tokens = 16384; // micro_batch * seq
  int64_t seq = 2048;
  int warmup = 3, iters = 20;
  TableFormat format = TableFormat::Markdown;
  std::string output_file;
};
int run_ops_bench(const OpsBenchOptions& o);

// `primus bench moe`: the experts' grouped GEMMs of one MoE layer (forward, data and weight
// gradients of fc1 and fc2, as training runs them) at a routing drawn like a random router's
// (each token's k experts uniform and distinct, seeded), next to the same GEMMs as single dense
// GEMMs of all routed rows (the same FLOPs): the grouped TFLOP/s as a share of the dense one,
// for the per-expert loop and cuBLAS's grouped-batched GEMM; and the routing / permutation
// kernels' times for the same micro-batch.
struct MoeBenchOptions {
  ModelConfig model;       // an MoE shape (num_experts > 0)
  int64_t tokens = 8192;   // micro_batch * seq
  uint64_t seed = 1;
  int warmup = 3, iters = 20;
  TableFormat format = TableFormat::Markdown;
  std::string output_file;
};
int run_moe_bench(const MoeBenchOptions& o);

// `primus bench step`: the step table of safe/step_table.h (what one micro-batch's kernels and
// the optimizer take at each tensor-parallel size) for an experiment's model, seq_length and
// micro_batch_size, written as JSON to `output_file` for `primus projection --bench-table`.
struct StepBenchOptions {
  ModelConfig model;
  TrainingSetup setup;
  std::vector<int64_t> tps = {1};
  int warmup = 3, iters = 10;
  std::string output_file;
};
int run_step_bench(const StepBenchOptions& o);

}  // namespace primus::safe

// GEMM through cuBLASLt (bf16/fp16 in, fp32 accumulate, out in the input dtype or fp32), with
// a per-shape plan cache and the three-stage tuning flow of Primus (hipBLASLt upstream):
//   PRIMUS_GEMM_TUNING_STAGE=1  log every distinct GEMM shape to the shapes file (JSONL)
//   PRIMUS_GEMM_TUNING_STAGE=2  time the cuBLASLt candidates of each new shape, write the table
//   PRIMUS_GEMM_TUNING_STAGE=3  use the table's algorithm per shape (missing table = error)
// PRIMUS_HIPBLASLT_TUNING_STAGE is accepted as an alias. Files: PRIMUS_GEMM_TUNING_FILE (shapes,
// default ./output/gemm_shapes.jsonl) and PRIMUS_GEMM_TUNING_RESULT (table, default
// ./output/gemm_tuning.json).
//
// Row-major convention of the whole engine: out (M,N) = alpha * op(a) (M,K) @ op(b) (K,N)
// + beta * out; ta: a is stored (K,M); tb: b is stored (N,K).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace primus::cuda {

// Everything that selects a cuBLASLt algorithm.
struct GemmKey {
  int64_t m = 0, n = 0, k = 0;
  bool ta = false, tb = false;
  DType in_dtype = DType::BF16;
  DType out_dtype = DType::BF16;
  bool accumulate = false;  // beta != 0 (reads out)
  int align = 256;          // min pointer alignment in bytes (<= 256)

  bool operator==(const GemmKey&) const = default;
  std::string str() const;  // "m=4096 n=2048 k=2048 ta=0 tb=1 bf16->bf16 acc=0 align=256"
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
};

enum class TuningStage : int { Off = 0, LogShapes = 1, Tune = 2, UseTable = 3 };

struct GemmTuningConfig {
  TuningStage stage = TuningStage::Off;
  std::string shapes_file = "output/gemm_shapes.jsonl";
  std::string table_file = "output/gemm_tuning.json";
  int max_candidates = 32;  // heuristic results requested per shape
  int warmup = 3;
  int iters = 20;
  // Reads PRIMUS_GEMM_TUNING_STAGE (or PRIMUS_HIPBLASLT_TUNING_STAGE), PRIMUS_GEMM_TUNING_FILE,
  // PRIMUS_GEMM_TUNING_RESULT; an invalid stage value is an error naming the variable.
  static GemmTuningConfig from_env();
};

// One timed cuBLASLt candidate.
struct GemmCandidate {
  int index = 0;            // position in the heuristic list (0 = cuBLASLt's default choice)
  uint64_t algo[8] = {};    // cublasLtMatmulAlgo_t, serialisable for the same cuBLASLt version
  int algo_id = -1, tile = -1, stages = -1, splitk = -1;
  size_t workspace = 0;
  double time_us = 0;       // median over timed iterations; < 0 = skipped as clearly slow or failed
};

struct GemmTuneResult {
  GemmKey key;
  std::vector<GemmCandidate> candidates;  // in heuristic order
  int best = -1;                          // index into candidates
  double heuristic_us() const { return candidates.empty() ? 0 : candidates[0].time_us; }
  double best_us() const { return best < 0 ? 0 : candidates[static_cast<size_t>(best)].time_us; }
};

class GemmEngine {
 public:
  GemmEngine(int device, cudaStream_t stream, GemmTuningConfig config);
  ~GemmEngine();
  GemmEngine(const GemmEngine&) = delete;
  GemmEngine& operator=(const GemmEngine&) = delete;

  // out (M,N) = alpha * op(a) @ op(b) + beta * out (row-major; see the file comment); with c
  // set, beta * c instead of beta * out (c: M x N, out's dtype; cuBLASLt's C != D).
  void matmul(void* out, DType out_dtype, const void* a, const void* b, DType in_dtype, int64_t M, int64_t N,
              int64_t K, bool ta, bool tb, float alpha, float beta, const void* c = nullptr);

  // FP8 (ops/fp8.h): out (M,N) = beta * (c or out) + (p (M,K) @ q (N,K)^T) * p_scale_inv[0] *
  // q_scale_inv[0], both operands K-major (cuBLASLt's "TN", the layout Hopper's FP8 GEMM needs),
  // p and q E4M3 or E5M2 (not both E5M2); out bf16 or fp32 (c, when given, of out's dtype and a
  // different buffer). fast_accum: Hopper's faster accumulation (Transformer Engine uses it in
  // the forward, not for gradients). cuBLASLt's heuristic algorithm per shape (not tuned).
  void matmul_fp8(void* out, DType out_dtype, const void* p, DType p_dtype, const void* q, DType q_dtype, int64_t M,
                  int64_t N, int64_t K, const float* p_scale_inv, const float* q_scale_inv, float beta,
                  const void* c, bool fast_accum);

  // Independent GEMMs at once (a grouped GEMM's experts, each too small to fill the GPU alone):
  //   engine.fork_lanes(n);                        // lanes 1..n-1 wait for the stream's work so far
  //   engine.matmul_on_lane(e % n, ...);           // lane 0 is the engine's stream
  //   engine.join_lanes();                         // the stream waits for every lane
  // Each lane is a stream of its own with its own cuBLASLt workspace (created on first use and
  // kept). Every matmul_on_lane must sit between a fork and a join; the GEMMs of different lanes
  // must not write the same memory. Works under stream capture (a fork/join in the graph).
  static constexpr int kMaxLanes = 4;
  void fork_lanes(int n);
  void matmul_on_lane(int lane, void* out, DType out_dtype, const void* a, const void* b, DType in_dtype, int64_t M,
                      int64_t N, int64_t K, bool ta, bool tb, float alpha, float beta);
  void join_lanes();

  // Times the cuBLASLt candidates for `key` on random inputs rotated over enough buffers to
  // defeat L2 (allocates them for the call). Candidates clearly slower than the best so far
  // after `warmup` + 3 iterations are skipped (time_us < 0).
  GemmTuneResult tune(const GemmKey& key, int max_candidates, int warmup, int iters);
  // Times one key with the algorithm the engine would use now (heuristic or table), same method.
  double time_current(const GemmKey& key, int warmup, int iters);

  // Makes `algo` the one used for `key` (validated with cublasLtMatmulAlgoCheck; false if invalid).
  bool set_algo(const GemmKey& key, const uint64_t (&algo)[8]);
  // Loads a tuning table (see gemm_tuning.h); returns the number of entries applied.
  int load_table(const std::string& path);

  const GemmTuningConfig& config() const { return config_; }
  std::vector<GemmKey> seen_shapes() const;
  static size_t cublaslt_version();
  cudaStream_t stream() const { return stream_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  GemmTuningConfig config_;
  cudaStream_t stream_;
};

}  // namespace primus::cuda

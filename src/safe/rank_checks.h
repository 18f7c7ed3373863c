// The compute checks one rank runs on its own device before a job: is its GEMM correct, how
// fast is it, how fast is its memory. Shared by `primus preflight` (every rank) and
// `primus node-smoke` (every GPU of a node, or every rank).
//
//   GPU (gpu_rank_checks.cpp)  bf16 GEMM (fp32 accumulate, cuBLASLt) of a 192x160x96 product
//                              against an fp64 host product (relative error < 1e-5), then
//                              square GEMMs: TFLOP/s = 2 n^3 / t; HBM: device-to-device copy
//                              of 1 GiB, GB/s = 2 * bytes / t (read + write).
//   CPU (cpu_rank_checks.cpp)  the same on the host: fp32 OpenBLAS sgemm against an fp64
//                              product (relative error < 1e-5), square sgemm TFLOP/s; DRAM:
//                              memcpy of 64 MiB, GB/s = 2 * bytes / t. Meaningful on CPU
//                              ranks and testable without a GPU; not a GPU's numbers.
//   gemm_tflops                the TFLOP/s of the largest GEMM size (the one thresholds and
//                              outliers look at); mem_gbps the copy bandwidth.
// Times are the median of the timed iterations after warm-up.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace primus::safe {

struct ComputeCheckOptions {
  bool quick = false;           // fewer GEMM sizes and iterations
  double min_gemm_tflops = 0;   // a check fails below this at the largest size (0 = report only)
  double min_hbm_gbps = 0;      // a check fails below this copy bandwidth (0 = report only)
};

struct CheckLine {
  std::string name;    // "gemm_sanity", "min_gemm_tflops", "min_hbm_gbps"
  bool pass = true;
  std::string detail;  // what was measured against what
};

struct GemmPoint {
  int64_t size = 0;    // m = n = k
  double tflops = 0;
};

struct RankCompute {
  std::string kind;            // "gpu" or "cpu"
  std::string device;          // "GPU 0: NVIDIA H100 80GB HBM3 (...)" or "CPU: <model>"
  std::string host_summary;    // kernel, CPU, memory, NUMA nodes of the host
  std::vector<GemmPoint> gemm;
  double gemm_tflops = 0;      // at the largest size
  double mem_gbps = 0;
  std::vector<CheckLine> checks;
  bool ok() const;
};

// Adds the threshold checks of `o` (when set) to `r`.
void apply_thresholds(RankCompute& r, const ComputeCheckOptions& o);
// The GEMM sanity checks' measure: ||o - a b||_F / ||a b||_F with a b (a (M,K), b (K,N),
// row-major) computed in double on the host; o (M,N) the product under test.
double gemm_relative_error(const float* a, const float* b, const float* o, int64_t M, int64_t N, int64_t K);

// The host (kernel, CPU model and cores, memory, NUMA nodes) in one line.
std::string host_summary();
std::string this_hostname();

RankCompute run_cpu_checks(const ComputeCheckOptions& o);
// CUDA device `device` of this process; throws in a build without CUDA.
RankCompute run_gpu_checks(int device, const ComputeCheckOptions& o);
// run_cpu_checks when `device` is "cpu", else run_gpu_checks(gpu). An exception becomes a failed
// "compute_checks" line naming it, so that the caller goes on (other ranks may be waiting for
// this one in the next collective); that result has no host_summary.
RankCompute run_compute_checks(const std::string& device, int gpu, const ComputeCheckOptions& o);
// Visible CUDA devices (0 in a build without CUDA).
int visible_gpu_count();

nlohmann::json to_json(const RankCompute& r);
RankCompute rank_compute_from_json(const nlohmann::json& j);

}  // namespace primus::safe

// `primus preflight`: is this node fit to train? Host info (kernel, CPU, memory, NUMA, PCIe link
// widths), GPU info, a GEMM correctness check, bf16 GEMM TFLOP/s for square sizes, HBM copy
// bandwidth, and (on several GPUs) collectives; a markdown report under output/preflight/.
#pragma once

#include <string>

namespace primus::safe {

struct PreflightOptions {
  bool quick = false;            // fewer GEMM sizes and iterations
  std::string output_dir = "output/preflight";
  double min_gemm_tflops = 0;    // fail below this bf16 TFLOP/s at the largest size (0 = report only)
  double min_hbm_gbps = 0;       // fail below this copy bandwidth (0 = report only)
};

// Returns 0 when every check passes, 1 when a check fails, 2 without a usable GPU.
int run_preflight(const PreflightOptions& o);

}  // namespace primus::safe

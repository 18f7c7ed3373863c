// `primus preflight`: is every rank of this job fit to train? Under mpirun / srun (or alone)
// every rank runs its compute checks (rank_checks.h: GEMM correctness and TFLOP/s, memory
// copy bandwidth; GPU ranks on their GPU, CPU ranks on the host), then collectives over the
// job's world Communicator (collective_bench.h: NCCL on GPUs, MPI on CPU ranks) in three
// scopes:
//   intra-node   the ranks of each node (same hostname), all nodes at once
//   inter-node   the ranks with the same local index on every node ("rails"), all at once;
//                only with 2+ nodes of equal rank counts
//   world        every rank; only with 2+ nodes (with one node it is the intra-node group)
// Rank 0 gathers everything over the same Communicator, judges it (preflight_report.h),
// prints the markdown report and writes it with its JSON twin. Every rank exits with rank
// 0's verdict: 0 pass, 1 a failed check or an outlier, 2 no usable GPU (--device cuda).
#pragma once

#include <string>
#include <vector>

namespace primus::safe {

struct PreflightOptions {
  std::string device = "cuda";   // "cuda": GPU ranks (NCCL); "cpu": CPU ranks (MPI)
  bool quick = false;            // fewer GEMM sizes and iterations
  std::string output_dir = "output/preflight";
  std::string report;            // report path prefix (PREFIX.md, PREFIX.json); empty: under output_dir
  double min_gemm_tflops = 0;    // fail a rank below this TFLOP/s at the largest GEMM size (0 = report only)
  double min_hbm_gbps = 0;       // fail a rank below this copy bandwidth (0 = report only)
  std::vector<std::string> ops;  // collectives to run (empty: all five)
  std::string min_bytes = "1M", max_bytes = "1G";
  int64_t step_factor = 4;
  int warmup = 2, iters = 5;
  double outlier_threshold = 0.1;
  int emulate_nodes = 0;         // testing: split the ranks into this many pretend nodes
  int64_t distributed_timeout_minutes = 10;  // a collective waiting longer aborts the job (Megatron's name)
};

int run_preflight(const PreflightOptions& o);

}  // namespace primus::safe

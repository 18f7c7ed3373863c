// `primus node-smoke`: a quick go/no-go per node before a job lands on it (a Slurm prolog,
// or a step of the launch), with pass/fail thresholds from flags.
//
//   alone (no launcher, or one rank)   checks every visible GPU of this node, one after the
//                                      other (--device cuda), or the host (--device cpu)
//   under mpirun / srun (2+ ranks)     every rank checks its own GPU (LOCAL_RANK) or the host;
//                                      rank 0 gathers the results over the world
//                                      Communicator and prints every node's line
// Each device runs rank_checks.h with quick sizes (GEMM 2048 and 8192 on GPUs, 256 and 512
// on the CPU) and the thresholds: a device fails on a wrong GEMM, below --min-gemm-tflops or
// below --min-hbm-gbps; a node fails when any of its devices fails. One line per node:
//   node-smoke PASS host-a: 8 GPU(s), GEMM 655.0..661.2 TFLOP/s (>= 600), memory 2901..2950 GB/s (>= 2000)
//   node-smoke FAIL host-b: GPU 3: min_gemm_tflops: GEMM 8192^3 at 402 TFLOP/s (--min-gemm-tflops 600)
// Exit code (every rank the same): 0 every node passes, 1 a node fails, 2 no GPU (--device cuda).
#pragma once

#include <string>
#include <vector>

#include "safe/rank_checks.h"

namespace primus::safe {

struct NodeSmokeOptions {
  std::string device = "cuda";   // "cuda" or "cpu"
  double min_gemm_tflops = 0;
  double min_hbm_gbps = 0;
  std::string report;            // optional JSON file with every device's numbers (rank 0)
  int64_t distributed_timeout_minutes = 10;  // under a launcher: a wait longer than this aborts the job
};

// One device's results on one node.
struct SmokeEntry {
  std::string node;    // hostname
  std::string label;   // "GPU 3", "rank 5 (GPU 1)", "CPU"
  RankCompute compute;
};

struct NodeVerdict {
  std::string node;
  bool pass = true;
  std::string line;    // the node's line (see above); failures add one line per failed check
};

// Groups entries by node (in order of first appearance) and writes each node's verdict.
std::vector<NodeVerdict> smoke_verdicts(const std::vector<SmokeEntry>& entries, const NodeSmokeOptions& o);

int run_node_smoke(const NodeSmokeOptions& o);

}  // namespace primus::safe

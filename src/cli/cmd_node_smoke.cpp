// `primus node-smoke`: a quick per-node go/no-go with thresholds (src/safe/node_smoke.h).
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "safe/node_smoke.h"

namespace primus::cli {

int cmd_node_smoke(int argc, char** argv) {
  CLI::App app{"Quick go/no-go of this node (or, under mpirun / srun, of every node of the job): every GPU (or the "
               "host with --device cpu) runs a GEMM correctness check, GEMM TFLOP/s and memory copy bandwidth against "
               "the thresholds; one PASS/FAIL line per node. Exit 0 = every node passes, 1 = a node fails, 2 = no "
               "usable GPU (--device cuda): fit for a Slurm prolog. docs/SAFE.md.",
               "node-smoke"};
  safe::NodeSmokeOptions o;
  app.add_option("--device", o.device, "cuda: every visible GPU (one per rank under a launcher); cpu: the host")
      ->capture_default_str();
  app.add_option("--min-gemm-tflops", o.min_gemm_tflops,
                 "fail a device below this GEMM TFLOP/s at the largest size (e.g. 600 on H100/MI300X-class GPUs)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--min-hbm-gbps", o.min_hbm_gbps,
                 "fail a device below this memory copy bandwidth in GB/s (e.g. 2000 on H100/MI300X-class GPUs)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--report", o.report, "also write every device's numbers and the verdicts to this JSON file");
  app.add_option("--distributed-timeout-minutes", o.distributed_timeout_minutes,
                 "a collective or point-to-point wait longer than this aborts the job, naming it (Megatron's "
                 "distributed_timeout_minutes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return safe::run_node_smoke(o);
}

}  // namespace primus::cli

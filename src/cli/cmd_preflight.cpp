// `primus preflight`: every rank of the job before a run: compute checks, then collective
// bandwidth within and across nodes, one markdown + JSON report (src/safe/preflight.h).
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/strings.h"
#include "safe/preflight.h"

namespace primus::cli {

int cmd_preflight(int argc, char** argv) {
  CLI::App app{"Check every rank before training. Alone it checks this GPU; under mpirun / srun every rank runs "
               "its compute checks (GEMM correctness and TFLOP/s, memory copy bandwidth), then all-reduce, all-gather, "
               "reduce-scatter, all-to-all and ring send/recv within each node, across nodes and over the world, "
               "with algbw and busbw as nccl-tests defines them. Rank 0 writes PREFIX.md and PREFIX.json and names the "
               "outliers (a rank or node more than --outlier-threshold below the median). Exit 0 = all checks pass "
               "and no outlier, 1 = a check failed or an outlier, 2 = no usable GPU (--device cuda). docs/SAFE.md.",
               "preflight"};
  safe::PreflightOptions o;
  std::string ops;
  app.add_option("--device", o.device, "cuda: GPU ranks, NCCL collectives; cpu: CPU ranks, MPI collectives")
      ->capture_default_str();
  app.add_flag("--quick", o.quick, "fewer GEMM sizes and iterations, and --max-bytes 64M unless given");
  app.add_option("--report", o.report, "write the report to PREFIX.md and PREFIX.json (default: a time-stamped name "
                 "under --output-dir)");
  app.add_option("--output-dir", o.output_dir, "where the time-stamped report goes without --report")
      ->capture_default_str();
  app.add_option("--min-gemm-tflops", o.min_gemm_tflops, "fail a rank below this TFLOP/s at the largest GEMM size");
  app.add_option("--min-hbm-gbps", o.min_hbm_gbps, "fail a rank below this memory copy bandwidth (GB/s; HBM on GPUs, "
                 "DRAM on CPU ranks)");
  app.add_option("--ops", ops, "collectives to run, comma-separated (default: all_reduce,all_gather,reduce_scatter,"
                 "all_to_all,send_recv)");
  app.add_option("--min-bytes", o.min_bytes, "smallest collective size (K, M, G = powers of 1024)")->capture_default_str();
  app.add_option("--max-bytes", o.max_bytes, "largest collective size")->capture_default_str();
  app.add_option("--step-factor", o.step_factor, "each size is the previous times this")->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed operations per size")->capture_default_str();
  app.add_option("--iters", o.iters, "timed operations per size")->capture_default_str();
  app.add_option("--outlier-threshold", o.outlier_threshold,
                 "a rank, node or rail this fraction below the median is an outlier")->capture_default_str();
  app.add_option("--emulate-nodes", o.emulate_nodes,
                 "testing only: split the ranks into N pretend nodes of consecutive ranks, to exercise the inter-node "
                 "groups on one machine (the report says so)");
  app.add_option("--distributed-timeout-minutes", o.distributed_timeout_minutes,
                 "a collective or point-to-point wait longer than this aborts the job, naming it (Megatron's "
                 "distributed_timeout_minutes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (app.count("--report") && app.count("--output-dir"))
    throw Error("--report PREFIX names the report files itself; drop --output-dir (it only places the default name)");
  if (o.quick && !app.count("--max-bytes")) o.max_bytes = "64M";
  if (!ops.empty()) o.ops = split(ops, ',');
  return safe::run_preflight(o);
}

}  // namespace primus::cli

// `primus preflight`: node health before a run (src/safe/preflight.h).
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "safe/preflight.h"

namespace primus::cli {

int cmd_preflight(int argc, char** argv) {
  CLI::App app{"Check this node before training: host info, GPU info, a GEMM correctness check, bf16 GEMM "
               "TFLOP/s (square sizes 1024..8192), HBM copy bandwidth; writes a markdown report under "
               "output/preflight/. Exit 0 = all checks pass, 1 = a check failed, 2 = no usable GPU.",
               "preflight"};
  safe::PreflightOptions o;
  app.add_flag("--quick", o.quick, "fewer sizes and iterations");
  app.add_option("--output-dir", o.output_dir, "where the report goes")->capture_default_str();
  app.add_option("--min-gemm-tflops", o.min_gemm_tflops, "fail below this bf16 TFLOP/s at the largest size");
  app.add_option("--min-hbm-gbps", o.min_hbm_gbps, "fail below this HBM copy bandwidth (GB/s)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return safe::run_preflight(o);
}

}  // namespace primus::cli

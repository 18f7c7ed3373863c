// `primus projection`: the parallel layouts of an experiment that fit on N nodes x G GPUs,
// with their memory and a first-order step time (src/safe/projection.h).
#include <fmt/core.h>

#include <fstream>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "config/config.h"
#include "config/describe.h"
#include "core/error.h"
#include "safe/projection.h"

namespace primus::cli {

int cmd_projection(int argc, char** argv) {
  CLI::App app{"Project an experiment onto N nodes x G GPUs: every tensor/pipeline/data/expert-parallel layout with "
               "its memory per GPU (the dry-run estimate) and a step time (compute from a step table measured on the "
               "GPU, or at --tflops; pipeline bubble; tp/cp/dp/pp/ep communication at the bus bandwidths of a "
               "preflight report or the flags); prints the fastest layouts that fit. Its measured error: docs/SAFE.md.",
               "projection"};
  std::string config_path, preflight;
  std::vector<std::string> sets;
  safe::ProjectionInput in;
  double intra = 0, inter = 0;
  int top = 10;
  app.add_option("--config", config_path, "the experiment YAML")->required();
  app.add_option("--set", sets, "override a key, key=value (repeatable)")->allow_extra_args(false);
  app.add_option("--nodes", in.nodes, "nodes")->capture_default_str();
  app.add_option("--gpus-per-node", in.gpus_per_node, "GPUs per node")->capture_default_str();
  std::string table;
  app.add_option("--tflops", in.tflops, "sustained training TFLOP/s of one GPU (the TFLOP/s/GPU of primus train's "
                 "iteration line); with --bench-table, used only for the tp sizes the table lacks");
  app.add_option("--bench-table", table, "the step table `primus bench step` measured on this GPU for this "
                 "experiment: compute from its kernels' times instead of --tflops");
  app.add_option("--gpu-memory-gib", in.gpu_memory_gib, "device memory per GPU")->capture_default_str();
  app.add_option("--fit-fraction", in.fit_fraction, "a layout fits below this share of the device memory")
      ->capture_default_str();
  app.add_option("--preflight", preflight, "a preflight JSON report (primus preflight --report): its median busbw "
                 "per op within and across nodes");
  app.add_option("--intra-busbw", intra, "intra-node bus bandwidth of every op, GB/s (where --preflight has none)");
  app.add_option("--inter-busbw", inter, "inter-node bus bandwidth of every op, GB/s (where --preflight has none)");
  app.add_option("--top", top, "layouts to print")->capture_default_str();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  PRIMUS_CHECK(in.fit_fraction > 0 && in.fit_fraction <= 1, "--fit-fraction {}: expected a share in (0, 1]",
               in.fit_fraction);
  PRIMUS_CHECK(in.gpu_memory_gib > 0, "--gpu-memory-gib {}: expected the device memory in GiB", in.gpu_memory_gib);

  safe::Bandwidths fallback;
  fallback.source = "--intra-busbw / --inter-busbw";
  for (safe::CollectiveOp op : safe::all_collective_ops()) {
    if (intra > 0) fallback.intra[op] = intra;
    if (inter > 0) fallback.inter[op] = inter;
  }
  if (!preflight.empty()) {
    std::ifstream f(preflight);
    PRIMUS_CHECK(f.good(), "--preflight '{}': cannot read it; pass the PREFIX.json that primus preflight --report wrote",
                 preflight);
    in.bw = safe::bandwidths_from_preflight(nlohmann::json::parse(f), fallback);
    in.bw.source = fmt::format("the preflight report {}", preflight);
  } else {
    in.bw = fallback;
  }

  config::LoadOptions options;
  options.sets = sets;
  options.world_size = 0;  // the experiment's own layout; the projection replaces it
  const config::Config cfg = config::load_experiment(config_path, options);
  in.model = config::model_config(cfg);
  in.setup = config::training_setup(cfg);
  in.overlap_grad_reduce = cfg.b("overlap_grad_reduce");
  in.virtual_stages = 1;
  if (!table.empty()) {
    in.table = safe::read_step_table(table);
    in.table_source = table;
  }
  const auto all = safe::project_layouts(in);
  PRIMUS_CHECK(!all.empty(), "no layout of {} GPUs suits this model: global_batch_size {} must be a multiple of "
               "micro_batch_size x dp for some tp x pp x dp = {}", in.nodes * in.gpus_per_node,
               in.setup.global_batch_size, in.nodes * in.gpus_per_node);
  fmt::print("{}", safe::render_projection(in, all, top));
  return 0;
}

}  // namespace primus::cli

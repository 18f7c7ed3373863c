// primus train [pretrain|posttrain] --config EXP.yaml [--set key=value ...] [key=value ...]
//              [--world-size N] [--dry-run [--device-memory GiB]]
//
// Loads and validates the experiment; --dry-run prints the resolved config with sources, the
// checks of cli/dry_run_checks.h (files read and written, refusals, ignored keys, memory), the
// parameter count, FLOPs per token and the memory estimate per GPU, and exits 1 when a check
// found a problem, else 0. Otherwise names the ignored keys (rank 0) and hands the config to
// primus::train::run().
#include <fmt/core.h>

#include <optional>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/dry_run_checks.h"
#include "config/command_line.h"
#include "config/config.h"
#include "config/describe.h"
#include "config/ignored_keys.h"
#include "parallel/launch_info.h"
#include "core/error.h"
#include "train/train.h"

namespace primus::cli {

int cmd_train(int argc, char** argv) {
  CLI::App app{"Train a model from an experiment YAML (upstream Primus format).", "train"};
  std::string config_path;
  std::vector<std::string> sets, positional;
  bool dry_run = false;
  std::optional<int> world_size;
  app.add_option("--config,--exp", config_path, "experiment YAML, e.g. examples/megatron/llama3.1_8B-pretrain.yaml");
  app.add_option("--set", sets, "override a config key: --set key=value (repeatable; highest precedence)")
      ->allow_extra_args(false);
  app.add_flag("--dry-run", dry_run,
               "print the resolved config with sources, check it (the data, tokenizer and checkpoint files exist "
               "and are readable, save and the log directories are writable, nothing the run refuses, keys it would "
               "ignore, memory per GPU against --device-memory), print parameter count, FLOPs/token and memory per "
               "GPU; exit 1 if a check found a problem (all are listed), else 0 (docs/SAFE.md)");
  double device_memory_gib = 80;
  app.add_option("--device-memory", device_memory_gib,
                 "--dry-run: GiB of memory per GPU to compare the estimate with (default 80, an H100; a warning above "
                 "95% of it; 0: no comparison)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--world-size", world_size,
                 "number of processes (default: $WORLD_SIZE; for --dry-run without it, the smallest that fits)");
  app.add_option("args", positional, "optional pretrain|posttrain, then key=value overrides");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  const auto args = config::split_positional(positional, {"pretrain", "posttrain"}, "primus train");
  if (config_path.empty()) {
    fmt::print(stderr, "primus train: --config EXP.yaml is required (e.g. --config "
                       "examples/megatron/llama3.1_8B-pretrain.yaml)\n");
    return 2;
  }
  const config::EnvLookup env = config::process_env();
  config::LoadOptions options;
  options.sets = sets;
  options.sets.insert(options.sets.end(), args.sets.begin(), args.sets.end());
  // Without --world-size or WORLD_SIZE, a run takes its world from the launcher (mpirun's
  // OMPI_COMM_WORLD_SIZE, srun's, PMI's: parallel/launch_info.h), so `mpirun -np 4 primus train`
  // validates the layout against 4 processes.
  const parallel::LaunchInfo launch = parallel::detect_launch();
  options.world_size =
      config::resolve_world_size(world_size, env, dry_run ? (launch.distributed() ? launch.world_size : 0)
                                                          : launch.world_size);
  const bool assumed_world = !world_size && !env("WORLD_SIZE") && !launch.distributed() && dry_run;
  config::Config cfg = config::load_experiment(config_path, options);

  if (!args.mode.empty()) {
    const std::string want = args.mode == "pretrain" ? "pre_trainer" : "post_trainer";
    if (cfg.module_kind != want)
      throw Error(fmt::format("'primus train {}' needs a `{}` module, but {} has `{}`", args.mode, want, config_path,
                              cfg.module_kind));
  }

  if (dry_run) {
    fmt::print("{}", config::describe_config(cfg));
    if (assumed_world)
      fmt::print("note: no --world-size or WORLD_SIZE given; assumed the smallest world that fits the layout: {}\n\n",
                 cfg.world_size);
    const DryRunReport checks = dry_run_checks(cfg, device_memory_gib);
    fmt::print("{}\n", checks.text());
    fmt::print("{}", config::describe_model(cfg, device_memory_gib));
    fmt::print("\n{}\n", checks.verdict());
    return checks.problems.empty() ? 0 : 1;
  }
  if (launch.rank == 0)
    for (const config::IgnoredKey& k : config::ignored_keys(cfg)) fmt::print(stderr, "warning: {}\n", k.message());
  return primus::train::run(cfg);
}

}  // namespace primus::cli

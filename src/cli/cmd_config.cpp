// primus config --list [--group G] [--markdown]
// primus config --show EXP.yaml [--set key=value ...] [key=value ...] [--world-size N] [--json]
#include <fmt/core.h>

#include <optional>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "config/command_line.h"
#include "config/config.h"
#include "config/describe.h"

namespace primus::cli {

int cmd_config(int argc, char** argv) {
  CLI::App app{"List every config key, or show an experiment's resolved config with sources.", "config"};
  bool list = false, markdown = false, as_json = false;
  std::string group, show;
  std::vector<std::string> sets, positional;
  std::optional<int> world_size;
  app.add_flag("--list", list, "print the schema: every key with its type, default and doc, grouped");
  app.add_option("--group", group, "with --list: only this group (e.g. model, optimizer, parallelism)");
  app.add_flag("--markdown", markdown, "with --list: a Markdown table");
  app.add_option("--show", show, "print the resolved config of this experiment YAML with the source of each value");
  app.add_option("--set", sets, "with --show: override a key, key=value (repeatable)")->allow_extra_args(false);
  app.add_option("--world-size", world_size, "with --show: number of processes (default: $WORLD_SIZE, else the "
                                             "smallest that fits)");
  app.add_flag("--json", as_json, "with --show: print the config as JSON (what checkpoints store)");
  app.add_option("args", positional, "with --show: key=value overrides");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  if (list == !show.empty()) {
    fmt::print(stderr, "primus config: give either --list or --show EXP.yaml (see primus config --help)\n");
    return 2;
  }
  if (list) {
    fmt::print("{}", markdown ? config::describe_schema_markdown() : config::describe_schema(group));
    return 0;
  }
  const auto args = config::split_positional(positional, {}, "primus config");
  const config::EnvLookup env = config::process_env();
  config::LoadOptions options;
  options.sets = sets;
  options.sets.insert(options.sets.end(), args.sets.begin(), args.sets.end());
  options.world_size = config::resolve_world_size(world_size, env, 0);
  const config::Config cfg = config::load_experiment(show, options);
  if (as_json)
    fmt::print("{}\n", cfg.to_json().dump(2));
  else
    fmt::print("{}", config::describe_config(cfg));
  return 0;
}

}  // namespace primus::cli

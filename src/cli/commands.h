// The subcommands of the `primus` binary: one file each (cmd_<name>.cpp).
#pragma once

#include <string_view>
#include <vector>

namespace primus::cli {

// Each command gets argv without the program name: argv[0] is the subcommand itself.
using CommandFn = int (*)(int argc, char** argv);

struct Command {
  std::string_view name;
  std::string_view summary;
  CommandFn run;
};

int cmd_train(int argc, char** argv);
int cmd_preprocess(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_preflight(int argc, char** argv);
int cmd_node_smoke(int argc, char** argv);
int cmd_projection(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_tune(int argc, char** argv);
int cmd_config(int argc, char** argv);
int cmd_plot(int argc, char** argv);

const std::vector<Command>& commands();

}  // namespace primus::cli

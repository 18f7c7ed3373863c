#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_plot(int argc, char** argv) {
  CLI::App app{"primus plot", "plot"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("plot", "plots loss/lr curves", "issue #6");
}

}  // namespace primus::cli

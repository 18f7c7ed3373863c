#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_tune(int argc, char** argv) {
  CLI::App app{"primus tune", "tune"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("tune", "runs GEMM tuning stages", "issue #5");
}

}  // namespace primus::cli

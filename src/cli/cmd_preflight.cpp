#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_preflight(int argc, char** argv) {
  CLI::App app{"primus preflight", "preflight"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("preflight", "checks GPUs, GEMM and NCCL bandwidth", "issue #5/#7");
}

}  // namespace primus::cli

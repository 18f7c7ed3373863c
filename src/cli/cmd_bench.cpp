#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_bench(int argc, char** argv) {
  CLI::App app{"primus bench", "bench"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("bench", "benchmarks GEMM, attention and collectives", "issue #5");
}

}  // namespace primus::cli

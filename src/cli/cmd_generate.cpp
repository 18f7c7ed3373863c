#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_generate(int argc, char** argv) {
  CLI::App app{"primus generate", "generate"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("generate", "generates text from a checkpoint", "issue #6");
}

}  // namespace primus::cli

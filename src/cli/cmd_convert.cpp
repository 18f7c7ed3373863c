#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_convert(int argc, char** argv) {
  CLI::App app{"primus convert", "convert"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("convert", "converts HF <-> Primus checkpoints", "issue #6");
}

}  // namespace primus::cli

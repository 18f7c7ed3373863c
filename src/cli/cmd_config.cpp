#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_config(int argc, char** argv) {
  CLI::App app{"primus config", "config"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("config", "lists config keys", "issue #2");
}

}  // namespace primus::cli

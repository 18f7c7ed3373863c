#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_preprocess(int argc, char** argv) {
  CLI::App app{"primus preprocess", "preprocess"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("preprocess", "tokenizes JSONL into .bin/.idx", "issue #3");
}

}  // namespace primus::cli

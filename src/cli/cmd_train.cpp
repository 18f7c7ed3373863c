#include "cli/cli_common.h"
#include "cli/commands.h"

namespace primus::cli {

int cmd_train(int argc, char** argv) {
  CLI::App app{"primus train", "train"};
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  return not_built_yet("train", "trains a model from an experiment YAML", "issue #4");
}

}  // namespace primus::cli

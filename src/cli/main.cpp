// primus: one binary, many subcommands (train, preprocess, convert, generate, ...).
#include <fmt/core.h>

#include <exception>
#include <string>

#include "cli/commands.h"
#include "config/retired_env.h"
#include "core/error.h"
#include "core/strings.h"
#include "ops/cpu/openblas_kernels.h"

namespace {

void print_usage() {
  fmt::print("primus — pretraining, post-training and inference of large language models\n\n");
  fmt::print("usage: primus <command> [options]   (primus <command> --help for its options)\n\n");
  fmt::print("commands:\n");
  for (const auto& c : primus::cli::commands()) fmt::print("  {:<12} {}\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  primus::ops::cpu::restart_with_faster_openblas_kernels(argv);  // before any GEMM: see the header
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  if (name == "--version" || name == "version") {
    fmt::print("primus 0.1.0\n");
    return 0;
  }
  std::vector<std::string> names;
  for (const auto& c : primus::cli::commands()) {
    names.emplace_back(c.name);
    if (c.name == name) {
      try {
        // Variables that used to steer the engine are experiment keys now: refused, never ignored.
        primus::config::refuse_retired_env(primus::config::process_env());
        return c.run(argc - 1, argv + 1);
      } catch (const primus::Error& e) {
        fmt::print(stderr, "primus {}: error: {}\n", name, e.what());
        return 1;
      } catch (const std::exception& e) {
        fmt::print(stderr, "primus {}: internal error: {}\n", name, e.what());
        return 1;
      }
    }
  }
  fmt::print(stderr, "primus: unknown command '{}'{}\nRun 'primus --help' for the list of commands.\n", name,
             primus::did_you_mean(name, names));
  return 2;
}

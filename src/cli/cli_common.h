// Helpers shared by subcommands: CLI11 parsing with "did you mean" errors, and a
// uniform "not built yet" answer for commands whose issue has not landed.
#pragma once

#include <CLI/CLI.hpp>

#include <string_view>

namespace primus::cli {

// Parses argv into `app`. Returns -1 to continue, or an exit code to return now
// (0 after --help, 2 after a usage error, printed with the nearest valid option).
int parse(CLI::App& app, int argc, char** argv);

// For a listed command whose implementation has not landed yet.
int not_built_yet(std::string_view command, std::string_view what_it_will_do, std::string_view issue);

}  // namespace primus::cli

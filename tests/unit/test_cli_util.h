// Running the built `primus` binary from a test: one shell command line, its combined
// stdout + stderr and its exit code.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace primus::test {

struct CliRun {
  int code = -1;       // exit status; -1 when the command could not start or did not exit
  std::string output;  // stdout and stderr
};

// Runs `command` through the shell with stderr folded into stdout.
inline CliRun run_shell(const std::string& command) {
  CliRun r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace primus::test

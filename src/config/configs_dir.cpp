// Finding configs/: the environment, then next to the executable, then the source tree.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>

#include "config/config.h"
#include "core/error.h"

namespace primus::config {

namespace fs = std::filesystem;

namespace {

fs::path executable_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return {};
  buf[n] = '\0';
  return fs::path(buf).parent_path();
}

bool is_configs_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p / "modules", ec) && fs::is_directory(p / "models", ec);
}

}  // namespace

std::string find_configs_dir(const EnvLookup& env) {
  if (auto from_env = env("PRIMUS_CONFIGS_DIR")) {
    if (!is_configs_dir(*from_env))
      throw Error(fmt::format("PRIMUS_CONFIGS_DIR={} is not a configs folder (expected modules/ and models/ in it)",
                              *from_env));
    return fs::path(*from_env).lexically_normal().string();
  }
  std::vector<fs::path> tried;
  const fs::path exe = executable_dir();
  if (!exe.empty()) {
    // build/bin/primus -> ../../configs (the source tree); an install prefix's bin/ -> ../configs.
    tried.push_back(exe / ".." / ".." / "configs");
    tried.push_back(exe / ".." / "configs");
  }
#ifdef PRIMUS_SOURCE_DIR
  tried.push_back(fs::path(PRIMUS_SOURCE_DIR) / "configs");
#endif
  for (const fs::path& p : tried)
    if (is_configs_dir(p)) return fs::weakly_canonical(p).string();
  std::string list;
  for (const fs::path& p : tried) list += "\n  " + p.lexically_normal().string();
  throw Error(fmt::format("cannot find the configs folder (modules/ and models/); tried:{}\nset PRIMUS_CONFIGS_DIR", list));
}

}  // namespace primus::config

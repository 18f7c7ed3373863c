#include "convert/staged_dir.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <regex>

#include <fmt/format.h>

#include "core/error.h"
#include "core/durable_file.h"

namespace primus::convert {

namespace fs = std::filesystem;

namespace {

bool process_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

fs::path absolute_clean(const std::string& p) {
  fs::path a = fs::absolute(p).lexically_normal();
  if (a.filename().empty()) a = a.parent_path();  // "dir/" -> "dir"
  return a;
}

// Removes .<name>.tmp-<pid> / .<name>.old-<pid> left by killed conversions into `target`.
void remove_stale(const fs::path& target) {
  const std::regex re("\\." + std::regex_replace(target.filename().string(), std::regex(R"([.^$|()\[\]{}*+?\\])"),
                                                 R"(\$&)") +
                      R"(\.(tmp|old)-(\d+))");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(target.parent_path(), ec)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, re) && !process_alive(std::stol(m[2]))) fs::remove_all(entry.path(), ec);
  }
}

}  // namespace

void check_output_apart_from_input(const std::string& output, const std::string& input) {
  const fs::path out = absolute_clean(output), in = absolute_clean(input);
  // The input equal to or below the output: replacing the output (--force) would delete it.
  auto [oi, ii] = std::mismatch(out.begin(), out.end(), in.begin(), in.end());
  PRIMUS_CHECK(oi != out.end(), "the output '{}' is or contains the input '{}'; write the converted model to a "
               "separate directory", output, input);
}

StagedDir::StagedDir(const std::string& target, bool force, const std::string& what) {
  const fs::path t = absolute_clean(target);
  target_ = t.string();
  std::error_code ec;
  if (fs::exists(t, ec)) {
    PRIMUS_CHECK(fs::is_directory(t, ec), "{} '{}' exists and is not a directory; choose another path", what,
                 target_);
    PRIMUS_CHECK(force || fs::is_empty(t, ec), "{} '{}' exists and is not empty; pass --force to replace it, or "
                 "choose another directory", what, target_);
  }
  fs::create_directories(t.parent_path(), ec);
  PRIMUS_CHECK(!ec, "cannot create '{}' (parent of {} '{}'): {}", t.parent_path().string(), what, target_,
               ec.message());
  remove_stale(t);
  staging_ = (t.parent_path() / fmt::format(".{}.tmp-{}", t.filename().string(), ::getpid())).string();
  fs::remove_all(staging_, ec);
  PRIMUS_CHECK(fs::create_directory(staging_, ec) && !ec, "cannot create '{}' (staging for {} '{}'): {}", staging_,
               what, target_, ec.message());
}

StagedDir::~StagedDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagedDir::commit() {
  PRIMUS_CHECK(!committed_, "StagedDir '{}' committed twice", target_);
  durable::fsync_path(staging_);
  const fs::path t = target_;
  std::error_code ec;
  std::string old;
  if (fs::exists(t, ec)) {
    // An empty directory or, with force, the previous content: move it aside first so the
    // target name only ever holds a complete directory.
    old = (t.parent_path() / fmt::format(".{}.old-{}", t.filename().string(), ::getpid())).string();
    durable::rename_path(target_, old);
  }
  durable::rename_path(staging_, target_);
  durable::fsync_path(t.parent_path().string());
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace primus::convert

// The run's logger: rank 0 talks to the console, every rank writes its own file.
//
// Files live where Primus users look for them:
//     <workspace>/<work_group>/<user_name>/<exp_name>/logs/rank_<N>.log
// (created on demand, appended to across restarts so `tail -f` keeps working, flushed on
// every message at INFO and above). The console (stderr, as upstream's "stderr sink")
// shows rank 0's messages at `stderr_sink_level` and other ranks' errors only.
// A Logger is an object passed to whoever logs: nothing is registered in spdlog's
// global registry and the default logger is left alone.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <spdlog/common.h>

namespace spdlog {
class logger;
}

namespace primus::train {

// "DEBUG", "INFO", "WARNING" (or "WARN"), "ERROR", plus "TRACE" and "CRITICAL";
// case-insensitive. Throws primus::Error naming the key and the accepted values.
spdlog::level::level_enum parse_log_level(std::string_view name, std::string_view key = "stderr_sink_level");

// <workspace>/<work_group>/<user_name>/<exp_name>/logs
std::string experiment_log_dir(const std::string& workspace, const std::string& work_group,
                               const std::string& user_name, const std::string& exp_name);
std::string rank_log_path(const std::string& log_dir, int rank);  // <log_dir>/rank_<rank>.log

struct LoggerOptions {
  int rank = 0;
  int world_size = 1;
  std::string stderr_sink_level = "INFO";
  std::string log_dir;   // empty: no file
  bool console = true;   // false: files only (tests, embedded use)
};

class Logger {
 public:
  explicit Logger(const LoggerOptions& options);
  static Logger silent();  // no console, no file
  ~Logger();
  Logger(Logger&&) noexcept;
  Logger& operator=(Logger&&) noexcept;

  void log(spdlog::level::level_enum level, std::string_view message);
  template <typename... Args>
  void debug(fmt::format_string<Args...> f, Args&&... args) { log(spdlog::level::debug, fmt::format(f, std::forward<Args>(args)...)); }
  template <typename... Args>
  void info(fmt::format_string<Args...> f, Args&&... args) { log(spdlog::level::info, fmt::format(f, std::forward<Args>(args)...)); }
  template <typename... Args>
  void warn(fmt::format_string<Args...> f, Args&&... args) { log(spdlog::level::warn, fmt::format(f, std::forward<Args>(args)...)); }
  template <typename... Args>
  void error(fmt::format_string<Args...> f, Args&&... args) { log(spdlog::level::err, fmt::format(f, std::forward<Args>(args)...)); }
  void flush();

  int rank() const { return rank_; }
  const std::string& file_path() const { return file_path_; }  // empty without a file
  spdlog::logger& spd();  // for code that wants spdlog directly

 private:
  int rank_ = 0;
  std::string file_path_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace primus::train

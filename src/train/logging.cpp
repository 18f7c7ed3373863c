#include "train/logging.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <vector>

#include <spdlog/logger.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include "core/error.h"

namespace primus::train {

spdlog::level::level_enum parse_log_level(std::string_view name, std::string_view key) {
  std::string upper(name);
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return std::toupper(c); });
  if (upper == "TRACE") return spdlog::level::trace;
  if (upper == "DEBUG") return spdlog::level::debug;
  if (upper == "INFO") return spdlog::level::info;
  if (upper == "WARNING" || upper == "WARN") return spdlog::level::warn;
  if (upper == "ERROR") return spdlog::level::err;
  if (upper == "CRITICAL") return spdlog::level::critical;
  fail("{}: unknown log level '{}'; use one of DEBUG, INFO, WARNING, ERROR (or TRACE, CRITICAL)", key, name);
}

std::string experiment_log_dir(const std::string& workspace, const std::string& work_group,
                               const std::string& user_name, const std::string& exp_name) {
  return (std::filesystem::path(workspace) / work_group / user_name / exp_name / "logs").string();
}

std::string rank_log_path(const std::string& log_dir, int rank) {
  return (std::filesystem::path(log_dir) / fmt::format("rank_{}.log", rank)).string();
}

Logger::Logger(const LoggerOptions& options) : rank_(options.rank) {
  const spdlog::level::level_enum console_level = parse_log_level(options.stderr_sink_level);
  const std::string prefix = fmt::format("[%Y-%m-%d %H:%M:%S.%e][rank-{}/{}]", options.rank, options.world_size);
  std::vector<spdlog::sink_ptr> sinks;
  if (options.console) {
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    // Rank 0 speaks for the run; other ranks only surface their errors.
    console->set_level(options.rank == 0 ? console_level : spdlog::level::err);
    console->set_pattern(prefix + "[%^%l%$] %v");
    sinks.push_back(console);
  }
  if (!options.log_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.log_dir, ec);
    PRIMUS_CHECK(!ec, "cannot create the log directory '{}' ({}); check `workspace` in the experiment file",
                 options.log_dir, ec.message());
    file_path_ = rank_log_path(options.log_dir, options.rank);
    try {
      auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file_path_, /*truncate=*/false);
      file->set_level(spdlog::level::trace);
      file->set_pattern(prefix + "[%l] %v");
      sinks.push_back(file);
    } catch (const spdlog::spdlog_ex& e) {
      fail("cannot open the rank log file '{}': {}", file_path_, e.what());
    }
  }
  if (sinks.empty()) sinks.push_back(std::make_shared<spdlog::sinks::null_sink_mt>());
  logger_ = std::make_shared<spdlog::logger>(fmt::format("primus-rank{}", options.rank), sinks.begin(), sinks.end());
  logger_->set_level(spdlog::level::trace);  // each sink filters for itself
  logger_->flush_on(spdlog::level::info);
  if (!file_path_.empty())
    logger_->log(spdlog::level::debug, fmt::format("log opened (pid {}, rank {}/{})", getpid(), options.rank,
                                                   options.world_size));
}

Logger Logger::silent() {
  LoggerOptions o;
  o.console = false;
  return Logger(o);
}

Logger::~Logger() {
  if (logger_) logger_->flush();
}
Logger::Logger(Logger&&) noexcept = default;
Logger& Logger::operator=(Logger&&) noexcept = default;

void Logger::log(spdlog::level::level_enum level, std::string_view message) {
  logger_->log(level, message);
}

void Logger::flush() { logger_->flush(); }

spdlog::logger& Logger::spd() { return *logger_; }

}  // namespace primus::train

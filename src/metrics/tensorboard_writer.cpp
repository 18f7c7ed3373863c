#include "metrics/tensorboard_writer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "metrics/tensorboard_record.h"

namespace primus::metrics {

namespace {

double wall_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  PRIMUS_CHECK(!ec, "tensorboard_dir '{}': cannot create it ({}); set tensorboard_dir to a writable "
               "directory or disable_tensorboard: true", dir, ec.message());
  const double now = wall_time_now();
  path_ = (std::filesystem::path(dir) /
           fmt::format("events.out.tfevents.{}.{}.{}", static_cast<int64_t>(now), host_name(), getpid()))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  PRIMUS_CHECK(file_ != nullptr, "cannot create the TensorBoard event file '{}': {}", path_,
               std::strerror(errno));
  pending_ = tfevents::frame_record(tfevents::encode_file_version_event(now));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (!file_) return;
  try {
    flush();
  } catch (...) {
    // A destructor must not throw; the records already written stay valid.
  }
  std::fclose(file_);
}

void TensorBoardWriter::add_scalar(std::string_view tag, double value, int64_t step) {
  tfevents::Scalar s{std::string(tag), static_cast<float>(value)};
  pending_ += tfevents::frame_record(tfevents::encode_scalars_event(wall_time_now(), step, {s}));
}

void TensorBoardWriter::add_scalars(const std::vector<std::pair<std::string, double>>& scalars, int64_t step) {
  for (const auto& [tag, value] : scalars) add_scalar(tag, value, step);
}

void TensorBoardWriter::flush() {
  if (!pending_.empty()) {
    const size_t n = std::fwrite(pending_.data(), 1, pending_.size(), file_);
    PRIMUS_CHECK(n == pending_.size(), "writing the TensorBoard event file '{}' failed after {} of {} bytes: {}",
                 path_, n, pending_.size(), std::strerror(errno));
    pending_.clear();
  }
  PRIMUS_CHECK(std::fflush(file_) == 0, "flushing the TensorBoard event file '{}' failed: {}", path_,
               std::strerror(errno));
}

}  // namespace primus::metrics

#include "metrics/tensorboard_reader.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "metrics/tensorboard_record.h"

namespace primus::metrics {

namespace fs = std::filesystem;

std::vector<std::string> find_event_files(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().filename().string().find("tfevents") != std::string::npos)
      files.push_back(entry.path().string());
  }
  PRIMUS_CHECK(!ec, "cannot list '{}': {}", dir, ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

std::map<std::string, std::vector<ScalarPoint>> read_tensorboard_scalars(const std::string& path) {
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    files = find_event_files(path);
    PRIMUS_CHECK(!files.empty(), "no TensorBoard event files (events.out.tfevents.*) in '{}'", path);
  } else {
    PRIMUS_CHECK(fs::is_regular_file(path), "'{}' is neither an event file nor a directory", path);
    files.push_back(path);
  }
  std::map<std::string, std::map<int64_t, ScalarPoint>> by_step;
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    PRIMUS_CHECK(in.good(), "cannot open the event file '{}'", file);
    std::stringstream buf;
    buf << in.rdbuf();
    const std::string bytes = buf.str();
    for (const std::string& record : tfevents::split_records(bytes, file)) {
      const tfevents::Event ev = tfevents::decode_event(record);
      for (const auto& s : ev.scalars) by_step[s.tag][ev.step] = ScalarPoint{ev.step, ev.wall_time, s.value};
    }
  }
  std::map<std::string, std::vector<ScalarPoint>> out;
  for (auto& [tag, points] : by_step) {
    auto& v = out[tag];
    for (auto& [step, p] : points) v.push_back(p);
  }
  return out;
}

}  // namespace primus::metrics

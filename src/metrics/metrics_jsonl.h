// metrics.jsonl: one JSON object per line, appended and flushed as each line is written,
// so a crash loses at most the line being written (readers skip a torn last line).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace primus::metrics {

class JsonlWriter {
 public:
  explicit JsonlWriter(const std::string& path);  // creates parent directories; appends
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;

  void write(const nlohmann::json& object);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Every complete line of a JSONL file parsed; an unparsable *last* line (torn write) is
// skipped, an unparsable line elsewhere is an error naming the file and line number.
std::vector<nlohmann::json> read_jsonl(const std::string& path);

}  // namespace primus::metrics

#include "metrics/metrics_jsonl.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace primus::metrics {

JsonlWriter::JsonlWriter(const std::string& path) : path_(path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    PRIMUS_CHECK(!ec, "cannot create '{}' for the metrics file: {}", parent.string(), ec.message());
  }
  file_ = std::fopen(path.c_str(), "ab");
  PRIMUS_CHECK(file_ != nullptr, "cannot open the metrics file '{}': {}", path, std::strerror(errno));
}

JsonlWriter::~JsonlWriter() {
  if (file_) std::fclose(file_);
}

void JsonlWriter::write(const nlohmann::json& object) {
  // Replace invalid UTF-8 rather than throw: a metrics line must never stop training.
  const std::string line = object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const size_t n = std::fwrite(line.data(), 1, line.size(), file_);
  PRIMUS_CHECK(n == line.size() && std::fflush(file_) == 0, "writing the metrics file '{}' failed: {}", path_,
               std::strerror(errno));
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  PRIMUS_CHECK(in.good(), "cannot open the metrics file '{}'", path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<nlohmann::json> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back(nlohmann::json::parse(lines[i]));
    } catch (const nlohmann::json::parse_error& e) {
      if (i + 1 == lines.size()) break;  // torn last line of a killed writer
      fail("{}:{}: not a JSON object ({})", path, i + 1, e.what());
    }
  }
  return out;
}

}  // namespace primus::metrics

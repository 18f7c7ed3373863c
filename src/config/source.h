// Where a config value came from: a file and line, the command line, the schema's
// default, or a value derived from other keys.
#pragma once

#include <string>

namespace primus::config {

struct Source {
  std::string file;  // a path, or "command line", "schema default", "derived (...)"
  int line = 0;      // 1-based; 0 when the source is not a file

  // "path:12" for files, the plain text otherwise.
  std::string str() const { return line > 0 ? file + ":" + std::to_string(line) : file; }
  bool operator==(const Source&) const = default;
};

inline constexpr const char* kCommandLine = "command line";
inline constexpr const char* kSchemaDefault = "schema default";

}  // namespace primus::config

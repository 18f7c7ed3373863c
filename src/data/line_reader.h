// Reads a text file line by line in constant memory: plain, gzip (.gz) or zstd (.zst),
// chosen by the file's magic bytes, not its name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace primus::data {

class LineReader {
 public:
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Next line without its '\n'; false at the end of the file.
  bool next(std::string& line);
  int64_t line_number() const { return line_no_; }  // of the line last returned, from 1
  // Bytes of the file consumed so far and its size (compressed bytes for .gz/.zst): for
  // progress and ETA.
  int64_t file_bytes_read() const;
  int64_t file_size() const { return file_size_; }
  const std::string& path() const { return path_; }

  class Source;  // the decompressing byte stream (defined in the .cpp)

 private:
  bool fill();
  std::string path_;
  std::unique_ptr<Source> source_;
  std::string buf_;
  size_t pos_ = 0;
  bool eof_ = false;
  int64_t line_no_ = 0;
  int64_t file_size_ = 0;
};

}  // namespace primus::data

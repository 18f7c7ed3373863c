#include "data/line_reader.h"

#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.h"

namespace primus::data {

// A stream of decompressed bytes.
class LineReader::Source {
 public:
  virtual ~Source() = default;
  virtual size_t read(char* dst, size_t n) = 0;  // 0 at the end
  virtual int64_t consumed() const = 0;
};

namespace {

struct FileSource {
  std::FILE* f = nullptr;
  std::string path;
  explicit FileSource(const std::string& p) : path(p) {
    f = std::fopen(p.c_str(), "rb");
    PRIMUS_CHECK(f != nullptr, "cannot open input {}: {}", p, std::strerror(errno));
  }
  ~FileSource() {
    if (f) std::fclose(f);
  }
};

}  // namespace

class PlainFile final : public LineReader::Source {
 public:
  explicit PlainFile(const std::string& p) : file_(p) {}
  size_t read(char* dst, size_t n) override {
    const size_t got = std::fread(dst, 1, n, file_.f);
    PRIMUS_CHECK(got > 0 || !std::ferror(file_.f), "reading {} failed", file_.path);
    consumed_ += static_cast<int64_t>(got);
    return got;
  }
  int64_t consumed() const override { return consumed_; }

 private:
  FileSource file_;
  int64_t consumed_ = 0;
};

class GzipFile final : public LineReader::Source {
 public:
  explicit GzipFile(const std::string& p) : path_(p) {
    gz_ = gzopen(p.c_str(), "rb");
    PRIMUS_CHECK(gz_ != nullptr, "cannot open gzip input {}", p);
    gzbuffer(gz_, 1 << 20);
  }
  ~GzipFile() override {
    if (gz_) gzclose(gz_);
  }
  size_t read(char* dst, size_t n) override {
    const int got = gzread(gz_, dst, static_cast<unsigned>(n));
    if (got < 0) {
      int err = 0;
      fail("{}: gzip stream is corrupt ({})", path_, gzerror(gz_, &err));
    }
    return static_cast<size_t>(got);
  }
  int64_t consumed() const override { return static_cast<int64_t>(gzoffset(gz_)); }

 private:
  std::string path_;
  gzFile gz_ = nullptr;
};

class ZstdFile final : public LineReader::Source {
 public:
  explicit ZstdFile(const std::string& p) : file_(p), in_(ZSTD_DStreamInSize()) {
    ds_ = ZSTD_createDStream();
    ZSTD_initDStream(ds_);
  }
  ~ZstdFile() override { ZSTD_freeDStream(ds_); }
  size_t read(char* dst, size_t n) override {
    ZSTD_outBuffer out{dst, n, 0};
    while (out.pos == 0) {
      if (in_buf_.pos == in_buf_.size) {
        const size_t got = std::fread(in_.data(), 1, in_.size(), file_.f);
        if (got == 0) {
          PRIMUS_CHECK(last_ret_ == 0, "{}: zstd stream ends in the middle of a frame (truncated file)", file_.path);
          return 0;
        }
        consumed_ += static_cast<int64_t>(got);
        in_buf_ = {in_.data(), got, 0};
      }
      last_ret_ = ZSTD_decompressStream(ds_, &out, &in_buf_);
      PRIMUS_CHECK(!ZSTD_isError(last_ret_), "{}: zstd stream is corrupt ({})", file_.path,
                   ZSTD_getErrorName(last_ret_));
    }
    return out.pos;
  }
  int64_t consumed() const override { return consumed_; }

 private:
  FileSource file_;
  std::vector<char> in_;
  ZSTD_inBuffer in_buf_{nullptr, 0, 0};
  ZSTD_DStream* ds_ = nullptr;
  size_t last_ret_ = 0;
  int64_t consumed_ = 0;
};

LineReader::LineReader(const std::string& path) : path_(path) {
  PRIMUS_CHECK(std::filesystem::is_regular_file(path), "input {} does not exist or is not a file", path);
  file_size_ = static_cast<int64_t>(std::filesystem::file_size(path));
  unsigned char magic[4] = {0, 0, 0, 0};
  {
    FileSource f(path);
    (void)std::fread(magic, 1, 4, f.f);
  }
  if (magic[0] == 0x1f && magic[1] == 0x8b)
    source_ = std::make_unique<GzipFile>(path);
  else if (magic[0] == 0x28 && magic[1] == 0xB5 && magic[2] == 0x2F && magic[3] == 0xFD)
    source_ = std::make_unique<ZstdFile>(path);
  else
    source_ = std::make_unique<PlainFile>(path);
}

LineReader::~LineReader() = default;

int64_t LineReader::file_bytes_read() const { return source_->consumed(); }

bool LineReader::fill() {
  if (eof_) return false;
  buf_.erase(0, pos_);
  pos_ = 0;
  const size_t old = buf_.size();
  constexpr size_t kChunk = 1 << 20;
  buf_.resize(old + kChunk);
  const size_t got = source_->read(buf_.data() + old, kChunk);
  buf_.resize(old + got);
  if (got == 0) eof_ = true;
  return got > 0;
}

bool LineReader::next(std::string& line) {
  while (true) {
    const char* start = buf_.data() + pos_;
    const void* nl = std::memchr(start, '\n', buf_.size() - pos_);
    if (nl) {
      const size_t len = static_cast<const char*>(nl) - start;
      line.assign(start, len);
      pos_ += len + 1;
      ++line_no_;
      return true;
    }
    if (!fill()) {
      if (pos_ < buf_.size()) {  // last line without '\n'
        line.assign(buf_.data() + pos_, buf_.size() - pos_);
        pos_ = buf_.size();
        ++line_no_;
        return true;
      }
      return false;
    }
  }
}

}  // namespace primus::data

#include "data/npy.h"

#include <fmt/core.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace primus::data {

namespace {

void write_npy(const std::string& path, const char* descr, const void* data, size_t bytes, int64_t rows, int64_t cols) {
  std::string shape = cols == 1 ? fmt::format("({},)", rows) : fmt::format("({}, {})", rows, cols);
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  PRIMUS_CHECK(f != nullptr, "cannot write index cache file {}: {}", tmp, std::strerror(errno));
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  bool ok = std::fwrite(magic, 1, 8, f) == 8 && std::fwrite(&hlen, 1, 2, f) == 2 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            (bytes == 0 || std::fwrite(data, 1, bytes, f) == bytes);
  ok &= std::fclose(f) == 0;
  PRIMUS_CHECK(ok, "writing {} failed (disk full?)", tmp);
  std::filesystem::rename(tmp, path);
}

template <typename T>
std::optional<std::vector<T>> read_npy(const std::string& path, const char* descr) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return std::nullopt;
  char magic[8];
  uint16_t hlen = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0 || !in.read(reinterpret_cast<char*>(&hlen), 2))
    return std::nullopt;
  std::string header(hlen, '\0');
  if (!in.read(header.data(), hlen)) return std::nullopt;
  if (header.find(std::string("'descr': '") + descr + "'") == std::string::npos) return std::nullopt;
  const size_t s = header.find("'shape': (");
  if (s == std::string::npos) return std::nullopt;
  int64_t rows = 0, cols = 1;
  const char* p = header.c_str() + s + 10;
  if (std::sscanf(p, "%ld, %ld", &rows, &cols) < 1) return std::nullopt;
  if (header.find(",)") != std::string::npos) cols = 1;
  std::vector<T> v(static_cast<size_t>(rows * cols));
  if (!v.empty() && !in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T))))
    return std::nullopt;
  return v;
}

}  // namespace

void npy_write_i32(const std::string& path, const std::vector<int32_t>& v) {
  write_npy(path, "<i4", v.data(), v.size() * 4, static_cast<int64_t>(v.size()), 1);
}
void npy_write_i64(const std::string& path, const std::vector<int64_t>& v, int64_t cols) {
  write_npy(path, "<i8", v.data(), v.size() * 8, static_cast<int64_t>(v.size()) / cols, cols);
}
std::optional<std::vector<int32_t>> npy_read_i32(const std::string& path) { return read_npy<int32_t>(path, "<i4"); }
std::optional<std::vector<int64_t>> npy_read_i64(const std::string& path) { return read_npy<int64_t>(path, "<i8"); }

}  // namespace primus::data

#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "core/strings.h"

namespace primus {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit on header size

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    PRIMUS_CHECK(w > 0, "writing safetensors file '{}': {}", path, std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensorList& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    PRIMUS_CHECK(name != "__metadata__", "save_safetensors '{}': '__metadata__' is reserved, not a tensor name", path);
    PRIMUS_CHECK(seen.insert(name).second, "save_safetensors '{}': tensor name '{}' appears twice", path, name);
    PRIMUS_CHECK(t.defined(), "save_safetensors '{}': tensor '{}' is undefined", path, name);
    host.push_back(t.device() == Device::CPU ? t : t.to(Device::CPU));
    header[name] = {{"dtype", std::string(safetensors_name(t.dtype()))},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // pad so the data section is 8-byte aligned
  const uint64_t n = json.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  PRIMUS_CHECK(fd >= 0, "cannot create '{}' (writing '{}'): {}", tmp, path, std::strerror(errno));
  try {
    write_all(fd, len, 8, path);
    write_all(fd, json.data(), json.size(), path);
    for (const Tensor& t : host) write_all(fd, t.raw(), t.nbytes(), path);
    PRIMUS_CHECK(::fsync(fd) == 0, "fsync of '{}' failed: {}", tmp, std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("cannot rename '{}' to '{}': {}", tmp, path, std::strerror(err));
  }
  // Persist the rename itself (the directory entry).
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  PRIMUS_CHECK(fd >= 0, "cannot open safetensors file '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot stat '{}': {}", path, std::strerror(err));
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    fail("'{}' is not a safetensors file: {} bytes, shorter than the 8-byte header length", path, map_size_);
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  PRIMUS_CHECK(map_ != MAP_FAILED, "cannot mmap '{}': {}", path, std::strerror(errno));

  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    uint64_t header_len = 0;
    for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(bytes[i]) << (8 * i);
    PRIMUS_CHECK(header_len <= kMaxHeaderBytes && header_len <= map_size_ - 8,
                 "'{}' is corrupt or truncated: the header claims {} bytes but the file has {} bytes after the "
                 "length field", path, header_len, map_size_ - 8);
    data_ = reinterpret_cast<const char*>(bytes) + 8 + header_len;
    const size_t data_size = map_size_ - 8 - header_len;

    nlohmann::json header;
    try {
      header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes) + 8,
                                     reinterpret_cast<const char*>(bytes) + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
      fail("'{}': the safetensors header is not valid JSON ({})", path, e.what());
    }
    PRIMUS_CHECK(header.is_object(), "'{}': the safetensors header must be a JSON object, got {}", path,
                 header.type_name());
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        PRIMUS_CHECK(value.is_object(), "'{}': __metadata__ must be an object of strings", path);
        for (const auto& [k, v] : value.items()) {
          PRIMUS_CHECK(v.is_string(), "'{}': __metadata__['{}'] must be a string, got {}", path, k, v.dump());
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      PRIMUS_CHECK(value.is_object() && value.contains("dtype") && value.contains("shape") &&
                       value.contains("data_offsets"),
                   "'{}': tensor '{}' needs dtype, shape and data_offsets, got {}", path, name, value.dump());
      Entry e;
      e.name = name;
      PRIMUS_CHECK(value["dtype"].is_string(), "'{}': tensor '{}' has a non-string dtype", path, name);
      try {
        e.dtype = dtype_from_safetensors(value["dtype"].get<std::string>());
      } catch (const Error& err) {
        fail("'{}': tensor '{}': {}", path, name, err.what());
      }
      const auto& shape = value["shape"];
      const auto& offs = value["data_offsets"];
      PRIMUS_CHECK(shape.is_array(), "'{}': tensor '{}' has a non-array shape {}", path, name, shape.dump());
      for (const auto& d : shape) {
        PRIMUS_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                     "'{}': tensor '{}' has a bad dimension {} in shape {}", path, name, d.dump(), shape.dump());
        e.shape.push_back(d.get<int64_t>());
      }
      PRIMUS_CHECK(offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() && offs[1].is_number_unsigned(),
                   "'{}': tensor '{}' has bad data_offsets {} (expected [begin, end])", path, name, offs.dump());
      e.begin = offs[0].get<size_t>();
      e.end = offs[1].get<size_t>();
      const size_t expected = static_cast<size_t>(shape_numel(e.shape)) * dtype_size(e.dtype);
      PRIMUS_CHECK(e.begin <= e.end && e.end - e.begin == expected,
                   "'{}': tensor '{}' ({} {}) needs {} bytes but data_offsets [{}, {}] span {}", path, name,
                   safetensors_name(e.dtype), shape_str(e.shape), expected, e.begin, e.end,
                   static_cast<int64_t>(e.end) - static_cast<int64_t>(e.begin));
      PRIMUS_CHECK(e.end <= data_size,
                   "'{}' is truncated or corrupt: tensor '{}' needs bytes [{}, {}) of the data section but "
                   "only {} bytes follow the header (file size {})", path, name, e.begin, e.end, data_size,
                   map_size_);
      entries_.push_back(std::move(e));
    }
    std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
    size_t expect_begin = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
      const Entry& e = entries_[i];
      PRIMUS_CHECK(e.begin == expect_begin,
                   "'{}' is corrupt: tensor '{}' starts at byte {} of the data section but the previous tensor "
                   "ends at {} (tensors must be back to back)", path, e.name, e.begin, expect_begin);
      expect_begin = e.end;
      index_[e.name] = i;
    }
    PRIMUS_CHECK(expect_begin == data_size,
                 "'{}' is corrupt: its tensors cover {} bytes but the data section has {} bytes", path,
                 expect_begin, data_size);
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const Entry& e : entries_) out.push_back(e.name);
  return out;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    fail("'{}' has no tensor named '{}'{} ({} tensors in the file)", path_, name, did_you_mean(name, names()),
         entries_.size());
  return entries_[it->second];
}

Tensor SafetensorsFile::view(const std::string& name) const {
  const Entry& e = entry(name);
  return Tensor::from_blob(const_cast<char*>(data_ + e.begin), e.shape, e.dtype, Device::CPU);
}

Tensor SafetensorsFile::load(const std::string& name, Device device) const {
  const Tensor v = view(name);
  Tensor t = Tensor::empty(v.shape(), v.dtype(), device);
  t.copy_from(v);
  return t;
}

}  // namespace primus

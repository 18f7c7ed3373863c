// safetensors files: the tensor exchange format of HF, our checkpoints and the reference
// tests.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON (an object mapping each
// tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, plus an
// optional "__metadata__" object of string -> string), then the data section; offsets
// are relative to the data section's start and tensors are stored row-major,
// little-endian, back to back with no holes.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace primus {

using NamedTensorList = std::vector<std::pair<std::string, Tensor>>;

// Writes `tensors` (any device; copied to host) in the given order, atomically: to
// `<path>.tmp.<pid>` first, fsync'd, then renamed over `path`. Throws naming the path on
// I/O errors, duplicate names, or the reserved name "__metadata__".
void save_safetensors(const std::string& path, const NamedTensorList& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A safetensors file mapped read-only. The constructor validates the whole header
// against the file size (every error names the file, the tensor and the byte ranges);
// tensors are then read without further I/O errors.
class SafetensorsFile {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    size_t begin = 0, end = 0;  // byte range within the data section
  };

  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<Entry>& entries() const { return entries_; }  // in data-offset order
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const Entry& entry(const std::string& name) const;  // throws with "did you mean"
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's bytes in place (CPU, borrowed: valid while this object lives).
  Tensor view(const std::string& name) const;
  // A copy that owns its memory, on `device`.
  Tensor load(const std::string& name, Device device = Device::CPU) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace primus

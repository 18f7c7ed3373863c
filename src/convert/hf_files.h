// The files of a HuggingFace model directory: the weights (one model.safetensors, or
// shards listed by model.safetensors.index.json) and JSON files, read and written.
//
// Sharded layout (HF's): model-00001-of-00003.safetensors ... plus
//   model.safetensors.index.json = {"metadata": {"total_size": <bytes of all tensors>},
//                                   "weight_map": {"<tensor name>": "<shard file>", ...}}
// A model small enough for one shard is written as a single model.safetensors with no
// index (as transformers' save_pretrained does).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "core/tensor.h"

namespace primus::convert {

// Parses a JSON file; errors name the file and say what it was expected to be (`what`).
nlohmann::json read_json_file(const std::string& path, const std::string& what);

// The weights of an HF model directory, mapped read-only (nothing is copied until a
// caller converts or concatenates a tensor).
class HfWeights {
 public:
  // Opens <dir>/model.safetensors when present, else <dir>/model.safetensors.index.json and
  // every shard it names. Validates that each indexed tensor is in the shard the index
  // names. Throws naming the file and the fix when neither exists (pytorch_model.bin is
  // named as unsupported).
  explicit HfWeights(const std::string& dir);
  ~HfWeights();

  const std::string& source() const { return source_; }  // the file listing the tensors
  size_t num_files() const { return files_.size(); }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;  // throws with "did you mean"
  // The tensor's bytes in place (borrowed: valid while this object lives).
  Tensor view(const std::string& name) const { return file_of(name).view(name); }
  uint64_t total_bytes() const;

 private:
  std::string source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

// "5GB" (10^9), "500MB", "10GiB" (2^30), "123" (bytes) -> bytes. Throws on anything else.
uint64_t parse_byte_size(const std::string& text);

// `t` as `dtype` (F32/BF16/F16 only; fp32 -> bf16/fp16 rounds to nearest even). Returns
// `t` itself when the dtype already matches. `name` is for the error message.
Tensor cast_float_tensor(const Tensor& t, DType dtype, const std::string& name);

struct HfWeightsWritten {
  std::vector<std::string> files;  // file names inside the directory, in order
  uint64_t total_bytes = 0;        // tensor bytes (the index's total_size)
};

// Writes `tensors` into `dir` in HF's layout, cast to `dtype` one shard at a time (so at
// most one shard of converted copies is in memory). A new shard starts when the next
// tensor would push the current one past `max_shard_bytes` (a tensor larger than the limit
// gets a shard of its own, as in transformers).
HfWeightsWritten write_hf_weights(const std::string& dir, const NamedTensorList& tensors, DType dtype,
                                  uint64_t max_shard_bytes);

// Writes `j` pretty-printed (indent 2, trailing newline) to `path` and fsyncs it.
void write_json_file(const std::string& path, const nlohmann::json& j);

// Copies a file byte for byte and fsyncs the copy; errors name both paths.
void copy_file_synced(const std::string& from, const std::string& to);

}  // namespace primus::convert

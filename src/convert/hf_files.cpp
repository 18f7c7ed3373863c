#include "convert/hf_files.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "core/strings.h"
#include "core/durable_file.h"

namespace primus::convert {

namespace fs = std::filesystem;

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  PRIMUS_CHECK(fs::is_regular_file(path, ec), "{}: not found ({} expected here)", path, what);
  const std::string text = durable::read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: not valid JSON ({}); expected {}", path, e.what(), what);
  }
}

HfWeights::HfWeights(const std::string& dir) {
  std::error_code ec;
  PRIMUS_CHECK(fs::is_directory(dir, ec), "HuggingFace model directory '{}' does not exist (--hf-dir)", dir);
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::is_regular_file(single, ec)) {
    source_ = single.string();
    files_.push_back(std::make_unique<SafetensorsFile>(source_));
    for (const auto& e : files_.back()->entries()) where_[e.name] = files_.back().get();
    return;
  }
  if (!fs::is_regular_file(index, ec)) {
    const bool has_bin = fs::exists(fs::path(dir) / "pytorch_model.bin") ||
                         fs::exists(fs::path(dir) / "pytorch_model.bin.index.json");
    fail("'{}' has neither model.safetensors nor model.safetensors.index.json{}", dir,
         has_bin ? "; it holds pytorch_model.bin (pickle), which Primus does not read: re-save the model with "
                   "transformers' save_pretrained(..., safe_serialization=True)"
                 : ": download the model's safetensors weights into it");
  }
  source_ = index.string();
  const nlohmann::json j = read_json_file(source_, "the sharded weights index {\"weight_map\": {name: file}}");
  PRIMUS_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
               "{}: no \"weight_map\" object; expected {{\"metadata\": {{...}}, \"weight_map\": {{tensor: file}}}}",
               source_);
  std::map<std::string, const SafetensorsFile*> opened;
  for (const auto& [name, file] : j["weight_map"].items()) {
    PRIMUS_CHECK(file.is_string(), "{}: weight_map['{}'] must be a file name, got {}", source_, name, file.dump());
    const std::string shard = file.get<std::string>();
    PRIMUS_CHECK(shard.find('/') == std::string::npos && shard != ".." && !shard.empty(),
                 "{}: weight_map['{}'] names '{}', not a file in the same directory", source_, name, shard);
    auto it = opened.find(shard);
    if (it == opened.end()) {
      const fs::path p = fs::path(dir) / shard;
      PRIMUS_CHECK(fs::is_regular_file(p, ec), "{}: shard '{}' (holding '{}') is missing from '{}'; download "
                   "every shard listed in the index", source_, shard, name, dir);
      files_.push_back(std::make_unique<SafetensorsFile>(p.string()));
      it = opened.emplace(shard, files_.back().get()).first;
    }
    PRIMUS_CHECK(it->second->contains(name), "{}: the index puts tensor '{}' in '{}', but that shard does not "
                 "hold it{}", source_, name, it->second->path(), did_you_mean(name, it->second->names()));
    where_[name] = it->second;
  }
  PRIMUS_CHECK(!where_.empty(), "{}: weight_map is empty", source_);
}

HfWeights::~HfWeights() = default;

std::vector<std::string> HfWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [n, f] : where_) out.push_back(n);
  return out;
}

const SafetensorsFile& HfWeights::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    fail("{}: missing tensor '{}' ({} tensors listed); the weights do not match config.json (wrong or "
         "incomplete download?)", source_, name, where_.size());
  return *it->second;
}

uint64_t HfWeights::total_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, f] : where_) {
    const auto& e = f->entry(name);
    n += e.end - e.begin;
  }
  return n;
}

uint64_t parse_byte_size(const std::string& text) {
  const std::string t(trim(text));
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.')) ++i;
  const std::string number = t.substr(0, i);
  std::string unit = std::string(trim(t.substr(i)));
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::toupper(c); });
  static const std::map<std::string, double> kUnits = {
      {"", 1},        {"B", 1},           {"KB", 1e3},        {"MB", 1e6},        {"GB", 1e9},
      {"TB", 1e12},   {"KIB", 1024.0},    {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  auto it = kUnits.find(unit);
  double value = 0;
  bool ok = !number.empty() && it != kUnits.end();
  if (ok) {
    try {
      value = std::stod(number);
    } catch (const std::exception&) {
      ok = false;
    }
  }
  PRIMUS_CHECK(ok && value > 0, "size '{}' is not understood; write e.g. 5GB (10^9 bytes, as HF), 500MB, 2GiB or "
               "a byte count", text);
  return static_cast<uint64_t>(value * it->second);
}

Tensor cast_float_tensor(const Tensor& t, DType dtype, const std::string& name) {
  if (t.dtype() == dtype) return t;
  auto is_float = [](DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; };
  PRIMUS_CHECK(is_float(t.dtype()) && is_float(dtype), "tensor '{}' is {}; only fp32/bf16/fp16 weights convert "
               "(to {})", name, dtype_name(t.dtype()), dtype_name(dtype));
  PRIMUS_CHECK(t.device() == Device::CPU, "tensor '{}': casting expects a CPU tensor, got {}", name, t.describe());
  // One pass, element by element through fp32 (exact for bf16/fp16 -> fp32).
  Tensor out = Tensor::empty(t.shape(), dtype, Device::CPU);
  const int64_t n = t.numel();
  auto load = [&](int64_t i) -> float {
    switch (t.dtype()) {
      case DType::BF16: return bf16_bits_to_fp32(t.data<uint16_t>()[i]);
      case DType::F16: return fp16_bits_to_fp32(t.data<uint16_t>()[i]);
      default: return t.data<float>()[i];
    }
  };
  switch (dtype) {
    case DType::F32:
      for (int64_t i = 0; i < n; ++i) out.data<float>()[i] = load(i);
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out.data<uint16_t>()[i] = fp32_to_bf16_bits(load(i));
      break;
    default:
      for (int64_t i = 0; i < n; ++i) out.data<uint16_t>()[i] = fp32_to_fp16_bits(load(i));
      break;
  }
  return out;
}

HfWeightsWritten write_hf_weights(const std::string& dir, const NamedTensorList& tensors, DType dtype,
                                  uint64_t max_shard_bytes) {
  PRIMUS_CHECK(!tensors.empty(), "no tensors to write into '{}'", dir);
  PRIMUS_CHECK(max_shard_bytes > 0, "the maximum shard size must be positive");
  // Plan the shards on the output sizes.
  std::vector<std::pair<size_t, size_t>> shards;  // [begin, end) into tensors
  uint64_t current = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t bytes = static_cast<uint64_t>(tensors[i].second.numel()) * dtype_size(dtype);
    if (shards.empty() || (current > 0 && current + bytes > max_shard_bytes)) {
      shards.emplace_back(i, i);
      current = 0;
    }
    shards.back().second = i + 1;
    current += bytes;
    total += bytes;
  }
  HfWeightsWritten out;
  out.total_bytes = total;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};  // what transformers writes and checks
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? std::string("model.safetensors")
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1,
                                                              shards.size());
    NamedTensorList part;  // the cast copies of this shard only
    for (size_t i = shards[s].first; i < shards[s].second; ++i) {
      const auto& [name, t] = tensors[i];
      part.emplace_back(name, cast_float_tensor(t, dtype, name));
      weight_map[name] = file;
    }
    save_safetensors((fs::path(dir) / file).string(), part, metadata);
    out.files.push_back(file);
  }
  if (shards.size() > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = std::move(weight_map);
    durable::write_file((fs::path(dir) / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    out.files.push_back("model.safetensors.index.json");
  }
  return out;
}

void write_json_file(const std::string& path, const nlohmann::json& j) {
  durable::write_file(path, j.dump(2) + "\n");
}

void copy_file_synced(const std::string& from, const std::string& to) {
  std::error_code ec;
  PRIMUS_CHECK(fs::is_regular_file(from, ec), "'{}' does not exist (copying it to '{}')", from, to);
  durable::write_file(to, durable::read_file(from));
}

}  // namespace primus::convert

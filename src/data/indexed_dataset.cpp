#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace primus::data {

namespace {
constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

void write_all(std::FILE* f, const void* p, size_t n, const std::string& path) {
  PRIMUS_CHECK(std::fwrite(p, 1, n, f) == n, "writing {} failed (disk full?)", path);
}
}  // namespace

size_t token_dtype_size(TokenDType t) {
  switch (t) {
    case TokenDType::kU8:
    case TokenDType::kI8: return 1;
    case TokenDType::kI16:
    case TokenDType::kU16: return 2;
    case TokenDType::kI32:
    case TokenDType::kF32: return 4;
    case TokenDType::kI64:
    case TokenDType::kF64: return 8;
  }
  return 0;
}

TokenDType optimal_token_dtype(int64_t vocab_size) {
  return vocab_size > 0 && vocab_size < 65500 ? TokenDType::kU16 : TokenDType::kI32;
}

std::string bin_path(const std::string& prefix) { return prefix + ".bin"; }
std::string idx_path(const std::string& prefix) { return prefix + ".idx"; }

// ---- writer ---------------------------------------------------------------------------

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, TokenDType dtype)
    : prefix_(std::move(prefix)), dtype_(dtype) {
  PRIMUS_CHECK(dtype == TokenDType::kU16 || dtype == TokenDType::kI32,
               "IndexedDatasetWriter writes uint16 or int32 tokens (got dtype code {})", static_cast<int>(dtype));
  const std::string tag = ".tmp-" + std::to_string(::getpid());
  bin_tmp_ = bin_path(prefix_) + tag;
  idx_tmp_ = idx_path(prefix_) + tag;
  const auto dir = std::filesystem::path(prefix_).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir);
  bin_ = std::fopen(bin_tmp_.c_str(), "wb");
  PRIMUS_CHECK(bin_ != nullptr, "cannot create {}: {}", bin_tmp_, std::strerror(errno));
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (bin_) std::fclose(bin_);
  if (!finalized_) {
    std::remove(bin_tmp_.c_str());
    std::remove(idx_tmp_.c_str());
  }
}

void IndexedDatasetWriter::add_document(std::span<const int32_t> tokens, std::span<const int32_t> lengths) {
  int64_t sum = 0;
  for (int32_t l : lengths) sum += l;
  PRIMUS_CHECK(sum == static_cast<int64_t>(tokens.size()), "document of {} tokens given sequence lengths summing to {}",
               tokens.size(), sum);
  const size_t item = token_dtype_size(dtype_);
  buffer_.resize(tokens.size() * item);
  if (dtype_ == TokenDType::kU16) {
    auto* p = reinterpret_cast<uint16_t*>(buffer_.data());
    for (size_t i = 0; i < tokens.size(); ++i) {
      PRIMUS_CHECK(tokens[i] >= 0 && tokens[i] < 65536, "token id {} does not fit the uint16 .bin of {}", tokens[i],
                   prefix_);
      p[i] = static_cast<uint16_t>(tokens[i]);
    }
  } else {
    std::memcpy(buffer_.data(), tokens.data(), buffer_.size());
  }
  write_all(bin_, buffer_.data(), buffer_.size(), bin_tmp_);
  lengths_.insert(lengths_.end(), lengths.begin(), lengths.end());
  doc_index_.push_back(static_cast<int64_t>(lengths_.size()));
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void IndexedDatasetWriter::finalize() {
  PRIMUS_CHECK(!finalized_, "finalize() called twice for {}", prefix_);
  PRIMUS_CHECK(std::fclose(bin_) == 0, "closing {} failed (disk full?)", bin_tmp_);
  bin_ = nullptr;
  std::FILE* idx = std::fopen(idx_tmp_.c_str(), "wb");
  PRIMUS_CHECK(idx != nullptr, "cannot create {}: {}", idx_tmp_, std::strerror(errno));
  const uint8_t code = static_cast<uint8_t>(dtype_);
  const uint64_t s = lengths_.size(), d = doc_index_.size();
  write_all(idx, kMagic, sizeof(kMagic), idx_tmp_);
  write_all(idx, &kVersion, 8, idx_tmp_);
  write_all(idx, &code, 1, idx_tmp_);
  write_all(idx, &s, 8, idx_tmp_);
  write_all(idx, &d, 8, idx_tmp_);
  write_all(idx, lengths_.data(), lengths_.size() * 4, idx_tmp_);
  std::vector<int64_t> pointers(lengths_.size());
  int64_t at = 0;
  for (size_t i = 0; i < lengths_.size(); ++i) {
    pointers[i] = at;
    at += static_cast<int64_t>(lengths_[i]) * static_cast<int64_t>(token_dtype_size(dtype_));
  }
  write_all(idx, pointers.data(), pointers.size() * 8, idx_tmp_);
  write_all(idx, doc_index_.data(), doc_index_.size() * 8, idx_tmp_);
  PRIMUS_CHECK(std::fclose(idx) == 0, "closing {} failed (disk full?)", idx_tmp_);
  std::filesystem::rename(bin_tmp_, bin_path(prefix_));
  std::filesystem::rename(idx_tmp_, idx_path(prefix_));
  finalized_ = true;
}

// ---- reader ---------------------------------------------------------------------------

namespace {
void* map_file(const std::string& path, size_t& size, time_t& mtime) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  PRIMUS_CHECK(fd >= 0, "cannot open {}: {} (was the dataset prefix written by `primus preprocess`?)", path,
               std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  size = static_cast<size_t>(st.st_size);
  mtime = st.st_mtime;
  void* p = nullptr;
  if (size > 0) {
    p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("cannot mmap {} ({} bytes): {}", path, size, std::strerror(errno));
    }
  }
  ::close(fd);
  return p;
}
}  // namespace

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string ip = idx_path(prefix), bp = bin_path(prefix);
  time_t idx_mtime = 0, bin_mtime = 0;
  idx_map_ = map_file(ip, idx_size_, idx_mtime);
  try {
    PRIMUS_CHECK(idx_size_ >= kHeaderBytes, "{} is {} bytes, shorter than the {}-byte header: truncated or not an index",
                 ip, idx_size_, kHeaderBytes);
    const auto* b = static_cast<const uint8_t*>(idx_map_);
    PRIMUS_CHECK(std::memcmp(b, kMagic, 9) == 0,
                 "{} does not start with MMIDIDX\\0\\0: not a Megatron indexed dataset index", ip);
    uint64_t version = 0, s = 0, d = 0;
    std::memcpy(&version, b + 9, 8);
    PRIMUS_CHECK(version == kVersion, "{}: index version {}, expected 1", ip, version);
    const uint8_t code = b[17];
    PRIMUS_CHECK(code >= 1 && code <= 8, "{}: dtype code {} is not one of 1..8", ip, code);
    dtype_ = static_cast<TokenDType>(code);
    PRIMUS_CHECK(dtype_ != TokenDType::kF32 && dtype_ != TokenDType::kF64, "{}: dtype code {} is a float type, not tokens",
                 ip, code);
    std::memcpy(&s, b + 18, 8);
    std::memcpy(&d, b + 26, 8);
    // Counts the file cannot hold are refused before any arithmetic on them can wrap around.
    PRIMUS_CHECK(s <= idx_size_ / 12 && d <= idx_size_ / 8,
                 "{}: {} bytes cannot hold the {} sequences and {} document indices its header claims: the file is "
                 "truncated or corrupt; re-run primus preprocess",
                 ip, idx_size_, s, d);
    const uint64_t expected = kHeaderBytes + s * 4 + s * 8 + d * 8;
    PRIMUS_CHECK(idx_size_ == expected || idx_size_ == expected + s,  // + s: multimodal sequence modes
                 "{}: {} bytes, but its header ({} sequences, {} document indices) needs {}: the file is truncated or "
                 "corrupt; re-run primus preprocess",
                 ip, idx_size_, s, d, expected);
    PRIMUS_CHECK(d >= 1, "{}: has no document indices (expected at least the leading 0)", ip);
    num_sequences_ = static_cast<int64_t>(s);
    num_doc_index_ = static_cast<int64_t>(d);
    lengths_.resize(s);
    if (s > 0) std::memcpy(lengths_.data(), b + kHeaderBytes, s * 4);
    pointers_ = reinterpret_cast<const char*>(b + kHeaderBytes + s * 4);
    doc_index_.resize(d);
    if (d > 0) std::memcpy(doc_index_.data(), b + kHeaderBytes + s * 12, d * 8);
    const auto item = static_cast<int64_t>(token_dtype_size(dtype_));
    int64_t at = 0;
    for (int64_t i = 0; i < num_sequences_; ++i) {
      const int64_t n = lengths_[static_cast<size_t>(i)];
      PRIMUS_CHECK(n >= 0, "{}: sequence {} has negative length {}", ip, i, n);
      PRIMUS_CHECK(pointer(i) == at, "{}: sequence {} starts at byte {}, expected {} (after the previous sequence)",
                   ip, i, pointer(i), at);
      at += n * item;
    }
    PRIMUS_CHECK(doc_index_[0] == 0, "{}: document index starts at {}, expected 0", ip, doc_index_[0]);
    for (int64_t k = 1; k < num_doc_index_; ++k)
      PRIMUS_CHECK(doc_index_[k] >= doc_index_[k - 1] && doc_index_[k] <= num_sequences_,
                   "{}: document index {} is {}, expected within [{}, {}]", ip, k, doc_index_[k], doc_index_[k - 1],
                   num_sequences_);
    bin_map_ = map_file(bp, bin_size_, bin_mtime);
    PRIMUS_CHECK(static_cast<int64_t>(bin_size_) == at,
                 "{}: {} bytes, but {} describes {} tokens of {} bytes = {} bytes: the .bin is truncated or belongs to "
                 "another index",
                 bp, bin_size_, ip, at / item, item, at);
    num_tokens_ = at / item;
    fingerprint_ = fmt::format("{}:{}:{}:{}", idx_size_, static_cast<int64_t>(idx_mtime), bin_size_,
                               static_cast<int64_t>(bin_mtime));
  } catch (...) {
    if (idx_map_) ::munmap(idx_map_, idx_size_);
    if (bin_map_) ::munmap(bin_map_, bin_size_);
    throw;
  }
}

IndexedDataset::~IndexedDataset() {
  if (idx_map_) ::munmap(idx_map_, idx_size_);
  if (bin_map_) ::munmap(bin_map_, bin_size_);
}

int64_t IndexedDataset::pointer(int64_t i) const {
  int64_t v;
  std::memcpy(&v, pointers_ + i * 8, 8);
  return v;
}

void IndexedDataset::read(int64_t i, int64_t offset, int64_t length, int32_t* out) const {
  const bool valid = i >= 0 && i < num_sequences_;
  const int64_t n = valid ? lengths_[static_cast<size_t>(i)] : -1;
  PRIMUS_CHECK(valid && offset >= 0 && length >= 0 && offset + length <= n,
               "{}: read of sequence {} tokens [{}, {}) out of range (sequences: {}, length {})", prefix_, i, offset,
               offset + length, num_sequences_, n);
  if (length == 0) return;  // an empty .bin is not mapped (null), and `out` may be an empty vector's null
  const auto* base = static_cast<const char*>(bin_map_) + pointer(i);
  switch (dtype_) {
    case TokenDType::kU16: {
      const auto* p = reinterpret_cast<const uint16_t*>(base) + offset;
      for (int64_t k = 0; k < length; ++k) out[k] = p[k];
      break;
    }
    case TokenDType::kI32:
      std::memcpy(out, reinterpret_cast<const int32_t*>(base) + offset, static_cast<size_t>(length) * 4);
      break;
    case TokenDType::kU8: {
      const auto* p = reinterpret_cast<const uint8_t*>(base) + offset;
      for (int64_t k = 0; k < length; ++k) out[k] = p[k];
      break;
    }
    case TokenDType::kI8: {
      const auto* p = reinterpret_cast<const int8_t*>(base) + offset;
      for (int64_t k = 0; k < length; ++k) out[k] = p[k];
      break;
    }
    case TokenDType::kI16: {
      const auto* p = reinterpret_cast<const int16_t*>(base) + offset;
      for (int64_t k = 0; k < length; ++k) out[k] = p[k];
      break;
    }
    case TokenDType::kI64: {
      const auto* p = reinterpret_cast<const int64_t*>(base) + offset;
      for (int64_t k = 0; k < length; ++k) out[k] = static_cast<int32_t>(p[k]);
      break;
    }
    default:
      fail("{}: cannot read tokens of dtype code {}", prefix_, static_cast<int>(dtype_));
  }
}

std::vector<int32_t> IndexedDataset::sequence(int64_t i) const {
  std::vector<int32_t> v(static_cast<size_t>(sequence_length(i)));
  read(i, 0, static_cast<int64_t>(v.size()), v.data());
  return v;
}

}  // namespace primus::data

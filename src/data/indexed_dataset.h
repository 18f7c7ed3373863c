// Megatron's indexed dataset: PREFIX.bin (the tokens of every sequence, back to back) and
// PREFIX.idx (the index), byte-compatible with megatron/core/datasets/indexed_dataset.py.
//
// .idx layout (little endian):
//   magic   9 bytes  "MMIDIDX\0\0"
//   version uint64   1
//   dtype   uint8    code of the token type: 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16
//   S       uint64   number of sequences
//   D       uint64   number of document boundaries (documents + 1)
//   int32[S]  sequence lengths (tokens)
//   int64[S]  sequence pointers (byte offset of each sequence in .bin)
//   int64[D]  document indices: document d is sequences [doc[d], doc[d+1]); doc[0] = 0
// Tokens are uint16 when the vocabulary has fewer than 65500 ids, else int32 (Megatron's
// DType.optimal_dtype).
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace primus::data {

enum class TokenDType : uint8_t { kU8 = 1, kI8 = 2, kI16 = 3, kI32 = 4, kI64 = 5, kF64 = 6, kF32 = 7, kU16 = 8 };
size_t token_dtype_size(TokenDType t);
TokenDType optimal_token_dtype(int64_t vocab_size);

std::string bin_path(const std::string& prefix);  // prefix + ".bin"
std::string idx_path(const std::string& prefix);  // prefix + ".idx"

// Writes PREFIX.bin/.idx under temporary names; finalize() writes the index and renames
// both, so an interrupted run never leaves a file under the final names.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(std::string prefix, TokenDType dtype);
  ~IndexedDatasetWriter();  // removes the temporary files if finalize() was not reached
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One document made of sequences with these lengths (their sum = tokens.size()). An
  // empty document is recorded as Megatron does (a repeated document index).
  void add_document(std::span<const int32_t> tokens, std::span<const int32_t> sequence_lengths);
  void finalize();

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_index_.size()) - 1; }

 private:
  std::string prefix_, bin_tmp_, idx_tmp_;
  TokenDType dtype_;
  std::FILE* bin_ = nullptr;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> doc_index_{0};
  std::vector<char> buffer_;
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
};

// Read-only, memory-mapped view of PREFIX.bin/.idx. The constructor checks the magic, the
// version, the dtype code, that the .idx size matches its counts, that pointers follow the
// lengths, and that the .bin holds exactly the tokens the index describes; a failure names
// the file, the value seen and the value expected.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_doc_index_ - 1; }
  int32_t sequence_length(int64_t i) const { return lengths_[static_cast<size_t>(i)]; }
  std::span<const int32_t> sequence_lengths() const { return lengths_; }
  std::span<const int64_t> document_indices() const { return doc_index_; }
  int64_t num_tokens() const { return num_tokens_; }
  // Copies tokens [offset, offset + length) of sequence i, converted to int32, into out.
  void read(int64_t i, int64_t offset, int64_t length, int32_t* out) const;
  std::vector<int32_t> sequence(int64_t i) const;

  // Sizes and modification times of the two files: part of the GPT index cache key.
  std::string fingerprint() const { return fingerprint_; }

 private:
  std::string prefix_, fingerprint_;
  TokenDType dtype_ = TokenDType::kU16;
  void* idx_map_ = nullptr;
  size_t idx_size_ = 0;
  void* bin_map_ = nullptr;
  size_t bin_size_ = 0;
  int64_t num_sequences_ = 0, num_doc_index_ = 0, num_tokens_ = 0;
  // The .idx arrays start at byte 34 (Megatron's header), so none is aligned for its type:
  // lengths and the document index are copied out (12 bytes per sequence), the pointers read
  // with memcpy (pointer()).
  std::vector<int32_t> lengths_;
  std::vector<int64_t> doc_index_;
  const char* pointers_ = nullptr;  // int64 per sequence, unaligned
  int64_t pointer(int64_t i) const;
};

}  // namespace primus::data

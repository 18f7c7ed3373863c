// Tokenized post-training data of one input file, and its on-disk cache (so a restart, or
// a second run with another seq_length, packing or seed, does not tokenize again).
//
// ---- cache format (primus-sft-cache-v1) --------------------------------------------------
// One directory per (input file, tokenization): DIR = <data_cache_path>/<input name>.primus-sft-<KEY>
// when data_cache_path is set, else <input path>.primus-sft-<KEY> next to the input. It holds
//   tokens.bin, tokens.idx  Megatron's indexed dataset (data/indexed_dataset.h: magic
//                  "MMIDIDX\0\0", version 1, uint16 tokens below 65500 ids else int32). One
//                  document per record: SFT = one sequence (the example); preference = two
//                  sequences, chosen then rejected. Readable by any Megatron tool.
//   loss_mask.bin  magic "PRIMUSLM" (8 bytes), uint64 version = 1, uint64 N = number of tokens
//                  of tokens.bin, then ceil(N / 8) bytes: bit (j % 8) (least significant
//                  first) of byte j / 8 is 1 when token j of the concatenated sequences is a
//                  trained target (sft_tokenize.h). Little endian; nothing after the bits.
//   cache.json     what was tokenized, written last:
//                  {"format": "primus-sft-cache-v1", "kind": "sft" | "preference",
//                   "source": {"path", "size", "mtime_ns", "hash"},
//                   "tokenizer": "<type, vocab size, special ids, hash of its files>",
//                   "chat_template": {"name", "hash"}, "loss_mode": "assistant_only" | "all",
//                   "key": KEY, "records", "sequences", "tokens", "loss_tokens"}
// KEY = hash_bytes of the compact JSON (keys sorted) of format, kind, source (path, size,
// mtime and content hash), tokenizer, chat_template and loss_mode. Nothing depends on
// seq_length, packing, split or seed: those are applied when the dataset is built.
// Hashes are a 128-bit non-cryptographic hash (hash_bytes), as 32 hex digits.
// Writing: everything goes into DIR.tmp-<pid>-<n>, which is renamed to DIR at the end, so a
// crashed run leaves no DIR. Reading checks cache.json against the expected description,
// the .idx/.bin sizes and magic (IndexedDataset), the mask file's magic, version, token
// count, exact size and loss-token count; any mismatch prints a warning naming the file and
// the check, and the cache is rebuilt, never trusted.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/indexed_dataset.h"
#include "data/sft/chat_records.h"
#include "data/sft/sft_tokenize.h"

namespace primus::data::sft {

// 128-bit non-cryptographic hash, 32 hex digits (cache keys and content fingerprints).
std::string hash_bytes(std::string_view bytes);
std::string hash_file(const std::string& path);

// Identity of a tokenizer for the cache key: type, vocabulary size, special ids and the hash
// of its files (tokenizer.json / tokenizer_config.json in a model directory, or the model
// file and a tokenizer_config.json beside it).
std::string tokenizer_identity(const Tokenizer& tokenizer, const std::string& model_path);

// The records of one file as token sequences with their loss bits, in memory or mapped from
// a cache directory.
class TokenizedCorpus {
 public:
  // In memory: sequences_per_record is 1 (SFT) or 2 (preference: chosen, rejected).
  TokenizedCorpus(std::string source, int sequences_per_record, std::vector<TokenizedExample> sequences);
  // Mapped from a cache directory (see open_cached_corpus).
  TokenizedCorpus(std::string source, int sequences_per_record, std::unique_ptr<IndexedDataset> tokens,
                  std::vector<uint8_t> mask_bits);
  ~TokenizedCorpus();

  const std::string& source() const { return source_; }
  int sequences_per_record() const { return per_record_; }
  int64_t num_records() const { return num_sequences() / per_record_; }
  int64_t num_sequences() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t length(int64_t seq) const { return offsets_[seq + 1] - offsets_[seq]; }
  int64_t num_tokens() const { return offsets_.back(); }
  int64_t loss_tokens() const { return loss_tokens_; }
  // Tokens [offset, offset + n) of sequence `seq` and their mask bits (0/1).
  void read(int64_t seq, int64_t offset, int64_t n, int32_t* tokens, uint8_t* mask) const;
  // Bit j of the whole corpus (LSB first), as stored in loss_mask.bin.
  const std::vector<uint8_t>& mask_bits() const { return mask_bits_; }

 private:
  std::string source_;
  int per_record_;
  std::vector<int64_t> offsets_{0};  // sequence s is tokens [offsets_[s], offsets_[s+1])
  std::vector<int32_t> tokens_;      // in memory (empty when mapped)
  std::unique_ptr<IndexedDataset> mapped_;
  std::vector<uint8_t> mask_bits_;
  int64_t loss_tokens_ = 0;
};

struct CorpusOptions {
  RecordKind kind = RecordKind::kSft;  // kSft or kPreference
  std::string cache_dir;                // "" = next to the input
  std::string tokenizer_identity;       // tokenizer_identity(...)
  bool use_cache = true;                // false: tokenize in memory, read and write nothing
};

struct CorpusLoad {
  std::shared_ptr<const TokenizedCorpus> corpus;
  bool from_cache = false;
  std::string cache_dir;  // the directory read or written ("" if none could be written)
  std::string warning;    // why a cache was not used (corrupt, unwritable), for the log
};

// The cache directory for `input` under these options (computes the content hash).
std::string sft_cache_dir(const std::string& input, const SftTokenizer& tokenizer, const CorpusOptions& options);

// Loads the cache of `input` when it is valid, else reads and tokenizes the file and writes
// the cache (a cache that cannot be written is a warning, not an error).
CorpusLoad load_or_build_corpus(const std::string& input, SftTokenizer& tokenizer, const CorpusOptions& options);

}  // namespace primus::data::sft

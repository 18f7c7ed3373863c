// Byte-pair encoding: the merge engine shared by the HuggingFace, GPT-2 and tiktoken
// tokenizers.
//
// Pieces are kept in an internal form: for byte-level vocabularies (GPT-2 style, where each
// byte is spelled by a printable code point) the raw bytes; otherwise the vocabulary's own
// UTF-8 strings (with "▁" for spaces in Metaspace models). A word is split into initial
// symbols (bytes, or characters with byte fallback / unk), then the adjacent pair with the
// lowest merge rank is merged, leftmost first on ties, until no pair has a rank. That is
// the order HuggingFace's BPE and tiktoken both produce.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace primus::data {

// Hash map (left id, right id) -> (rank, merged id): open addressing, linear probing.
class PairMergeMap {
 public:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  void reserve(size_t n);
  // Keeps the first (lowest-rank) entry when a pair repeats.
  void insert(int32_t left, int32_t right, Merge m);
  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pack(left, right);
    size_t i = slot(key);
    while (true) {
      const Entry& e = entries_[i];
      if (e.key == key) return &e.merge;
      if (e.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Entry {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  static uint64_t pack(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> shift_); }
  void grow();
  std::vector<Entry> entries_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t size_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept;
};
struct StringEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const noexcept { return a == b; }
};
using PieceIdMap = std::unordered_map<std::string, int32_t, StringHash, StringEq>;

// The read-only tables of a BPE model.
struct BpeTables {
  std::vector<std::string> id_to_piece;  // internal form; empty for unused ids
  PieceIdMap piece_to_id;
  PairMergeMap merges;
  bool byte_level = false;     // pieces are raw bytes; every byte has a single-byte piece
  bool byte_fallback = false;  // unknown characters become <0xXX> pieces
  bool ignore_merges = false;  // a word found whole in the vocabulary is one token
  int32_t unk_id = -1;         // for characters with no piece (non byte-level)
  bool fuse_unk = false;       // consecutive unknowns become one unk
  int32_t byte_ids[256];       // byte-level: piece of each byte; byte_fallback: <0xXX>

  BpeTables() {
    for (int32_t& b : byte_ids) b = -1;
  }
  int32_t find(std::string_view piece) const {
    auto it = piece_to_id.find(piece);
    return it == piece_to_id.end() ? -1 : it->second;
  }
  // Registers merges "left right" of internal-form pieces; rank = call order. Returns false
  // (and adds nothing) when a part or the merged piece is not in the vocabulary.
  bool add_merge(std::string_view left, std::string_view right, int32_t rank);
};

// Encodes words with a cache (one instance per thread).
class BpeEncoder {
 public:
  explicit BpeEncoder(std::shared_ptr<const BpeTables> tables) : tables_(std::move(tables)) {}
  // Appends the ids of one pre-tokenized word (internal form).
  void encode_word(std::string_view word, std::vector<int32_t>& out);
  const BpeTables& tables() const { return *tables_; }

 private:
  void initial_symbols(std::string_view word);
  void merge_small();
  void merge_large();
  void cache_store(std::string_view word, const int32_t* ids, size_t n);

  std::shared_ptr<const BpeTables> tables_;
  std::vector<int32_t> symbols_;  // working buffer, reused
  std::vector<int32_t> ranks_;
  std::vector<int32_t> merged_;
  // Word cache: word -> [offset, length) in cache_ids_.
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, StringHash, StringEq> cache_;
  std::vector<int32_t> cache_ids_;
};

}  // namespace primus::data

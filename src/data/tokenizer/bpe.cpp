#include "data/tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <queue>

#include "data/tokenizer/utf8.h"

namespace primus::data {

namespace {
constexpr size_t kSmallWord = 48;          // up to here: quadratic scan (cache friendly)
constexpr size_t kMaxCachedWord = 256;     // longer words are not cached (bytes)
constexpr size_t kMaxCacheEntries = 1 << 17;
constexpr int32_t kNoRank = INT32_MAX;
}  // namespace

size_t StringHash::operator()(std::string_view s) const noexcept {
  // FNV-1a over 8-byte words, then a final mix: fast for the short words BPE sees.
  uint64_t h = 0xcbf29ce484222325ULL ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  for (size_t k = 0; i < s.size(); ++i, ++k) tail |= static_cast<uint64_t>(static_cast<uint8_t>(s[i])) << (8 * k);
  h = (h ^ tail) * 0x9E3779B97F4A7C15ULL;
  return static_cast<size_t>(h ^ (h >> 32));
}

void PairMergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (cap <= entries_.size()) return;
  std::vector<Entry> old = std::move(entries_);
  entries_.assign(cap, Entry{});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  size_ = 0;
  for (const Entry& e : old)
    if (e.key != kEmpty) insert(static_cast<int32_t>(e.key >> 32), static_cast<int32_t>(e.key & 0xffffffffu), e.merge);
}

void PairMergeMap::grow() { reserve(std::max<size_t>(16, size_ * 2 + 2)); }

void PairMergeMap::insert(int32_t left, int32_t right, Merge m) {
  if (entries_.empty() || 2 * (size_ + 1) > entries_.size()) grow();
  const uint64_t key = pack(left, right);
  size_t i = slot(key);
  while (entries_[i].key != kEmpty) {
    if (entries_[i].key == key) return;  // keep the lower rank
    i = (i + 1) & mask_;
  }
  entries_[i].key = key;
  entries_[i].merge = m;
  ++size_;
}

bool BpeTables::add_merge(std::string_view left, std::string_view right, int32_t rank) {
  const int32_t l = find(left), r = find(right);
  if (l < 0 || r < 0) return false;
  std::string joined;
  joined.reserve(left.size() + right.size());
  joined.append(left).append(right);
  const int32_t m = find(joined);
  if (m < 0) return false;
  merges.insert(l, r, {rank, m});
  return true;
}

void BpeEncoder::initial_symbols(std::string_view word) {
  const BpeTables& t = *tables_;
  symbols_.clear();
  if (t.byte_level) {
    for (unsigned char c : word) symbols_.push_back(t.byte_ids[c]);
    return;
  }
  bool previous_unk = false;
  size_t i = 0;
  while (i < word.size()) {
    size_t n = utf8_valid_length(word, i);
    if (n == 0) n = 1;  // callers sanitize; stay safe on stray bytes
    const int32_t id = t.find(word.substr(i, n));
    if (id >= 0) {
      symbols_.push_back(id);
      previous_unk = false;
    } else {
      bool all_bytes = t.byte_fallback;
      if (all_bytes)
        for (size_t k = 0; k < n; ++k) all_bytes &= t.byte_ids[static_cast<uint8_t>(word[i + k])] >= 0;
      if (all_bytes) {
        for (size_t k = 0; k < n; ++k) symbols_.push_back(t.byte_ids[static_cast<uint8_t>(word[i + k])]);
        previous_unk = false;
      } else if (t.unk_id >= 0) {
        if (!(t.fuse_unk && previous_unk)) symbols_.push_back(t.unk_id);
        previous_unk = true;
      }
      // No unk token: HuggingFace drops the character; so do we.
    }
    i += n;
  }
}

// Quadratic but allocation-free: ranks_[i] is the rank of pair (i, i+1).
void BpeEncoder::merge_small() {
  const BpeTables& t = *tables_;
  size_t n = symbols_.size();
  if (n < 2) return;
  ranks_.resize(n);
  merged_.resize(n);
  auto lookup = [&](size_t i) {
    const PairMergeMap::Merge* m = t.merges.find(symbols_[i], symbols_[i + 1]);
    ranks_[i] = m ? m->rank : kNoRank;
    merged_[i] = m ? m->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) lookup(i);
  while (n > 1) {
    size_t best = 0;
    int32_t best_rank = ranks_[0];
    for (size_t i = 1; i + 1 < n; ++i)
      if (ranks_[i] < best_rank) {
        best_rank = ranks_[i];
        best = i;
      }
    if (best_rank == kNoRank) break;
    symbols_[best] = merged_[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      symbols_[i] = symbols_[i + 1];
      ranks_[i] = ranks_[i + 1];
      merged_[i] = merged_[i + 1];
    }
    --n;
    if (best > 0) lookup(best - 1);
    if (best + 1 < n) lookup(best);
  }
  symbols_.resize(n);
}

// For long words (a whole sentence in Metaspace models without splitting): a heap of
// candidate merges over a doubly linked list of symbols, O(n log n).
void BpeEncoder::merge_large() {
  const BpeTables& t = *tables_;
  const size_t n = symbols_.size();
  std::vector<int32_t> prev(n), next(n);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = (i + 1 < n) ? static_cast<int32_t>(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank, pos, left, right;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    const int32_t l = symbols_[pos], r = symbols_[next[pos]];
    if (const PairMergeMap::Merge* m = t.merges.find(l, r)) heap.push({m->rank, pos, l, r});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const int32_t right = next[c.pos];
    if (symbols_[c.pos] != c.left || symbols_[right] != c.right) continue;  // stale
    symbols_[c.pos] = t.merges.find(c.left, c.right)->merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) symbols_[k++] = symbols_[i];
  symbols_.resize(k);
}

void BpeEncoder::cache_store(std::string_view word, const int32_t* ids, size_t n) {
  if (word.size() > kMaxCachedWord) return;
  if (cache_.size() >= kMaxCacheEntries) {
    cache_.clear();
    cache_ids_.clear();
  }
  const auto offset = static_cast<uint32_t>(cache_ids_.size());
  cache_ids_.insert(cache_ids_.end(), ids, ids + n);
  cache_.emplace(std::string(word), std::make_pair(offset, static_cast<uint32_t>(n)));
}

void BpeEncoder::encode_word(std::string_view word, std::vector<int32_t>& out) {
  if (word.empty()) return;
  const BpeTables& t = *tables_;
  if (t.ignore_merges) {
    const int32_t id = t.find(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (auto it = cache_.find(word); it != cache_.end()) {
    const int32_t* p = cache_ids_.data() + it->second.first;
    out.insert(out.end(), p, p + it->second.second);
    return;
  }
  initial_symbols(word);
  if (symbols_.size() <= kSmallWord)
    merge_small();
  else
    merge_large();
  out.insert(out.end(), symbols_.begin(), symbols_.end());
  cache_store(word, symbols_.data(), symbols_.size());
}

}  // namespace primus::data

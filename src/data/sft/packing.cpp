#include "data/sft/packing.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace primus::data::sft {

namespace {

// Max segment tree over the free space of `n` rows (all start with `cap`): finds the
// leftmost row with at least `need` free.
class FreeSpaceTree {
 public:
  FreeSpaceTree(int64_t n, int64_t cap) {
    size_ = 1;
    while (size_ < n) size_ <<= 1;
    tree_.assign(static_cast<size_t>(2 * size_), 0);
    for (int64_t i = 0; i < n; ++i) tree_[static_cast<size_t>(size_ + i)] = cap;
    for (int64_t i = size_ - 1; i >= 1; --i) tree_[i] = std::max(tree_[2 * i], tree_[2 * i + 1]);
  }
  // Leftmost leaf with value >= need (the caller guarantees one exists).
  int64_t leftmost(int64_t need) const {
    int64_t i = 1;
    while (i < size_) i = tree_[2 * i] >= need ? 2 * i : 2 * i + 1;
    return i - size_;
  }
  void take(int64_t leaf, int64_t amount) {
    int64_t i = leaf + size_;
    tree_[i] -= amount;
    for (i >>= 1; i >= 1; i >>= 1) tree_[i] = std::max(tree_[2 * i], tree_[2 * i + 1]);
  }

 private:
  int64_t size_ = 1;
  std::vector<int64_t> tree_;
};

void check_lengths(std::span<const int64_t> lengths, int64_t seq_length) {
  PRIMUS_CHECK(seq_length > 0, "packing: seq_length must be > 0 (got {})", seq_length);
  for (size_t i = 0; i < lengths.size(); ++i)
    PRIMUS_CHECK(lengths[i] >= 1, "packing: example {} has length {}; every example needs at least one token", i,
                 lengths[i]);
}

}  // namespace

double Packing::efficiency() const {
  if (rows.empty()) return 0.0;
  return static_cast<double>(tokens) / (static_cast<double>(rows.size()) * static_cast<double>(seq_length));
}

Packing pack_first_fit_decreasing(std::span<const int64_t> lengths, int64_t seq_length) {
  check_lengths(lengths, seq_length);
  Packing p;
  p.seq_length = seq_length;
  const auto n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  auto cut = [&](int64_t i) { return std::min(lengths[static_cast<size_t>(i)], seq_length); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cut(a) > cut(b); });
  FreeSpaceTree free(std::max<int64_t>(n, 1), seq_length);
  for (int64_t i : order) {
    const int64_t len = cut(i);
    if (lengths[static_cast<size_t>(i)] > seq_length) ++p.truncated;
    p.tokens += len;
    // Unused rows have full capacity and lie right of the used ones, so the leftmost fit is
    // the first used row with room, else the next new row.
    const int64_t row = free.leftmost(len);
    free.take(row, len);
    if (row == static_cast<int64_t>(p.rows.size())) p.rows.emplace_back();
    p.rows[static_cast<size_t>(row)].push_back(i);
  }
  return p;
}

Packing pack_one_per_row(std::span<const int64_t> lengths, int64_t seq_length) {
  check_lengths(lengths, seq_length);
  Packing p;
  p.seq_length = seq_length;
  for (size_t i = 0; i < lengths.size(); ++i) {
    p.rows.push_back({static_cast<int64_t>(i)});
    p.tokens += std::min(lengths[i], seq_length);
    if (lengths[i] > seq_length) ++p.truncated;
  }
  return p;
}

}  // namespace primus::data::sft

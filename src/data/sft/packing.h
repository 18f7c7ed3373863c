// Packing post-training examples into rows of seq_length tokens.
//
// First-fit decreasing: examples are taken longest first (ties: lower index first), each
// into the first row (in creation order) with room for it, else into a new row. Lengths
// above seq_length are cut to seq_length first (counted in `truncated`). The result is
// deterministic and at most 11/9 OPT + 6/9 rows. The row search is a max segment tree over
// the rows' free space, so packing n examples costs O(n log n).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace primus::data::sft {

struct Packing {
  // rows[r] = the indices (into the lengths given) of the examples in row r, in the order
  // they were placed (longest first).
  std::vector<std::vector<int64_t>> rows;
  int64_t seq_length = 0;
  int64_t tokens = 0;     // sum of the (cut) lengths
  int64_t truncated = 0;  // examples longer than seq_length
  // tokens / (rows x seq_length); 0 for no rows.
  double efficiency() const;
};

// First-fit decreasing of `lengths` (each >= 1) into rows of `seq_length`.
Packing pack_first_fit_decreasing(std::span<const int64_t> lengths, int64_t seq_length);

// One example per row, in order (no packing): the same statistics.
Packing pack_one_per_row(std::span<const int64_t> lengths, int64_t seq_length);

}  // namespace primus::data::sft

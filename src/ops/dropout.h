// Inverted dropout with a counter-based mask (LoRA's lora_dropout; parallel/lora.h).
//
// Element (r, j) of x (R, W) is token row n = first_row + r of the micro-batch's B*T rows
// (b = n / T, t = n % T: under context parallel, that column's position in the whole sequence) and
// full input feature c = first_col + j; it is dropped when
//   (w >> 8) < threshold,   w = word (c % 4) of philox4x32(counter = (t << 32 | c / 4, row_keys[b]), key)
// (core/rng.h's Philox-4x32-10; threshold = floor(p 2^24): a 24-bit uniform below p), and kept
// elements are scaled by `scale` = 1 / (1 - p). The mask depends only on (key, row key, t, c): not
// on tensor or sequence parallelism (a rank's rows / columns are its piece of the whole mask) nor
// on how the rows were batched. CPU reference here; CUDA in ops/cuda/dropout.cu.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "ops/ops.h"

namespace primus::ops {

struct DropoutMask {
  uint64_t key = 0;                // Philox key: the seed and the site (parallel::lora_dropout_key)
  uint32_t threshold = 0;          // drop when the 24-bit uniform is below it; 0 keeps everything
  float scale = 1.f;               // 1 / (1 - p)
  int64_t T = 1;                   // tokens per row of the micro-batch
  int64_t first_row = 0;           // the micro-batch token row (b T + t) of x's row 0
  int64_t first_col = 0;           // the full-input feature of x's column 0
  std::vector<uint64_t> row_keys;  // one per row b of the micro-batch (B)
  // Context parallel: the T columns of a row are cp rank cp_rank's two chunks of the sequence;
  // t above is then the column's position in the whole sequence (core/cp_split.h), so a token's
  // mask does not depend on the cp split either.
  int cp_rank = 0, cp_size = 1;
};

// threshold for probability p in [0, 1): floor(p 2^24). Throws outside [0, 1).
uint32_t dropout_threshold(double p);
// Whether element (n, c) (micro-batch token row n, full feature c) is kept (host; tests).
bool dropout_keeps(const DropoutMask& m, int64_t n, int64_t c);
// out (R, W) = x * keep * scale, elementwise (out may alias x: the backward masks its gradient in
// place). fp32 on CPU; fp32/bf16/fp16 on CUDA (math in fp32, one rounding).
void dropout(Context& ctx, Tensor& out, const Tensor& x, const DropoutMask& mask);

}  // namespace primus::ops

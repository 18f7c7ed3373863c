// Counter-based inverted dropout (ops/dropout.h's DropoutMask: LoRA's lora_dropout).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// The row keys of up to kDropoutKeys rows of the micro-batch, passed by value (no device copy).
constexpr int kDropoutKeys = 64;
struct DropoutKeys {
  uint64_t k[kDropoutKeys];
};

// out (rows, W) = x (rows, W) * keep * scale, out may alias x; rows [row_begin, row_end) of x
// only. x's row r is micro-batch token row first_row + r (b = that / T, t = the position of column
// that % T in the whole sequence: core/cp_split.h with cp_rank of cp_size; itself at size 1), column j
// full feature first_col + j; keys.k[b - key_base] is row b's key. Element kept when
// (word (c % 4) of philox4x32((t << 32 | c / 4, row key), key) >> 8) >= threshold.
void launch_dropout(void* out, const void* x, DType dt, int64_t row_begin, int64_t row_end, int64_t W,
                    int64_t first_row, int64_t first_col, int64_t T, const DropoutKeys& keys, int64_t key_base,
                    uint64_t key, uint32_t threshold, float scale, int cp_rank, int cp_size, cudaStream_t stream);

}  // namespace primus::cuda

// Counter-based inverted dropout: one thread per (row, 4-feature group), one Philox-4x32-10
// block (core/rng.cpp's, device_utils.cuh philox) per group: word c % 4 decides feature c.
#include "ops/cuda/dropout.h"

#include "core/cp_split.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void dropout_kernel(T* out, const T* x, int64_t row_begin, int64_t rows, int64_t W, int64_t first_row,
                               int64_t first_col, int64_t T_, DropoutKeys keys, int64_t key_base, uint64_t key,
                               uint32_t threshold, float scale, int cp_rank, int cp_size) {
  const int64_t g0 = first_col / 4, groups = (first_col + W - 1) / 4 - g0 + 1;
  const int64_t total = rows * groups;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = row_begin + i / groups, g = g0 + i % groups;
    const int64_t n = first_row + r, b = n / T_, t = context_parallel_position(n % T_, T_, cp_rank, cp_size);
    const uint4 w = philox((static_cast<uint64_t>(t) << 32) | static_cast<uint64_t>(g), keys.k[b - key_base], key);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t j = g * 4 + q - first_col;
      if (j < 0 || j >= W) continue;
      const float v = (words[q] >> 8) >= threshold ? to_f32<T>(x[r * W + j]) * scale : 0.f;
      out[r * W + j] = from_f32<T>(v);
    }
  }
}

}  // namespace

void launch_dropout(void* out, const void* x, DType dt, int64_t row_begin, int64_t row_end, int64_t W,
                    int64_t first_row, int64_t first_col, int64_t T, const DropoutKeys& keys, int64_t key_base,
                    uint64_t key, uint32_t threshold, float scale, int cp_rank, int cp_size, cudaStream_t stream) {
  const int64_t rows = row_end - row_begin;
  if (rows <= 0 || W <= 0) return;
  const int64_t groups = (first_col + W - 1) / 4 - first_col / 4 + 1;
  const int64_t total = rows * groups;
  const unsigned blocks = grid_for(total, kThreads);
  PRIMUS_DISPATCH_FLOAT(dt, Tp, {
    dropout_kernel<Tp><<<blocks, kThreads, 0, stream>>>(static_cast<Tp*>(out), static_cast<const Tp*>(x), row_begin,
                                                        rows, W, first_row, first_col, T, keys, key_base, key,
                                                        threshold, scale, cp_rank, cp_size);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

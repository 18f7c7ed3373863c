// Counter-based inverted dropout: one thread per (row, 4-feature group), one Philox-4x32-10
// block (core/rng.cpp's, as init_normal.cu has it) per group: word c % 4 decides feature c.
#include "ops/cuda/dropout.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

__device__ inline uint4 philox(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return make_uint4(c0, c1, c2, c3);
}

template <typename T>
__global__ void dropout_kernel(T* out, const T* x, int64_t row_begin, int64_t rows, int64_t W, int64_t first_row,
                               int64_t first_col, int64_t T_, DropoutKeys keys, int64_t key_base, uint64_t key,
                               uint32_t threshold, float scale) {
  const int64_t g0 = first_col / 4, groups = (first_col + W - 1) / 4 - g0 + 1;
  const int64_t total = rows * groups;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = row_begin + i / groups, g = g0 + i % groups;
    const int64_t n = first_row + r, b = n / T_, t = n % T_;
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
                    uint64_t key, uint32_t threshold, float scale, cudaStream_t stream) {
  const int64_t rows = row_end - row_begin;
  if (rows <= 0 || W <= 0) return;
  const int64_t groups = (first_col + W - 1) / 4 - first_col / 4 + 1;
  const int64_t total = rows * groups;
  const unsigned blocks = grid_for(total, kThreads);
  PRIMUS_DISPATCH_FLOAT(dt, Tp, {
    dropout_kernel<Tp><<<blocks, kThreads, 0, stream>>>(static_cast<Tp*>(out), static_cast<const Tp*>(x), row_begin,
                                                        rows, W, first_row, first_col, T, keys, key_base, key,
                                                        threshold, scale);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

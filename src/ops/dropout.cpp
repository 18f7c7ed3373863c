#include "ops/dropout.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/cp_split.h"
#include "core/error.h"
#include "core/rng.h"

#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/dropout.h"
#endif

namespace primus::ops {

uint32_t dropout_threshold(double p) {
  PRIMUS_CHECK(p >= 0.0 && p < 1.0, "dropout probability {} must be in [0, 1)", p);
  return static_cast<uint32_t>(std::floor(p * 16777216.0));
}

bool dropout_keeps(const DropoutMask& m, int64_t n, int64_t c) {
  const int64_t b = n / m.T, t = context_parallel_position(n % m.T, m.T, m.cp_rank, m.cp_size);
  const auto w = philox4x32((static_cast<uint64_t>(t) << 32) | static_cast<uint64_t>(c / 4),
                            m.row_keys[static_cast<size_t>(b)], m.key);
  return (w[static_cast<size_t>(c % 4)] >> 8) >= m.threshold;
}

namespace {

void dropout_cpu(Tensor& out, const Tensor& x, const DropoutMask& m) {
  PRIMUS_CHECK(x.dtype() == DType::F32, "dropout: x must be fp32 on the CPU backend, got {}", x.describe());
  const int64_t R = x.size(0), W = x.size(1);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = m.first_row + r, t = context_parallel_position(n % m.T, m.T, m.cp_rank, m.cp_size);
    const uint64_t row_key = m.row_keys[static_cast<size_t>(n / m.T)];
    std::array<uint32_t, 4> w{};
    for (int64_t j = 0; j < W; ++j) {
      const int64_t c = m.first_col + j;
      if (j == 0 || c % 4 == 0)  // one Philox block per 4 features
        w = philox4x32((static_cast<uint64_t>(t) << 32) | static_cast<uint64_t>(c / 4), row_key, m.key);
      const bool keep = (w[static_cast<size_t>(c % 4)] >> 8) >= m.threshold;
      po[r * W + j] = keep ? px[r * W + j] * m.scale : 0.f;
    }
  }
}

#ifdef PRIMUS_WITH_CUDA
void dropout_cuda(Context& ctx, Tensor& out, const Tensor& x, const DropoutMask& m) {
  cuda::CudaBackend* cb = cuda::as_cuda_backend(ctx.backend());
  PRIMUS_CHECK(cb != nullptr, "dropout: the context's backend is not CUDA");
  const int64_t R = x.size(0), W = x.size(1);
  // The row keys travel by value, kDropoutKeys micro-batch rows per launch.
  const int64_t b_first = m.first_row / m.T, b_last = (m.first_row + R - 1) / m.T;
  for (int64_t b0 = b_first; b0 <= b_last; b0 += cuda::kDropoutKeys) {
    const int64_t b1 = std::min<int64_t>(b_last + 1, b0 + cuda::kDropoutKeys);
    cuda::DropoutKeys keys{};
    for (int64_t b = b0; b < b1; ++b) keys.k[b - b0] = m.row_keys[static_cast<size_t>(b)];
    const int64_t r0 = std::max<int64_t>(0, b0 * m.T - m.first_row), r1 = std::min<int64_t>(R, b1 * m.T - m.first_row);
    cuda::launch_dropout(out.raw(), x.raw(), x.dtype(), r0, r1, W, m.first_row, m.first_col, m.T, keys, b0, m.key,
                         m.threshold, m.scale, m.cp_rank, m.cp_size, cb->stream());
  }
}
#endif

}  // namespace

void dropout(Context& ctx, Tensor& out, const Tensor& x, const DropoutMask& m) {
  PRIMUS_CHECK(x.ndim() == 2 && out.shape() == x.shape() && out.dtype() == x.dtype() &&
                   (x.dtype() == DType::F32 || x.dtype() == DType::BF16 || x.dtype() == DType::F16),
               "dropout: out {} and x {} must be one 2-D float shape and dtype", out.describe(), x.describe());
  PRIMUS_CHECK(x.device() == ctx.device() && out.device() == ctx.device(),
               "dropout: x {} / out {} are not on the context's device ({})", x.describe(), out.describe(),
               device_name(ctx.device()));
  PRIMUS_CHECK(m.T > 0 && m.T <= (int64_t{1} << 32) && m.first_row >= 0 && m.first_col >= 0 &&
                   m.first_col + x.size(1) <= (int64_t{1} << 34),
               "dropout: T {} / first row {} / first column {} out of range", m.T, m.first_row, m.first_col);
  PRIMUS_CHECK(m.first_row + x.size(0) <= static_cast<int64_t>(m.row_keys.size()) * m.T,
               "dropout: rows [{}, {}) of x {} need {} row keys of T = {} tokens, got {}", m.first_row,
               m.first_row + x.size(0), x.describe(), (m.first_row + x.size(0) + m.T - 1) / m.T, m.T,
               m.row_keys.size());
  if (x.numel() == 0) return;
  if (ctx.device() == Device::CPU) {
    dropout_cpu(out, x, m);
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  dropout_cuda(ctx, out, x, m);
#else
  fail("dropout: a {} context in a build without CUDA", device_name(ctx.device()));
#endif
}

}  // namespace primus::ops

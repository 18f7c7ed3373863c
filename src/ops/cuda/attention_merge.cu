// attention_merge: one warp per (b, h, query row); lane 0's weights are broadcast, the
// lanes stride over the Dv values. The lse row is read once and written once, by lane 0,
// after every lane read it.
//   m = max(L, l), lse = m + log(exp(L - m) + exp(l - m))
//   out = exp(L - lse) * out + exp(l - lse) * part,  L = lse
#include "ops/cuda/attention_merge.h"

#include <cmath>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kWarps = 8;

template <typename T>
__global__ void attention_merge_kernel(T* acc_out, float* acc_lse, const T* part_out, const float* part_lse,
                                       int64_t B, int64_t T_, int64_t H, int64_t Dv, int64_t Tp, int64_t t0) {
  const int64_t row = blockIdx.x * (int64_t)kWarps + threadIdx.x / 32;  // (b, h, i) flattened
  const int lane = threadIdx.x % 32;
  if (row >= B * H * Tp) return;
  const int64_t i = row % Tp, bh = row / Tp, h = bh % H, b = bh / H;
  const int64_t t = t0 + i;
  float* La_ptr = acc_lse + bh * T_ + t;
  const float La = *La_ptr, lb = part_lse[bh * Tp + i];
  float wa, wb, lse;
  if (lb == -INFINITY) {
    return;  // the part saw no key
  } else if (La == -INFINITY) {
    wa = 0.f, wb = 1.f, lse = lb;
  } else {
    const float m = fmaxf(La, lb);
    const float ea = expf(La - m), eb = expf(lb - m), s = ea + eb;
    wa = ea / s, wb = eb / s, lse = m + logf(s);
  }
  T* o = acc_out + ((b * T_ + t) * H + h) * Dv;
  const T* p = part_out + ((b * Tp + i) * H + h) * Dv;
  for (int64_t c = lane; c < Dv; c += 32) o[c] = from_f32<T>(wa * to_f32<T>(o[c]) + wb * to_f32<T>(p[c]));
  __syncwarp();
  if (lane == 0) *La_ptr = lse;
}

}  // namespace

void launch_attention_merge(void* acc_out, float* acc_lse, const void* part_out, const float* part_lse, DType dt,
                            int64_t B, int64_t T, int64_t H, int64_t Dv, int64_t Tp, int64_t t0, cudaStream_t stream) {
  const int64_t rows = B * H * Tp;
  if (rows == 0 || Dv == 0) return;
  const auto blocks = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  PRIMUS_DISPATCH_FLOAT(dt, Elem, {
    attention_merge_kernel<Elem><<<blocks, kWarps * 32, 0, stream>>>(static_cast<Elem*>(acc_out), acc_lse,
                                                                      static_cast<const Elem*>(part_out), part_lse,
                                                                      B, T, H, Dv, Tp, t0);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

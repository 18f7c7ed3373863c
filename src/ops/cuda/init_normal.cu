#include "ops/cuda/init_normal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

namespace primus::cuda {

namespace {

constexpr int64_t kPieceElements = 1 << 16;

// Philox-4x32-10 exactly as core/rng.cpp: counter (lo, hi) = (element index, stream), key = seed.
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

// CounterRng::normal: Box-Muller on the block's first two words, in double.
__device__ inline float normal_at(uint64_t i, uint64_t stream, uint64_t seed) {
  const uint4 r = philox(i, stream, seed);
  const double u1 = (static_cast<double>(r.x) + 1.0) / 4294967296.0;
  const double u2 = static_cast<double>(r.y) / 4294967296.0;
  return static_cast<float>(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }

// One block per run piece; threads stride over its elements.
template <typename T>
__global__ void fill_normal_runs_kernel(T* out, const NormalRun* pieces, uint64_t seed, uint64_t stream, float mean,
                                        float std) {
  const NormalRun p = pieces[blockIdx.x];
  for (int64_t j = threadIdx.x; j < p.numel; j += blockDim.x)
    out[p.local_offset + j] = from_float<T>(mean + std * normal_at(static_cast<uint64_t>(p.full_offset + j), stream, seed));
}

}  // namespace

void launch_fill_normal_runs(void* t, DType dt, const std::vector<NormalRun>& runs, uint64_t seed,
                             uint64_t stream_id, float mean, float std, cudaStream_t stream) {
  std::vector<NormalRun> pieces;
  for (const NormalRun& r : runs)
    for (int64_t b = 0; b < r.numel; b += kPieceElements)
      pieces.push_back({r.local_offset + b, r.full_offset + b, std::min(kPieceElements, r.numel - b)});
  if (pieces.empty()) return;
  NormalRun* dev = nullptr;
  PRIMUS_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&dev), pieces.size() * sizeof(NormalRun), stream));
  PRIMUS_CUDA_CHECK(cudaMemcpyAsync(dev, pieces.data(), pieces.size() * sizeof(NormalRun), cudaMemcpyHostToDevice,
                                    stream));
  const unsigned blocks = static_cast<unsigned>(pieces.size());
  switch (dt) {
    case DType::F32:
      fill_normal_runs_kernel<float><<<blocks, 256, 0, stream>>>(static_cast<float*>(t), dev, seed, stream_id, mean, std);
      break;
    case DType::BF16:
      fill_normal_runs_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(t), dev, seed,
                                                                         stream_id, mean, std);
      break;
    case DType::F16:
      fill_normal_runs_kernel<__half><<<blocks, 256, 0, stream>>>(static_cast<__half*>(t), dev, seed, stream_id, mean, std);
      break;
    default:
      cudaFreeAsync(dev, stream);
      fail("fill_normal on CUDA: unsupported dtype {} (fp32, bf16, fp16)", dtype_name(dt));
  }
  PRIMUS_CUDA_LAUNCH_CHECK();
  // The host vector goes away on return: wait for the copy (init only, not a hot path).
  PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream));
  PRIMUS_CUDA_CHECK(cudaFreeAsync(dev, stream));
}

}  // namespace primus::cuda

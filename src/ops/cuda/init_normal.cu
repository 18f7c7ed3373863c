#include "ops/cuda/init_normal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int64_t kPieceElements = 1 << 16;

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

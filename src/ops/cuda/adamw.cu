// Multi-tensor AdamW. The tensor list travels in the kernel parameters (up to kMaxTensors per
// launch: one launch for a Llama-3B-sized model); each block updates one chunk of one tensor,
// finding its tensor by binary search over the chunk prefix sums. float4 accesses when every
// pointer of the tensor is 16-byte aligned. Bias corrections are computed once on the host.
#include "ops/cuda/adamw.h"

#include <cmath>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;
constexpr int kMaxTensors = 256;  // ~15 KB of parameters: CUDA 12.1+ allows 32 KB on Volta and newer

struct AdamWList {
  float* master[kMaxTensors];
  const void* grad[kMaxTensors];  // fp32, or bf16 where grad_bf16
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  void* model[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t first_block[kMaxTensors + 1];
  float decay[kMaxTensors];  // 1 - lr * wd
  uint8_t model_dtype[kMaxTensors];
  uint8_t grad_bf16[kMaxTensors];
  int count;
};

struct AdamWScalars {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, grad_scale;
  float step_size;       // lr / (1 - beta1^step)
  float inv_sqrt_bc2;    // 1 / sqrt(1 - beta2^step)
};

__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, float decay, const AdamWScalars& s) {
  g *= s.grad_scale;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  const float denom = sqrtf(v) * s.inv_sqrt_bc2 + s.eps;
  p = p * decay - s.step_size * m / denom;
}

__device__ __forceinline__ void store_model(void* model, uint8_t dt, int64_t i, float p) {
  if (dt == static_cast<uint8_t>(DType::BF16)) static_cast<__nv_bfloat16*>(model)[i] = __float2bfloat16_rn(p);
  else if (dt == static_cast<uint8_t>(DType::F16)) static_cast<__half*>(model)[i] = __float2half_rn(p);
  else static_cast<float*>(model)[i] = p;
}

__global__ void adamw_kernel(AdamWList list, AdamWScalars s) {
  const int64_t block = blockIdx.x;
  int lo = 0, hi = list.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (list.first_block[mid] <= block) lo = mid; else hi = mid - 1;
  }
  const int t = lo;
  const int64_t begin = (block - list.first_block[t]) * kChunk;
  const int64_t end = min(begin + kChunk, list.n[t]);
  float* P = list.master[t];
  const void* G = list.grad[t];
  const bool gbf = list.grad_bf16[t] != 0;
  float* M = list.m[t];
  float* Vv = list.v[t];
  void* model = list.model[t];
  const uint8_t mdt = list.model_dtype[t];
  const float decay = list.decay[t];
  const bool vec = aligned16(P) && aligned16(G) && aligned16(M) && aligned16(Vv) &&
                   (model == nullptr || (reinterpret_cast<uintptr_t>(model) & 7u) == 0);
  int64_t i0 = begin;
  if (vec) {
    const int64_t nvec = (end - begin) / 4;
    for (int64_t k = threadIdx.x; k < nvec; k += blockDim.x) {
      const int64_t i = begin + k * 4;
      float4 p = *reinterpret_cast<float4*>(P + i);
      float4 g;
      if (gbf) {  // 4 bf16 = 8 bytes
        const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(G) + i);
        const float2 lo2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
        const float2 hi2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
        g = make_float4(lo2.x, lo2.y, hi2.x, hi2.y);
      } else {
        g = *reinterpret_cast<const float4*>(static_cast<const float*>(G) + i);
      }
      float4 m = *reinterpret_cast<float4*>(M + i);
      float4 v = *reinterpret_cast<float4*>(Vv + i);
      adam_one(p.x, g.x, m.x, v.x, decay, s);
      adam_one(p.y, g.y, m.y, v.y, decay, s);
      adam_one(p.z, g.z, m.z, v.z, decay, s);
      adam_one(p.w, g.w, m.w, v.w, decay, s);
      *reinterpret_cast<float4*>(P + i) = p;
      *reinterpret_cast<float4*>(M + i) = m;
      *reinterpret_cast<float4*>(Vv + i) = v;
      if (model) {
        if (mdt == static_cast<uint8_t>(DType::BF16)) {
          __nv_bfloat162 lo2 = __floats2bfloat162_rn(p.x, p.y), hi2 = __floats2bfloat162_rn(p.z, p.w);
          uint2 raw;
          raw.x = *reinterpret_cast<uint32_t*>(&lo2);
          raw.y = *reinterpret_cast<uint32_t*>(&hi2);
          *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(model) + i) = raw;
        } else {
          store_model(model, mdt, i, p.x);
          store_model(model, mdt, i + 1, p.y);
          store_model(model, mdt, i + 2, p.z);
          store_model(model, mdt, i + 3, p.w);
        }
      }
    }
    i0 = begin + nvec * 4;
  }
  for (int64_t i = i0 + threadIdx.x; i < end; i += blockDim.x) {
    float p = P[i], m = M[i], v = Vv[i];
    const float g = gbf ? __bfloat162float(static_cast<const __nv_bfloat16*>(G)[i]) : static_cast<const float*>(G)[i];
    adam_one(p, g, m, v, decay, s);
    P[i] = p;
    M[i] = m;
    Vv[i] = v;
    if (model) store_model(model, mdt, i, p);
  }
}

}  // namespace

void launch_adamw(const std::vector<AdamWRef>& tensors, const AdamWHyper& h, cudaStream_t stream) {
  PRIMUS_CHECK(h.step >= 1, "AdamW: step must be >= 1 (1-based for bias correction), got {}", h.step);
  AdamWScalars s{};
  s.beta1 = h.beta1;
  s.beta2 = h.beta2;
  s.one_minus_beta1 = 1.f - h.beta1;
  s.one_minus_beta2 = 1.f - h.beta2;
  s.eps = h.eps;
  s.grad_scale = h.grad_scale;
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(h.step));
  s.step_size = static_cast<float>(h.lr / bc1);
  s.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  size_t i = 0;
  while (i < tensors.size()) {
    AdamWList list{};
    int64_t blocks = 0;
    for (; i < tensors.size() && list.count < kMaxTensors; ++i) {
      const AdamWRef& t = tensors[i];
      if (t.n == 0) continue;
      const int c = list.count++;
      list.master[c] = t.master;
      list.grad[c] = t.grad;
      list.grad_bf16[c] = t.grad_bf16 ? 1 : 0;
      list.m[c] = t.exp_avg;
      list.v[c] = t.exp_avg_sq;
      list.model[c] = t.model;
      list.model_dtype[c] = static_cast<uint8_t>(t.model_dtype);
      list.n[c] = t.n;
      list.decay[c] = 1.f - h.lr * t.weight_decay;
      list.first_block[c] = blocks;
      blocks += ceil_div(t.n, kChunk);
    }
    if (list.count == 0) continue;
    list.first_block[list.count] = blocks;
    adamw_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(list, s);
    PRIMUS_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace primus::cuda

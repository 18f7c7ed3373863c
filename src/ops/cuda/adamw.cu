// Multi-tensor AdamW. The tensor list travels in the kernel parameters (up to kMaxTensors per
// launch: one launch for a Llama-3B-sized model); each block updates one chunk of one tensor,
// finding its tensor by binary search over the chunk prefix sums. float4 accesses when every
// pointer of the tensor is aligned for its width. Bias corrections are computed once on the
// host. Moments may be bf16 and the master split into bf16 weight + int16 remainder.
#include "ops/cuda/adamw.h"

#include <cmath>

#include "core/master_bits.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;
constexpr int kMaxTensors = 256;  // ~15 KB of parameters: CUDA 12.1+ allows 32 KB on Volta and newer

// Per-tensor layout flags.
enum : uint8_t { kGradBf16 = 1, kMomentBf16 = 2, kMomentSqBf16 = 4, kSplitMaster = 8 };

struct AdamWList {
  float* master[kMaxTensors];      // null with kSplitMaster
  int16_t* remainder[kMaxTensors]; // kSplitMaster: the master's low half
  const void* grad[kMaxTensors];
  void* m[kMaxTensors];
  void* v[kMaxTensors];
  void* model[kMaxTensors];        // kSplitMaster: the bf16 weight, the master's high half
  int64_t n[kMaxTensors];
  int64_t first_block[kMaxTensors + 1];
  float decay[kMaxTensors];  // 1 - lr * wd
  uint8_t model_dtype[kMaxTensors];
  uint8_t flags[kMaxTensors];
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

// Four consecutive elements of an fp32 or bf16 array, as fp32 (bf16 stores round to nearest even).
__device__ __forceinline__ float4 load4(const void* x, bool bf16, int64_t i) {
  if (!bf16) return *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i);
  const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(x) + i);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ void store4(void* x, bool bf16, int64_t i, float4 f) {
  if (!bf16) {
    *reinterpret_cast<float4*>(static_cast<float*>(x) + i) = f;
    return;
  }
  __nv_bfloat162 lo = __floats2bfloat162_rn(f.x, f.y), hi = __floats2bfloat162_rn(f.z, f.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t*>(&lo);
  raw.y = *reinterpret_cast<uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(x) + i) = raw;
}
__device__ __forceinline__ float load1(const void* x, bool bf16, int64_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]) : static_cast<const float*>(x)[i];
}
__device__ __forceinline__ void store1(void* x, bool bf16, int64_t i, float f) {
  if (bf16) static_cast<__nv_bfloat16*>(x)[i] = __float2bfloat16_rn(f);
  else static_cast<float*>(x)[i] = f;
}
// A master held as bf16 model + int16 remainder (core/master_bits.h).
__device__ __forceinline__ float join1(const void* model, const int16_t* rem, int64_t i) {
  return __uint_as_float(join_master_bits(static_cast<const uint16_t*>(model)[i], rem[i]));
}
__device__ __forceinline__ void split1(void* model, int16_t* rem, int64_t i, float p) {
  split_master_bits(__float_as_uint(p), static_cast<uint16_t*>(model)[i], rem[i]);
}
__device__ __forceinline__ bool aligned_for(const void* x, bool half_width) {
  return (reinterpret_cast<uintptr_t>(x) & (half_width ? 7u : 15u)) == 0;
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
  int16_t* R = list.remainder[t];
  const void* G = list.grad[t];
  void* M = list.m[t];
  void* Vv = list.v[t];
  void* model = list.model[t];
  const uint8_t f = list.flags[t];
  const bool gbf = f & kGradBf16, mbf = f & kMomentBf16, vbf = f & kMomentSqBf16, split = f & kSplitMaster;
  const uint8_t mdt = list.model_dtype[t];
  const float decay = list.decay[t];
  const bool vec = (split ? aligned_for(R, true) && aligned_for(model, true) : aligned_for(P, false)) &&
                   aligned_for(G, gbf) && aligned_for(M, mbf) && aligned_for(Vv, vbf) &&
                   (split || model == nullptr || (reinterpret_cast<uintptr_t>(model) & 7u) == 0);
  int64_t i0 = begin;
  if (vec) {
    const int64_t nvec = (end - begin) / 4;
    for (int64_t k = threadIdx.x; k < nvec; k += blockDim.x) {
      const int64_t i = begin + k * 4;
      float4 p;
      uint2 hi16, lo16;  // split: the bf16 weights and the remainders of the four elements
      if (split) {
        hi16 = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(model) + i);
        lo16 = *reinterpret_cast<const uint2*>(R + i);
        auto join = [](uint32_t h, uint32_t l, int half) {
          return __uint_as_float(join_master_bits(static_cast<uint16_t>(h >> (16 * half)),
                                                  static_cast<int16_t>(static_cast<uint16_t>(l >> (16 * half)))));
        };
        p = make_float4(join(hi16.x, lo16.x, 0), join(hi16.x, lo16.x, 1), join(hi16.y, lo16.y, 0),
                        join(hi16.y, lo16.y, 1));
      } else {
        p = *reinterpret_cast<float4*>(P + i);
      }
      const float4 g = load4(G, gbf, i);
      float4 m = load4(M, mbf, i);
      float4 v = load4(Vv, vbf, i);
      adam_one(p.x, g.x, m.x, v.x, decay, s);
      adam_one(p.y, g.y, m.y, v.y, decay, s);
      adam_one(p.z, g.z, m.z, v.z, decay, s);
      adam_one(p.w, g.w, m.w, v.w, decay, s);
      store4(M, mbf, i, m);
      store4(Vv, vbf, i, v);
      if (split) {
        const float ps[4] = {p.x, p.y, p.z, p.w};
        uint16_t h[4];
        int16_t r[4];
        for (int j = 0; j < 4; ++j) split_master_bits(__float_as_uint(ps[j]), h[j], r[j]);
        hi16.x = h[0] | (static_cast<uint32_t>(h[1]) << 16);
        hi16.y = h[2] | (static_cast<uint32_t>(h[3]) << 16);
        lo16.x = static_cast<uint16_t>(r[0]) | (static_cast<uint32_t>(static_cast<uint16_t>(r[1])) << 16);
        lo16.y = static_cast<uint16_t>(r[2]) | (static_cast<uint32_t>(static_cast<uint16_t>(r[3])) << 16);
        *reinterpret_cast<uint2*>(static_cast<uint16_t*>(model) + i) = hi16;
        *reinterpret_cast<uint2*>(R + i) = lo16;
        continue;
      }
      *reinterpret_cast<float4*>(P + i) = p;
      if (model) {
        if (mdt == static_cast<uint8_t>(DType::BF16)) {
          store4(model, true, i, p);
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
    float p = split ? join1(model, R, i) : P[i];
    float m = load1(M, mbf, i), v = load1(Vv, vbf, i);
    adam_one(p, load1(G, gbf, i), m, v, decay, s);
    store1(M, mbf, i, m);
    store1(Vv, vbf, i, v);
    if (split) {
      split1(model, R, i, p);
    } else {
      P[i] = p;
      if (model) store_model(model, mdt, i, p);
    }
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
      list.remainder[c] = t.remainder;
      list.grad[c] = t.grad;
      list.flags[c] = static_cast<uint8_t>((t.grad_bf16 ? kGradBf16 : 0) | (t.exp_avg_bf16 ? kMomentBf16 : 0) |
                                           (t.exp_avg_sq_bf16 ? kMomentSqBf16 : 0) |
                                           (t.remainder != nullptr ? kSplitMaster : 0));
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

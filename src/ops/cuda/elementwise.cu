// Elementwise kernels: one grid-stride loop over 16-byte vectors (scalar tail / fallback when
// a pointer is not 16-byte aligned). Math in fp32, rounding once on store.
#include "ops/cuda/elementwise.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T, int VEC>
__global__ void fill_kernel(T* t, int64_t n, float value) {
  const int64_t nvec = n / VEC;
  float v[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = value;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec; i += (int64_t)gridDim.x * blockDim.x)
    store_vec<T, VEC>(t + i * VEC, v);
  // tail (n % VEC elements), handled by the first threads
  const int64_t tail = nvec * VEC + blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (tail < n && tail < (nvec + 1) * VEC) t[tail] = from_f32<T>(value);
}

__global__ void fill_int32_kernel(int32_t* t, int64_t n, int32_t value) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    t[i] = value;
}

template <typename TD, typename TS, int VEC>
__global__ void copy_cast_kernel(TD* dst, const TS* src, int64_t n) {
  const int64_t nvec = n / VEC;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec; i += (int64_t)gridDim.x * blockDim.x) {
    float v[VEC];
    load_vec<TS, VEC>(v, src + i * VEC);
    store_vec<TD, VEC>(dst + i * VEC, v);
  }
  const int64_t tail = nvec * VEC + blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (tail < n && tail < (nvec + 1) * VEC) dst[tail] = from_f32<TD>(to_f32<TS>(src[tail]));
}

template <typename T, int VEC>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  const int64_t nvec = n / VEC;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec; i += (int64_t)gridDim.x * blockDim.x) {
    float x[VEC], y[VEC];
    load_vec<T, VEC>(x, a + i * VEC);
    load_vec<T, VEC>(y, b + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] += y[j];
    store_vec<T, VEC>(out + i * VEC, x);
  }
  const int64_t tail = nvec * VEC + blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (tail < n && tail < (nvec + 1) * VEC) out[tail] = from_f32<T>(to_f32<T>(a[tail]) + to_f32<T>(b[tail]));
}

template <typename T, int VEC>
__global__ void scale_kernel(T* t, int64_t n, float alpha) {
  const int64_t nvec = n / VEC;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec; i += (int64_t)gridDim.x * blockDim.x) {
    float x[VEC];
    load_vec<T, VEC>(x, t + i * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] *= alpha;
    store_vec<T, VEC>(t + i * VEC, x);
  }
  const int64_t tail = nvec * VEC + blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (tail < n && tail < (nvec + 1) * VEC) t[tail] = from_f32<T>(to_f32<T>(t[tail]) * alpha);
}

template <typename T>
__global__ void fill_uniform_kernel(T* t, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(i + 1);  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.f / 16777216.f);
    t[i] = from_f32<T>(lo + (hi - lo) * u);
  }
}

}  // namespace

void launch_fill_uniform(void* t, DType dt, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    fill_uniform_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<T*>(t), n, seed, lo, hi);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_fill(void* t, DType dt, int64_t n, float value, cudaStream_t stream) {
  if (n == 0) return;
  if (dt == DType::I32) {
    PRIMUS_CHECK(value == static_cast<float>(static_cast<int32_t>(value)),
                 "fill: int32 tensor with non-integral value {}", value);
    fill_int32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<int32_t*>(t), n,
                                                                      static_cast<int32_t>(value));
    PRIMUS_CUDA_LAUNCH_CHECK();
    return;
  }
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (aligned16(t)) {
      fill_kernel<T, V><<<grid_for(n / V + 1, kThreads), kThreads, 0, stream>>>(static_cast<T*>(t), n, value);
    } else {
      fill_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<T*>(t), n, value);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_copy_cast(void* dst, DType dst_dt, const void* src, DType src_dt, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (dst_dt == src_dt) {
    PRIMUS_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(dst_dt),
                                      cudaMemcpyDeviceToDevice, stream));
    return;
  }
  PRIMUS_DISPATCH_FLOAT(dst_dt, TD, {
    PRIMUS_DISPATCH_FLOAT(src_dt, TS, {
      // 16-byte vectors of the narrower type would overrun the wider one: use 4 or 8 elements
      // such that both sides are whole vectors (fp32<->16-bit: 4 fp32 = 8 bytes of 16-bit, so 4).
      constexpr int V = vec_width<TD>() < vec_width<TS>() ? vec_width<TD>() : vec_width<TS>();
      if (aligned16(dst) && aligned16(src)) {
        copy_cast_kernel<TD, TS, V><<<grid_for(n / V + 1, kThreads), kThreads, 0, stream>>>(
            static_cast<TD*>(dst), static_cast<const TS*>(src), n);
      } else {
        copy_cast_kernel<TD, TS, 1><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            static_cast<TD*>(dst), static_cast<const TS*>(src), n);
      }
    });
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_add(void* out, const void* a, const void* b, DType dt, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (aligned16(out) && aligned16(a) && aligned16(b)) {
      add_kernel<T, V><<<grid_for(n / V + 1, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b), n);
    } else {
      add_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b), n);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_scale(void* t, DType dt, int64_t n, float alpha, cudaStream_t stream) {
  if (n == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (aligned16(t)) {
      scale_kernel<T, V><<<grid_for(n / V + 1, kThreads), kThreads, 0, stream>>>(static_cast<T*>(t), n, alpha);
    } else {
      scale_kernel<T, 1><<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<T*>(t), n, alpha);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

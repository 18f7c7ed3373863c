// SwiGLU kernels, 16-byte vectors along F when F and the pointers allow it.
//   silu(g) = g * sigmoid(g);  silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
#include "ops/cuda/swiglu.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoidf(float g) { return 1.f / (1.f + __expf(-g)); }

template <typename T, int VEC>
__global__ void swiglu_forward_kernel(T* out, const T* gate_up, int64_t N, int64_t F) {
  const int64_t per_row = F / VEC, total = N * per_row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / per_row, c = (i - row * per_row) * VEC;
    float g[VEC], u[VEC], o[VEC];
    load_vec<T, VEC>(g, gate_up + row * 2 * F + c);
    load_vec<T, VEC>(u, gate_up + row * 2 * F + F + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) o[j] = g[j] * sigmoidf(g[j]) * u[j];
    store_vec<T, VEC>(out + row * F + c, o);
  }
}

template <typename T, int VEC>
__global__ void swiglu_backward_kernel(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F) {
  const int64_t per_row = F / VEC, total = N * per_row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / per_row, c = (i - row * per_row) * VEC;
    float g[VEC], u[VEC], d[VEC], dg[VEC], du[VEC];
    load_vec<T, VEC>(g, gate_up + row * 2 * F + c);
    load_vec<T, VEC>(u, gate_up + row * 2 * F + F + c);
    load_vec<T, VEC>(d, dout + row * F + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float s = sigmoidf(g[j]);
      du[j] = d[j] * g[j] * s;
      dg[j] = d[j] * u[j] * s * (1.f + g[j] * (1.f - s));
    }
    store_vec<T, VEC>(dgate_up + row * 2 * F + c, dg);
    store_vec<T, VEC>(dgate_up + row * 2 * F + F + c, du);
  }
}

}  // namespace

void launch_swiglu_forward(void* out, const void* gate_up, DType dt, int64_t N, int64_t F, cudaStream_t stream) {
  if (N * F == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (F % V == 0 && aligned16(out) && aligned16(gate_up)) {
      swiglu_forward_kernel<T, V><<<grid_for(N * F / V, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(gate_up), N, F);
    } else {
      swiglu_forward_kernel<T, 1><<<grid_for(N * F, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(gate_up), N, F);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_swiglu_backward(void* dgate_up, const void* dout, const void* gate_up, DType dt, int64_t N, int64_t F,
                            cudaStream_t stream) {
  if (N * F == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, T, {
    constexpr int V = vec_width<T>();
    if (F % V == 0 && aligned16(dgate_up) && aligned16(dout) && aligned16(gate_up)) {
      swiglu_backward_kernel<T, V><<<grid_for(N * F / V, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(dgate_up), static_cast<const T*>(dout), static_cast<const T*>(gate_up), N, F);
    } else {
      swiglu_backward_kernel<T, 1><<<grid_for(N * F, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(dgate_up), static_cast<const T*>(dout), static_cast<const T*>(gate_up), N, F);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

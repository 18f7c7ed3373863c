// Latent-cache MLA decode kernels (ops/mla_decode.h). Memory-bound and simple: one block per
// (sequence, head); a warp per cached position for the scores (lanes over the latent dims),
// threads over the latent dims for the weighted sum. fp32 accumulation.
#include "ops/cuda/mla_decode.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

// Block (b,h); threads over l < L.
template <typename T>
__global__ void absorb_query_kernel(T* q_lat, const T* q, const T* w, int64_t H, int64_t Dq, int64_t Dn, int64_t Dv,
                                    int64_t L) {
  const int64_t bh = blockIdx.x, h = bh % H;
  const T* qh = q + bh * Dq;
  const T* wh = w + h * (Dn + Dv) * L;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
    float acc = 0.f;
    for (int64_t i = 0; i < Dn; ++i) acc += to_f32(qh[i]) * to_f32(wh[i * L + l]);
    q_lat[bh * L + l] = from_f32<T>(acc);
  }
}

// Block (b,h); warp per output dim j < Dv, lanes over l.
template <typename T>
__global__ void absorb_output_kernel(T* out, const T* o_lat, const T* w, int64_t H, int64_t Dn, int64_t Dv,
                                     int64_t L) {
  const int64_t bh = blockIdx.x, h = bh % H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const T* o = o_lat + bh * L;
  for (int64_t j = warp; j < Dv; j += warps) {
    const T* row = w + (h * (Dn + Dv) + Dn + j) * L;
    float acc = 0.f;
    for (int64_t l = lane; l < L; l += 32) acc += to_f32(o[l]) * to_f32(row[l]);
    acc = warp_sum(acc);
    if (lane == 0) out[bh * Dv + j] = from_f32<T>(acc);
  }
}

// One thread per element of the new entries (B, L + Dr).
template <typename T>
__global__ void latent_append_kernel(T* cache_c, T* cache_pe, const T* c_new, const T* pe_new,
                                     const int32_t* positions, int64_t B, int64_t Lmax, int64_t L, int64_t Dr) {
  const int64_t row = L + Dr, n = B * row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / row, e = i % row, slot = b * Lmax + positions[b];
    if (e < L)
      cache_c[slot * L + e] = c_new[b * L + e];
    else
      cache_pe[slot * Dr + (e - L)] = pe_new[b * Dr + (e - L)];
  }
}

// Block (b,h): scores of positions 0..p (warp per position), softmax, o_lat.
template <typename T>
__global__ void latent_attention_kernel(T* o_lat, float* scores, const T* q_lat, const T* q, const T* cache_c,
                                        const T* cache_pe, const int32_t* positions, int64_t H, int64_t Dq,
                                        int64_t L, int64_t Dr, int64_t Lmax, float scale) {
  __shared__ float red[32];
  const int64_t bh = blockIdx.x, b = bh / H;
  const int64_t n = static_cast<int64_t>(positions[b]) + 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const T* ql = q_lat + bh * L;
  const T* qp = q + bh * Dq + (Dq - Dr);
  const T* C = cache_c + b * Lmax * L;
  const T* P = cache_pe + b * Lmax * Dr;
  float* s = scores + bh * Lmax;
  for (int64_t j = warp; j < n; j += warps) {
    float acc = 0.f;
    for (int64_t l = lane; l < L; l += 32) acc += to_f32(ql[l]) * to_f32(C[j * L + l]);
    for (int64_t r = lane; r < Dr; r += 32) acc += to_f32(qp[r]) * to_f32(P[j * Dr + r]);
    acc = warp_sum(acc);
    if (lane == 0) s[j] = acc * scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, s[j]);
  mx = warp_max(mx);
  __syncthreads();
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = lane < warps ? red[lane] : -INFINITY;
  mx = warp_max(mx);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float e = __expf(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);  // its __syncthreads also orders the s[j] writes before the reads below
  const float inv = 1.f / sum;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < n; ++j) acc += s[j] * to_f32(C[j * L + l]);
    o_lat[bh * L + l] = from_f32<T>(acc * inv);
  }
}

}  // namespace

void launch_mla_absorb_query(void* q_lat, const void* q, const void* w, DType dt, int64_t B, int64_t H, int64_t Dq,
                             int64_t Dn, int64_t Dv, int64_t L, cudaStream_t stream) {
  if (B * H * L == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    absorb_query_kernel<E><<<static_cast<unsigned>(B * H), kThreads, 0, stream>>>(
        static_cast<E*>(q_lat), static_cast<const E*>(q), static_cast<const E*>(w), H, Dq, Dn, Dv, L);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_mla_absorb_output(void* out, const void* o_lat, const void* w, DType dt, int64_t B, int64_t H,
                              int64_t Dn, int64_t Dv, int64_t L, cudaStream_t stream) {
  if (B * H * Dv == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    absorb_output_kernel<E><<<static_cast<unsigned>(B * H), kThreads, 0, stream>>>(
        static_cast<E*>(out), static_cast<const E*>(o_lat), static_cast<const E*>(w), H, Dn, Dv, L);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

void launch_mla_decode_attention(void* o_lat, float* scores, const void* q_lat, const void* q, const void* c_new,
                                 const void* pe_new, void* cache_c, void* cache_pe, const int32_t* positions, DType dt,
                                 int64_t B, int64_t H, int64_t Dq, int64_t L, int64_t Dr, int64_t Lmax, float scale,
                                 cudaStream_t stream) {
  if (B == 0) return;
  PRIMUS_DISPATCH_FLOAT(dt, E, {
    latent_append_kernel<E><<<grid_for(B * (L + Dr), kThreads), kThreads, 0, stream>>>(
        static_cast<E*>(cache_c), static_cast<E*>(cache_pe), static_cast<const E*>(c_new),
        static_cast<const E*>(pe_new), positions, B, Lmax, L, Dr);
    PRIMUS_CUDA_LAUNCH_CHECK();
    latent_attention_kernel<E><<<static_cast<unsigned>(B * H), kThreads, 0, stream>>>(
        static_cast<E*>(o_lat), scores, static_cast<const E*>(q_lat), static_cast<const E*>(q),
        static_cast<const E*>(cache_c), static_cast<const E*>(cache_pe), positions, H, Dq, L, Dr, Lmax, scale);
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

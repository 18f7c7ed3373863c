// Embedding kernels.
// Forward: a gather of rows, 16-byte vectors when C and the pointers allow it.
// Backward: radix-sort (id, token position) pairs (stable, so equal ids keep token order),
// then one block per run of equal ids sums that run's rows of dout in order into fp32 and
// adds the sum to dtable's row once. Deterministic; hot ids cost one serial loop per run.
#include "ops/cuda/embedding.h"

#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;

template <typename TO, typename TT, int VEC>
__global__ void embedding_forward_kernel(TO* out, const int32_t* ids, const TT* table, int64_t N, int64_t C) {
  const int64_t vecs_per_row = C / VEC;
  const int64_t total = N * vecs_per_row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / vecs_per_row, c = (i - row * vecs_per_row) * VEC;
    const int64_t id = ids[row];
    float v[VEC];
    load_vec<TT, VEC>(v, table + id * C + c);
    store_vec<TO, VEC>(out + row * C + c, v);
  }
}

__global__ void iota_kernel(int32_t* p, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    p[i] = static_cast<int32_t>(i);
}

template <typename T, int VEC>
__global__ void embedding_backward_runs_kernel(float* dtable, const T* dout, const int32_t* sorted_ids,
                                               const int32_t* sorted_pos, int64_t N, int64_t C) {
  const int64_t i = blockIdx.x;
  const int32_t id = sorted_ids[i];
  if (id < 0) return;
  if (i > 0 && sorted_ids[i - 1] == id) return;  // not the first of its run
  int64_t end = i + 1;
  while (end < N && sorted_ids[end] == id) ++end;
  float* dst = dtable + static_cast<int64_t>(id) * C;
  for (int64_t c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
    float acc[VEC] = {};
    for (int64_t j = i; j < end; ++j) {
      float v[VEC];
      load_vec<T, VEC>(v, dout + static_cast<int64_t>(sorted_pos[j]) * C + c);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += v[k];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) dst[c + k] += acc[k];
  }
}

size_t cub_temp_bytes(int64_t N, int64_t V) {
  size_t bytes = 0;
  PRIMUS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr),
                                                    static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), static_cast<int>(N), 0, 32));
  return bytes;
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

void launch_embedding_forward(void* out, DType out_dt, const int32_t* ids, const void* table, DType table_dt,
                              int64_t N, int64_t C, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  PRIMUS_DISPATCH_FLOAT(out_dt, TO, {
    PRIMUS_DISPATCH_FLOAT(table_dt, TT, {
      constexpr int V = vec_width<TO>() < vec_width<TT>() ? vec_width<TO>() : vec_width<TT>();
      if (C % V == 0 && aligned16(out) && aligned16(table)) {
        embedding_forward_kernel<TO, TT, V><<<grid_for(N * C / V, kThreads), kThreads, 0, stream>>>(
            static_cast<TO*>(out), ids, static_cast<const TT*>(table), N, C);
      } else {
        embedding_forward_kernel<TO, TT, 1><<<grid_for(N * C, kThreads), kThreads, 0, stream>>>(
            static_cast<TO*>(out), ids, static_cast<const TT*>(table), N, C);
      }
    });
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

size_t embedding_backward_workspace_bytes(int64_t N, int64_t V) {
  return 3 * align256(static_cast<size_t>(N) * 4) + align256(cub_temp_bytes(N, V));
}

void launch_embedding_backward(float* dtable, const void* dout, DType dout_dt, const int32_t* ids, int64_t N,
                               int64_t C, int64_t V, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  PRIMUS_CHECK(N < (int64_t{1} << 31), "embedding backward: {} tokens exceed the int32 sort", N);
  PRIMUS_CHECK(workspace_bytes >= embedding_backward_workspace_bytes(N, V),
               "embedding backward: workspace of {} bytes, need {}", workspace_bytes,
               embedding_backward_workspace_bytes(N, V));
  char* ws = static_cast<char*>(workspace);
  const size_t slot = align256(static_cast<size_t>(N) * 4);
  int32_t* sorted_ids = reinterpret_cast<int32_t*>(ws);
  int32_t* pos = reinterpret_cast<int32_t*>(ws + slot);
  int32_t* sorted_pos = reinterpret_cast<int32_t*>(ws + 2 * slot);
  void* temp = ws + 3 * slot;
  size_t temp_bytes = workspace_bytes - 3 * slot;
  iota_kernel<<<grid_for(N, kThreads), kThreads, 0, stream>>>(pos, N);
  PRIMUS_CUDA_LAUNCH_CHECK();
  // All 32 bits: CUB orders signed keys correctly, so negative (ignored) ids sort first.
  PRIMUS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids, sorted_ids, pos, sorted_pos,
                                                    static_cast<int>(N), 0, 32, stream));
  PRIMUS_DISPATCH_FLOAT(dout_dt, T, {
    constexpr int VW = vec_width<T>() < 4 ? vec_width<T>() : 4;  // fp32 dtable: 4 per thread
    if (C % VW == 0 && aligned16(dout)) {
      embedding_backward_runs_kernel<T, VW><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          dtable, static_cast<const T*>(dout), sorted_ids, sorted_pos, N, C);
    } else {
      embedding_backward_runs_kernel<T, 1><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          dtable, static_cast<const T*>(dout), sorted_ids, sorted_pos, N, C);
    }
  });
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace primus::cuda

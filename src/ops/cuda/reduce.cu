// Multi-tensor reductions. Each block reduces one chunk (kChunk elements) of one tensor into
// a partial (fp64 for sums, int64 for counts); a single block then adds the partials in
// index order, so the result does not depend on scheduling.
#include "ops/cuda/reduce.h"

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"

namespace primus::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 32768;   // elements per block
constexpr int kMaxTensorsPerLaunch = 96;  // keeps the kernel parameters under 4 KB

struct ChunkList {
  const void* ptr[kMaxTensorsPerLaunch];
  int64_t n[kMaxTensorsPerLaunch];
  int64_t first_block[kMaxTensorsPerLaunch + 1];  // prefix sum of chunks
  uint8_t dtype[kMaxTensorsPerLaunch];
  int count;
};

__device__ int find_tensor(const ChunkList& list, int64_t block) {
  int lo = 0, hi = list.count - 1;
  while (lo < hi) {  // last tensor whose first_block <= block
    const int mid = (lo + hi + 1) / 2;
    if (list.first_block[mid] <= block) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Per-thread partial over [begin, end) of a tensor of type T.
template <typename T, typename Acc, typename Op>
__device__ Acc chunk_partial(const T* p, int64_t begin, int64_t end, Op op) {
  constexpr int V = vec_width<T>();
  Acc acc = 0;
  if (aligned16(p + begin)) {
    const int64_t nvec = (end - begin) / V;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      float v[V];
      load_vec<T, V>(v, p + begin + i * V);
      acc += op.vec(v);
    }
    for (int64_t i = begin + nvec * V + threadIdx.x; i < end; i += blockDim.x) acc += op.one(to_f32<T>(p[i]));
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += op.one(to_f32<T>(p[i]));
  }
  return acc;
}

struct SquareOp {
  template <int V>
  __device__ double vec(const float (&v)[V]) const {
    float s = 0.f;  // at most 8 products in fp32, then fp64
#pragma unroll
    for (int i = 0; i < V; ++i) s = fmaf(v[i], v[i], s);
    return static_cast<double>(s);
  }
  __device__ double one(float x) const { return static_cast<double>(x) * x; }
};
struct ZeroOp {
  template <int V>
  __device__ long long vec(const float (&v)[V]) const {
    long long c = 0;
#pragma unroll
    for (int i = 0; i < V; ++i) c += (v[i] == 0.f);
    return c;
  }
  __device__ long long one(float x) const { return x == 0.f; }
};

template <typename Acc, typename Op>
__global__ void chunk_reduce_kernel(ChunkList list, Acc* partials, Op op) {
  __shared__ Acc scratch[32];
  const int64_t block = blockIdx.x;
  const int t = find_tensor(list, block);
  const int64_t begin = (block - list.first_block[t]) * kChunk;
  const int64_t end = min(begin + kChunk, list.n[t]);
  Acc acc = 0;
  switch (static_cast<DType>(list.dtype[t])) {
    case DType::F32: acc = chunk_partial<float, Acc>(static_cast<const float*>(list.ptr[t]), begin, end, op); break;
    case DType::BF16:
      acc = chunk_partial<__nv_bfloat16, Acc>(static_cast<const __nv_bfloat16*>(list.ptr[t]), begin, end, op);
      break;
    default: acc = chunk_partial<__half, Acc>(static_cast<const __half*>(list.ptr[t]), begin, end, op); break;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[block] = acc;
}

// One block adds `count` partials; each thread strides in fixed order, then a fixed tree.
template <typename Acc>
__global__ void final_sum_kernel(const Acc* partials, int64_t count, Acc* result) {
  __shared__ Acc scratch[32];
  Acc acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *result = acc;
}

int64_t total_chunks(const std::vector<TensorRef>& tensors) {
  int64_t total = 0;
  for (const auto& t : tensors) total += ceil_div(t.n, kChunk);
  return total;
}

template <typename Acc, typename Op>
void run_reduce(const std::vector<TensorRef>& tensors, Acc* result, void* workspace, size_t workspace_bytes,
                Op op, cudaStream_t stream) {
  const int64_t chunks = total_chunks(tensors);
  PRIMUS_CHECK(workspace_bytes >= static_cast<size_t>(chunks) * sizeof(Acc),
               "multi-tensor reduction: workspace of {} bytes, need {}", workspace_bytes, chunks * sizeof(Acc));
  Acc* partials = static_cast<Acc*>(workspace);
  int64_t written = 0;
  size_t i = 0;
  while (i < tensors.size()) {
    ChunkList list{};
    list.count = 0;
    int64_t blocks = 0;
    for (; i < tensors.size() && list.count < kMaxTensorsPerLaunch; ++i) {
      const TensorRef& t = tensors[i];
      if (t.n == 0) continue;
      PRIMUS_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
                   "multi-tensor reduction: dtype {} not supported (fp32, bf16, fp16)", dtype_name(t.dtype));
      list.ptr[list.count] = t.ptr;
      list.n[list.count] = t.n;
      list.dtype[list.count] = static_cast<uint8_t>(t.dtype);
      list.first_block[list.count] = blocks;
      blocks += ceil_div(t.n, kChunk);
      ++list.count;
    }
    if (list.count == 0) continue;
    list.first_block[list.count] = blocks;
    chunk_reduce_kernel<Acc, Op><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(list, partials + written, op);
    PRIMUS_CUDA_LAUNCH_CHECK();
    written += blocks;
  }
  final_sum_kernel<Acc><<<1, 1024, 0, stream>>>(partials, written, result);
  PRIMUS_CUDA_LAUNCH_CHECK();
}

}  // namespace

size_t multi_reduce_workspace_bytes(const std::vector<TensorRef>& tensors) {
  return static_cast<size_t>(total_chunks(tensors) + 1) * 8;
}

void launch_sum_of_squares(const std::vector<TensorRef>& tensors, double* result, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  run_reduce<double>(tensors, result, workspace, workspace_bytes, SquareOp{}, stream);
}

void launch_count_zeros(const std::vector<TensorRef>& tensors, long long* result, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream) {
  run_reduce<long long>(tensors, result, workspace, workspace_bytes, ZeroOp{}, stream);
}

}  // namespace primus::cuda

// Mixture-of-experts kernels of the CUDA backend; the math of each op is in backend.h
// ("mixture of experts"), the fp32 reference in ops/cpu/cpu_moe.cpp.
// Shapes: N tokens, E experts, k = top-k, G groups of N/G consecutive tokens, Q = N*k
// (token, slot) pairs (pair q = t*k + j), M rows of the expert-sorted buffer, C hidden width.
// Routing tensors are fp32, ids / rows int32; the activations of permute / unpermute are in
// `dt` (fp32, bf16 or fp16) and summed in fp32 (one rounding per output element).
// Every launcher is stream-ordered and deterministic (no float atomics anywhere).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// The routing kernels keep one token's E scores in a warp's registers.
constexpr int kMoeMaxExperts = 256;

// Backend::MoeRouting as plain values (this header does not see backend.h).
struct MoeRoutingParams {
  int topk = 1;
  bool sigmoid = false;
  bool pre_softmax = false;
  int num_groups = 0, group_topk = 0;
  bool group_max = false;  // a group's score: its best expert (else its top k / group_topk summed)
  float scaling = 1.f;
};

// Router top-k, one warp per token. logits (N,E) fp32, bias (E) fp32 or nullptr ->
// probs (N,k) fp32, indices (N,k) int32 (descending selection score, ties: lower index).
// E <= 256, 1 <= k <= E; group-limited when num_groups > 0 (backend.h).
void launch_moe_topk_forward(float* probs, int32_t* indices, const float* logits, const float* bias, int64_t N,
                             int64_t E, const MoeRoutingParams& r, cudaStream_t stream);
// d_logits (N,E) fp32 written = (d probs / d logits)^T d_probs (N,k); any E.
void launch_moe_topk_backward(float* d_logits, const float* d_probs, const float* logits, const int32_t* indices,
                              int64_t N, int64_t E, const MoeRoutingParams& r, cudaStream_t stream);

// Load-balancing statistics (E <= 256, G divides N): score_sums (G,E), counts (G,E), lse_sq (1),
// all fp32 and written. Pass 1: per chunk of a group's tokens, fixed-order partial sums into the
// workspace; pass 2: the chunks of each group summed in order.
size_t moe_aux_stats_workspace_bytes(int64_t N, int64_t E, int64_t G);
void launch_moe_aux_stats(float* score_sums, float* counts, float* lse_sq, const float* logits, int64_t N, int64_t E,
                          int64_t G, int64_t topk, bool sigmoid, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream);
// d_logits (N,E) fp32 += d/dz [sum_t sum_i score_grad[g(t),i] s[t,i] + z_weight sum_t lse(z_t)^2];
// score_grad (G,E) fp32; any E.
void launch_moe_aux_backward(float* d_logits, const float* logits, const float* score_grad, int64_t N, int64_t E,
                             int64_t G, float z_weight, bool sigmoid, cudaStream_t stream);

// Dispatch plan (Q < 2^31): indices (N,k) int32, probs (N,k) fp32 (read only with
// drop_by_probs and a capacity) -> row_of (N,k) int32 (-1 = dropped), pair_of_row (first
// sum(tokens_per_expert) rows written; -1 = padding row), tokens_per_expert (E) int32. Stable
// radix sorts of the pairs by expert (by (expert, prob desc) first for drop_by_probs), then one
// thread per output row. An expert id outside [0, E) drops its pair.
size_t moe_dispatch_plan_workspace_bytes(int64_t N, int64_t k, int64_t E, int64_t capacity, bool drop_by_probs);
void launch_moe_dispatch_plan(int32_t* row_of, int32_t* pair_of_row, int32_t* tokens_per_expert,
                              const int32_t* indices, const float* probs, int64_t N, int64_t k, int64_t E,
                              int64_t capacity, bool drop_by_probs, bool pad, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream);

// x_perm (M,C) row r = x (N,C) row pair_of_row[r] / topk, zeros where pair_of_row[r] < 0.
void launch_moe_permute(void* x_perm, const void* x, const int32_t* pair_of_row, DType dt, int64_t M, int64_t C,
                        int64_t topk, cudaStream_t stream);
// dx (N,C) += sum_j d_x_perm (M,C) row row_of[t,j] over the kept slots; row_of (N,k).
void launch_moe_permute_backward(void* dx, const void* d_x_perm, const int32_t* row_of, DType dt, int64_t N,
                                 int64_t k, int64_t C, cudaStream_t stream);
// y (N,C) += sum_j probs[t,j] y_perm (M,C) row row_of[t,j] over the kept slots.
void launch_moe_unpermute(void* y, const void* y_perm, const int32_t* row_of, const float* probs, DType dt,
                          int64_t N, int64_t k, int64_t C, cudaStream_t stream);
// Written: d_y_perm (M,C) row r = probs[q] * dy (N,C) row q / k for q = pair_of_row[r] (zeros
// when q < 0); d_probs (N,k) fp32 = dy[t] . y_perm[row_of[t,j]] (0 when dropped).
void launch_moe_unpermute_backward(void* d_y_perm, float* d_probs, const void* dy, const void* y_perm,
                                   const int32_t* row_of, const int32_t* pair_of_row, const float* probs, DType dt,
                                   int64_t N, int64_t k, int64_t M, int64_t C, cudaStream_t stream);

// How CudaBackend::grouped_linear_* run the experts' GEMMs:
//   Loop    one cuBLASLt matmul per expert with rows, one after another on the backend's stream
//           (the GEMM engine: its plan cache and tuning table);
//   Lanes   the same matmuls issued at once over GemmEngine::kMaxLanes streams (fork, expert e
//           on lane e mod 4, join): the experts run concurrently, so many small experts
//           (DeepSeek's 64 of ~768 rows, each under one wave of the GPU's SMs) fill it together
//           the way one grouped launch would. What moe_grouped_gemm: true selects;
//   Batched one cublasGemmGroupedBatchedEx per GEMM kind (forward, dgrad, wgrad), one group per
//           expert, where cuBLAS takes the types: cuBLAS 13 refuses bf16 / fp16 inputs with an
//           fp32 output, so an fp32 dw (the usual wgrad) still loops (said once on stderr). Its
//           kernel on Hopper is an sm80 (mma.sync) CUTLASS one: about half of Lanes' speed at the
//           MoE bench shapes (docs/MOE.md), so only `primus bench moe` uses it.
// A process-wide setting; default Loop.
enum class GroupedGemmImpl { Loop, Lanes, Batched };
void set_grouped_gemm_impl(GroupedGemmImpl impl);
GroupedGemmImpl grouped_gemm_impl();

}  // namespace primus::cuda

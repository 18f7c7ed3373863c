// Flash attention (FlashAttention-2 style) on tensor cores via mma.sync, bf16/fp16, head dims
// 64 and 128, causal or not, GQA. The forward saves lse; the backward recomputes P from lse,
// accumulates dK/dV per key block in registers (over every query head of the kv group, so no
// atomics for them) and dQ through fp32 atomics into a workspace.
// Layouts: q (B,T,Hq,D), k and v (B,T,Hkv,D), out (B,T,Hq,D), lse (B,Hq,T) fp32 natural log.
// segments: null, or (B,T) int32 document ids, non-decreasing per row (packed sequences): a query
// sees only the keys of its own document; key/query tiles outside the documents of a tile are
// skipped (ops/backend.h has the mask).
// Other head dims (MLA's 192/128 included) go through attention_simple.h until a templated
// instance is added here (the kernels are written for any D that is a multiple of 64 with
// Dqk == Dv; a Dqk != Dv variant needs separate Q/K and V tile widths).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace primus::cuda {

// Tilings, chosen by measurement on an H100 (`primus bench attention --all-configs`, see
// docs/PERFORMANCE.md): 32 query rows per forward warp was 1.2x faster than 16 at head dim 64.
struct FlashConfig {
  int fwd_warps = 4;   // warps per forward block (4 or 8)
  int fwd_rows = 32;   // query rows per forward warp: 16, or 32 (head dim 64 only; K/V fragments reused
                       // twice); 32 falls back to 16 at head dim 128
  int bwd_warps = 4;   // warps per backward block (4 or 8)
  int bwd_rows = 64;   // query rows per backward tile (32 or 64)
  int bwd_keys = 16;   // key rows per backward warp: 16, or 32 (head dim 64 with bwd_rows 32 only)
};
// Every tiling the kernels have, for benchmarks and tests.
std::vector<FlashConfig> flash_configs(int64_t head_dim);

bool flash_attention_supported(DType dt, int64_t d_qk, int64_t d_v);

void launch_flash_attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, DType dt,
                                    int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, float scale, bool causal,
                                    cudaStream_t stream, FlashConfig cfg = {}, const int32_t* segments = nullptr);

size_t flash_attention_backward_workspace_bytes(int64_t B, int64_t T, int64_t Hq, int64_t D);
// dq (B,T,Hq,D), dk/dv (B,T,Hkv,D) written (not accumulated).
void launch_flash_attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                                     const void* v, const void* out, const float* lse, DType dt, int64_t B, int64_t T,
                                     int64_t Hq, int64_t Hkv, int64_t D, float scale, bool causal, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream, FlashConfig cfg = {},
                                     const int32_t* segments = nullptr);

}  // namespace primus::cuda

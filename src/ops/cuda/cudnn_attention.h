// Causal/full scaled-dot-product attention through cuDNN's fused SDPA (flash) engines, built with
// the cuDNN 9 backend graph API (cudnn_attention_graph.h): forward with softmax stats, backward
// to dQ, dK, dV. GQA (Hq a multiple of Hkv), bf16/fp16 I/O, head dims Dqk and Dv as separate
// parameters (64/64 and 128/128 for Llama; 192/128 for DeepSeek's MLA where cuDNN supports it).
//
// Layouts are those of the Backend attention ops (ops/backend.h), no copies or transposes:
//   q (B,T,Hq,Dqk), k (B,T,Hkv,Dqk), v (B,T,Hkv,Dv), out / dout (B,T,Hq,Dv), lse (B,Hq,T) fp32.
// cuDNN sees them as 4-d (b, h, s, d) tensors with strides (T*H*D, D, H*D, 1), and K, V of the
// backward as transposed views (b, h, d, s) with strides (T*H*D, D, 1, H*D).
// lse convention: lse[b,h,i] = log sum_j exp(S[i,j]) (natural log) with S = scale * q_i.k_j
// (masked entries excluded) — exactly cuDNN's "Stats" (max + log(sum exp(S - max)), per
// (B,H,T,1), fp32), so no conversion is needed and forward/backward can mix with our flash and
// simple kernels (same O, same lse).
//
// The forward graph (the pattern of cuDNN's fused flash-attention fprop engine):
//   S = (Q @ K^T) * scale -> [causal: row >= col ? S : -inf] -> M = rowmax(S), E = exp(S - M),
//   Z = rowsum(E), Stats = M + log(Z), P = E / Z (bf16) -> O = P @ V.
// The backward graph (fused bprop engine):
//   Dsum = rowsum(dO * O) (fp32 workspace), P = exp(scale*Q@K^T - Stats) [masked],
//   dV = P^T @ dO (summed over the query heads of a kv group), dS = P * (dO@V^T - Dsum) * scale,
//   dK = dS^T @ Q (summed over the group), dQ = dS @ K (fp32 accumulator in workspace -> bf16).
//
// One CudnnAttention per CudaBackend (one cuDNN handle on the backend's stream). Execution plans
// are built once per (pass, shape) — engine heuristics mode A, first config that finalizes — and
// cached with the failure reason when cuDNN cannot run a shape, so a refusal costs one attempt.
// Workspace comes from the caller (the backend's scratch buffer).
//
// Workarounds (CudnnAttentionOptions; training sets them from the experiment keys
// cudnn_attention_padding_workaround and cudnn_attention_mask_index):
//   padding_workaround auto|on|off  backward graph with an explicit full-length padding mask + GEMM
//       M/N/K overrides. cuDNN <= 9.15 needs it when T % 128 != 0 (the workaround the cuDNN
//       frontend applies); auto = exactly then.
//   mask_index_int32  data type of the generated row/column indices of the causal mask (int32, as
//       the current cuDNN frontend does; float as older frontends did).
// cuDNN's own log (which engine, why refused): CUDNN_LOGLEVEL_DBG=3 CUDNN_LOGDEST_DBG=stderr.
#pragma once

#include <cuda_runtime.h>

#include <compare>
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace primus::cuda {

// One attention problem: the plan cache key.
struct CudnnAttentionShape {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, Dqk = 0, Dv = 0;
  DType dtype = DType::BF16;
  bool causal = true;
  auto operator<=>(const CudnnAttentionShape&) const = default;
  std::string describe() const;  // "B=2 T=128 Hq=4 Hkv=2 D=64/64 bf16 causal"
};

enum class CudnnPass { Forward, Backward };

// out (B,T,Hq,Dv), lse (B,Hq,T) fp32 written; q, k, v read.
struct CudnnAttentionForwardArgs {
  void* out = nullptr;
  float* lse = nullptr;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  float scale = 1.f;
};
// dq (B,T,Hq,Dqk), dk (B,T,Hkv,Dqk), dv (B,T,Hkv,Dv) written (not accumulated).
struct CudnnAttentionBackwardArgs {
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  const void *dout = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
  const float* lse = nullptr;
  float scale = 1.f;
};

struct CudnnAttentionOptions {
  enum class PaddingWorkaround { Auto, On, Off };
  PaddingWorkaround padding_workaround = PaddingWorkaround::Auto;
  bool mask_index_int32 = true;
};

class CudnnAttention {
 public:
  // Cheap: the cuDNN handle is made on first use (so a backend without attention never loads cuDNN).
  CudnnAttention(int device, cudaStream_t stream, CudnnAttentionOptions options = {});
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Whether this build has the cuDNN path at all (CMake found libcudnn and its headers).
  static bool compiled_in();

  // Builds and caches the plan for (pass, shape) on first call. Returns "" when cuDNN runs the
  // shape, else why not (a cuDNN error names the descriptor, attribute and cuDNN's own message).
  const std::string& prepare(CudnnPass pass, const CudnnAttentionShape& s);
  // The dispatch policy of the backend: true when cuDNN runs (pass, shape). Otherwise throws the
  // reason when `strict`, or prints a one-time warning per (pass, shape) naming the reason and the
  // fallback and returns false.
  bool ready(CudnnPass pass, const CudnnAttentionShape& s, bool strict, const char* fallback);
  // Bytes of workspace forward()/backward() need (prepare() must have succeeded).
  size_t workspace_bytes(CudnnPass pass, const CudnnAttentionShape& s);
  // The engine the plan uses ("engine 9 (candidate 0 of 4, heuristics mode A)"), or the refusal.
  std::string describe(CudnnPass pass, const CudnnAttentionShape& s);

  // Enqueue on the backend's stream. `workspace` holds at least workspace_bytes(pass, s) bytes,
  // 256-byte aligned, and is not used by anything else until the call's work completes.
  void forward(const CudnnAttentionShape& s, const CudnnAttentionForwardArgs& a, void* workspace, size_t bytes);
  void backward(const CudnnAttentionShape& s, const CudnnAttentionBackwardArgs& a, void* workspace, size_t bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace primus::cuda

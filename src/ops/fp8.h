// FP8 linear layers: Transformer Engine's per-tensor scaling recipes over cuBLASLt FP8 GEMMs.
//
// A linear y (M,N) = x (M,K) @ w (N,K)^T runs its three GEMMs on FP8 copies of its operands,
// each tensor t cast as q(t) = fp8(t * s) with a per-tensor scale s and multiplied back by
// 1/s inside the GEMM (cuBLASLt's A/B scale pointers), accumulating in fp32:
//
//   forward  y  = (q(x) @ q(w)^T) / (s_x s_w)                 fast accumulation
//   dgrad    dx = (q(dy) @ q(w^T)^T) / (s_dy s_w)             x, w: E4M3; dy: E4M3 ("e4m3")
//   wgrad    dw (+)= (q(dy^T) @ q(x^T)^T) / (s_dy s_x)         or E5M2 ("hybrid")
//
// Hopper's FP8 GEMM reads both operands K-major, so every operand is cast in the layout its
// GEMM wants: w and w^T once per optimizer step (cached until the weights change), x in the
// forward and x^T again in the backward (from the activation the layer keeps anyway), dy and
// dy^T in one pass. Master weights, gradients and the optimizer stay as they are; only the
// GEMMs see FP8.
//
// Scaling, per tensor role r of a linear (input x, weight w, grad output dy), s = (F / amax)
// / 2^margin with F the format's largest finite (448 E4M3, 57344 E5M2):
//   tensorwise  amax of the tensor being cast ("current scaling"): one extra read of it
//   delayed     amax from the history of the last H steps (max, or the most recent), updated
//               once per step by fp8_update_scales; each cast records its tensor's amax into
//               the history's current row. A step that saw amax 0 (or NaN/inf) keeps its scale.
//
// State of one linear: meta (3, W) fp32 on the layer's device, rows input / weight / grad
// output, each [amax history h_0 .. h_{H-1}, zeros up to a multiple of 4 | 1/scale | scale | 0 0]
// (W = H rounded up to 4, plus 4): 1/scale starts a 16-byte boundary, as cuBLASLt wants of a
// GEMM's scale pointer. h_0 is the current step's amax, h_j the one of j steps ago. Fresh state:
// zeros, scale 1.
//
// The CPU runs the same recipe as the reference (fp8 bytes from core/fp8_bits.h, GEMMs on
// their fp32 values): the specification the CUDA path is tested against, and what the CPU
// ranks of the parallel tests train with. CUDA needs bf16 operands; every GEMM dimension
// (tokens, in and out features) a multiple of 16.
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "ops/ops.h"

namespace primus::ops {

enum class Fp8Format : uint8_t { E4M3, Hybrid };  // Hybrid: E4M3 forward, E5M2 gradients
enum class Fp8Recipe : uint8_t { Delayed, Tensorwise };

struct Fp8Options {
  Fp8Format format = Fp8Format::Hybrid;
  Fp8Recipe recipe = Fp8Recipe::Delayed;
  int margin = 0;            // fp8_margin: scales divided by 2^margin
  int amax_history_len = 1;  // fp8_amax_history_len (H)
  bool amax_max = false;     // fp8_amax_compute_algo: max over the history, else most_recent
  // Bumped whenever the weights change (an optimizer step, a checkpoint load): a linear
  // re-casts its weight at its first use after it.
  uint64_t weights_generation = 0;

  DType forward_dtype() const { return DType::F8E4M3; }
  DType grad_dtype() const { return format == Fp8Format::Hybrid ? DType::F8E5M2 : DType::F8E4M3; }
  // The meta row's layout (see the file comment).
  int64_t history_cols() const { return (amax_history_len + 3) / 4 * 4; }
  int64_t scale_inv_col() const { return history_cols(); }
  int64_t scale_col() const { return history_cols() + 1; }
  int64_t meta_cols() const { return history_cols() + 4; }
};

enum Fp8Role : int { kFp8Input = 0, kFp8Weight = 1, kFp8GradOutput = 2 };

// One FP8 linear: its scaling state and the weight's casts for the current weights.
struct Fp8Linear {
  const Fp8Options* options = nullptr;
  Tensor meta;                  // (3, W) fp32 (a view into the model's state, Fp8Training)
  Tensor w8, wt8;               // (N,K) and (K,N) E4M3: the weight as the GEMMs read it
  uint64_t cast_generation = ~uint64_t{0};
};

// y (M,N) = x (M,K) @ w (N,K)^T [+ residual (M,N)], x, w and y of one dtype. record_amax: a
// training forward (delayed scaling records x's and w's amax; evaluation passes false).
void fp8_linear_forward(Context& ctx, Fp8Linear& l, Arena& arena, Tensor& y, const Tensor& x, const Tensor& w,
                        const Tensor* residual, bool record_amax);
// dx (M,K) = dy @ w (written; skipped when dx is null), dw (N,K) += dy^T @ x (fp32 or w's
// dtype; = with !accumulate_dw; skipped when undefined). Same scales as the forward of x.
void fp8_linear_backward(Context& ctx, Fp8Linear& l, Arena& arena, Tensor* dx, Tensor& dw, const Tensor& dy,
                         const Tensor& x, const Tensor& w, bool accumulate_dw);

// Delayed scaling's step: metas (L, 3, W) fp32, every linear of the model; per row
// amax = max(h) or h_0, s = F / amax / 2^margin when amax is finite and > 0 (else s kept),
// then the history shifts (h_j = h_{j-1}, h_0 = 0). Tensorwise: nothing to do.
void fp8_update_scales(Context& ctx, const Fp8Options& o, Tensor& metas);

// ---- the pieces (exposed for tests) ------------------------------------------------------

// out (R,C) and/or out_t (C,R) (either may be undefined) = fp8(x (R,C) * s) with s from
// meta row `role`: its scale (delayed; amax(x) max-ed into h_0 when record_amax) or computed
// from amax(x) now (tensorwise; written to the row's scale, 1/scale and h_0).
void fp8_cast(Context& ctx, const Fp8Options& o, Tensor& meta, int role, Tensor& out, Tensor& out_t,
              const Tensor& x, bool record_amax);
// out (M,N) = beta * (c or out) + (p (M,K) @ q (N,K)^T) * p_scale_inv * q_scale_inv, p and q
// FP8 (not both E5M2), scale_inv (1) fp32 tensors; out bf16 or fp32 (c of out's dtype).
void fp8_gemm_nt(Context& ctx, Tensor& out, const Tensor& p, const Tensor& p_scale_inv, const Tensor& q,
                 const Tensor& q_scale_inv, float beta, const Tensor* c, bool fast_accum);
// The 1/scale entry of a meta row as a (1) tensor (a view).
Tensor fp8_scale_inv(const Fp8Options& o, const Tensor& meta, int role);

}  // namespace primus::ops

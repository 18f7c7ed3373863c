// CUDA launchers of next-token choice on the device (generation, src/infer/device_sampler.h),
// so that a decode step sends B token ids back to the host instead of B x V logits. They
// follow infer/sampling.h to the operation (same order, same tie rule, same double math) so
// that the device picks the host's token for the same logits and uniform.
//
// Shapes: logits (B, ld) fp32 row-major, of which the first `vocab` columns are the allowed
// ids (1 <= vocab <= ld). Per row b, written:
//   tokens[b]  int32 chosen id
//   status[b]  int32: 0 = chosen on the device; 1 = the device leaves row b to the host
//              (infer::sample_token): a top-k set larger than kSampleCandidates but smaller
//              than the vocabulary, or a target the row's total weight misses by rounding;
//              2 = the largest logit is not finite (the host's sampling_distribution throws)
//   entropy[b] fp32 (when entropy != nullptr): -sum p log p of softmax(logits / T) over the
//              allowed ids, NaN logits skipped (infer::generate's entropy_of), 0 when the
//              largest logit is not finite. T = `entropy_temperature`.
//
// launch_argmax_entropy: greedy. tokens[b] = argmax over the allowed ids, lowest id on ties,
// NaN never chosen unless all are (then 0): infer::argmax. status[b] = 0.
//
// launch_sample_tokens: temperature T > 0, top-k, top-p, one uniform u[b] in [0, 1) per row
// (infer::sampling_uniform of the row's stream and step, computed by the caller). Per row:
//   K = top_k when 0 < top_k < vocab, else vocab (top-k off);
//   candidates: the min(K, kSampleCandidates) largest logits (NaN as -inf), sorted by value
//   descending, lower id first on ties (a radix select over the row, then a rank sort);
//   p_i = exp(z_i / T - z_max / T) in double; total = sum over the K kept ids (the candidates
//   when K <= kSampleCandidates, else a sum over the whole row); top-p prefix; renormalise;
//   the first candidate whose cumulative probability exceeds u. With top-k off, when the top-p
//   prefix or the draw reaches past the candidates (a flat distribution), the same running sums
//   in the same order are followed over the whole row without sorting it: a radix select on
//   the keys by the summed weight of each 8-bit digit finds the value where the running sum
//   crosses top_p * total (resp. u * kept weight), then the tie index among the ids of that
//   value (the sums' order differs from the host's sequential one: a draw within ~1e-16 of a
//   boundary may differ). 1024 < top_k < vocab: status 1.
//
// launch_advance_positions: positions[b] += 1 for b < B (int32): the decode step's new
// positions, kept on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace primus::ops::cuda {

constexpr int64_t kSampleCandidates = 1024;

void launch_argmax_entropy(const float* logits, int64_t B, int64_t ld, int64_t vocab, float entropy_temperature,
                           int32_t* tokens, int32_t* status, float* entropy, cudaStream_t stream);

void launch_sample_tokens(const float* logits, int64_t B, int64_t ld, int64_t vocab, float temperature, int64_t top_k,
                          float top_p, const double* uniforms, int32_t* tokens, int32_t* status, cudaStream_t stream);

void launch_advance_positions(int32_t* positions, int64_t B, cudaStream_t stream);

}  // namespace primus::ops::cuda

// DeviceSampler: the next token of every sequence chosen on the GPU from the decode step's
// (B, V) fp32 logits, so that a step sends back B ids (and B entropies) instead of the logits.
//
//   choose(logits, step)  greedy: argmax over ids [0, vocab), lowest id on ties (infer::argmax);
//                         sampled: sampling.h's temperature -> top-k -> softmax -> top-p ->
//                         inverse CDF with u = sampling_uniform(seed, stream_b, step), the same
//                         arithmetic as sample_token (ops/cuda/sampling.h). With keep_entropy,
//                         also the entropy of softmax(logits / T) over ids [0, vocab) (T = 1
//                         when greedy). One device-to-host copy of (token, status, entropy) per
//                         sequence; a row the device leaves to the host (status 1: 1024 < top_k
//                         < vocabulary, or a rounding corner) is sampled on the host from that
//                         row's logits and its id written back (set_token).
//   device_tokens()       int32 (B) on the device: the chosen ids, the next decode step's input.
//
// The uniforms of every (sequence, step) are computed on the host once (sampling_uniform) and
// uploaded at construction: no per-step host-to-device copy. CUDA only (the CPU decoder keeps
// sample_token on the host); constructing one in a build without CUDA throws.
//
// Per-call draws (continuous batching, generate.h): constructed with a row count instead of
// streams, the sampler takes each call's (stream, step) per row, since a slot's sequence and
// its step change when a new prompt joins the slot. Sampled calls compute those rows' uniforms
// on the host and copy them (rows x 8 bytes) before the kernels; greedy calls copy nothing.
// A call may pass fewer logits rows than the sampler has (the joiners of a prefill). Calls are
// numbered by the caller (`call`: which of the two host slots, as `step` above).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "infer/sampling.h"
#include "ops/ops.h"

namespace primus::infer {

class DeviceSampler {
 public:
  // streams[b]: the sampling stream of sequence b (sample_ids, or b); steps: how many choose()
  // calls at most (max_new_tokens); vocab: ids [0, vocab) are allowed (<= the logits' columns).
  DeviceSampler(ops::Context& ctx, const SamplingOptions& options, int64_t vocab, bool keep_entropy,
                const std::vector<uint64_t>& streams, int64_t steps);
  // Per-call draws: up to `rows` logits rows per call.
  DeviceSampler(ops::Context& ctx, const SamplingOptions& options, int64_t vocab, bool keep_entropy, int64_t rows);
  ~DeviceSampler();
  DeviceSampler(const DeviceSampler&) = delete;
  DeviceSampler& operator=(const DeviceSampler&) = delete;

  // logits (B, V) fp32 on the context's device, V >= vocab. After it returns, token(b) and
  // entropy(b) hold step `step`'s choice (rows the device left to the host are sampled here,
  // except rows b with skip[b], finished sequences whose token nobody reads).
  void choose(const Tensor& logits, int64_t step, const std::vector<bool>& skip = {});
  // choose() in two halves, so that the next decode step can be queued before the host reads
  // this one's tokens (greedy generation: the GPU does not wait for the host between steps).
  // enqueue: the kernels and the copy back (two host slots: steps s and s + 1 may be in flight);
  // collect: waits for that copy. A row that needs the host (status 1: sampled decoding with
  // 1024 < top_k < vocabulary, or a rounding corner) is an error after enqueue + collect: use
  // choose() for sampled decoding (greedy never needs the host).
  void enqueue(const Tensor& logits, int64_t step);
  void collect(int64_t step, const std::vector<bool>& skip = {});

  // Per-call draws: row b of `logits` ((n, V), n <= rows) draws with draws[b] (n of them).
  struct Draw {
    uint64_t stream = 0, step = 0;
  };
  void choose(const Tensor& logits, int64_t call, const std::vector<Draw>& draws, const std::vector<bool>& skip = {});
  void enqueue(const Tensor& logits, int64_t call, const std::vector<Draw>& draws);
  // device_tokens()[rows[j]] = from.device_tokens()[j], ordered after the work queued so far
  // (device to device: the joiners' first tokens become the next decode step's input).
  void copy_tokens_from(const DeviceSampler& from, const std::vector<int64_t>& rows);

  int64_t batch() const { return batch_; }
  int32_t token(int64_t b) const { return cur_[b]; }
  double entropy(int64_t b) const;
  // How many rows were sampled on the host so far (status 1).
  int64_t host_fallbacks() const { return host_fallbacks_; }
  const Tensor& device_tokens() const { return tokens_; }

 private:
  void init();  // checks, the token pack, the pinned host slots, the events
  void set_token(int64_t b, int32_t t);
  void collect(int64_t step, const Tensor* logits, const std::vector<bool>& skip);
  void enqueue_rows(const Tensor& logits, int64_t call, const double* uniforms, std::vector<Draw> draws);

  ops::Context& ctx_;
  SamplingOptions options_;
  int64_t vocab_ = 0, batch_ = 0, steps_ = 0;
  bool keep_entropy_ = false;
  std::vector<uint64_t> streams_;
  Tensor pack_;       // int32 (3B) device: tokens | status | entropy (fp32 bits)
  Tensor tokens_;     // view of pack_ [0, B)
  Tensor uniforms_;   // f64 (steps, B) device (sampled decoding only)
  int32_t* host_ = nullptr;  // pinned, two slots of pack_'s size (steps s % 2)
  int32_t* cur_ = nullptr;   // the slot of the last collected step
  std::array<void*, 2> events_{};  // cudaEvent_t: each slot's copy done
  int64_t host_fallbacks_ = 0;
  bool per_call_ = false;
  Tensor call_uniforms_;                  // f64 (rows) device: the uniforms of a sampled per-call call
  double* call_uniforms_host_ = nullptr;  // pinned, two slots of `rows` (call % 2)
  std::array<std::vector<Draw>, 2> slot_draws_;  // each host slot's draws (host fallback)
};

}  // namespace primus::infer

// CachedDecoder: the decoder's inference forward with a KV cache, run by the same layer code
// as training (model/decoder_layer.h), in two phases:
//   prefill(prompts)  all prompt tokens of B sequences at once (right-padded to the longest
//                     prompt; causal attention keeps padding out of the real positions),
//                     each attention block writing positions 0..len_b-1 of its cache;
//   decode(tokens)    one new token per sequence at position cache.lengths[b]: RoPE at that
//                     position, attention of the one query over the cache, which grows by one.
// Positions and RoPE tables are those of training (model/rotary.h, ops::rope_tables; row p
// = position p).
//
// Weights are read by their names in decoder_spec's parameter table (decoder_weight_shapes:
// the trainable tensors and buffers such as the expert bias). All share one dtype (the
// compute dtype: fp32 on CPU, bf16 or fp32 on CUDA) and live on the context's device; the
// decoder keeps views of them (no copies). Logits are returned as fp32 host tensors (the
// output GEMM accumulates into fp32 directly).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/safetensors.h"
#include "infer/kv_cache.h"
#include "model/decoder_layer.h"
#include "model/rotary.h"

namespace primus {
class DecoderModel;
}

namespace primus::infer {

// Names and shapes of the tensors the decoder reads, in parameter_table() order.
std::vector<std::pair<std::string, Shape>> decoder_weight_shapes(const ModelConfig& c);

// Views of a DecoderModel's tensors by name (no copies): what a CachedDecoder reads.
NamedTensorList weights_of(DecoderModel& model);

class CachedDecoder {
 public:
  // `weights` must hold exactly the names of decoder_weight_shapes(config) with those shapes,
  // one float dtype, on ctx's device. `ctx` must outlive the decoder. Throws naming the key
  // when the config asks for a part generation does not build (check_buildable).
  CachedDecoder(const ModelConfig& config, ops::Context& ctx, const NamedTensorList& weights);
  ~CachedDecoder();

  const ModelConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  ops::Context& context() const { return ctx_; }

  // A zeroed cache for `batch` sequences of up to `max_len` positions (prompt + new tokens).
  KvCache new_cache(int64_t batch, int64_t max_len) const;
  // What the cache holds per token, summed over layers, and in words: "k and v" (GQA) or "the
  // latent c_kv + k_pe" (multi-latent attention), e.g. for the generate stats line.
  int64_t cache_values_per_token() const;
  // Bytes of the weights a decode step reads at least (each tensor once; the input embedding
  // only when it is also the output layer, tied: untied, a step reads B of its rows), for
  // roofline estimates.
  int64_t weight_bytes() const;
  std::string cache_description() const;

  // Runs every prompt token (prompts.size() == cache.batch; each prompt non-empty and no
  // longer than cache.max_len; ids in [0, padded_vocab_size)). Sets cache.lengths[b] to
  // the prompt length and returns the logits of each prompt's last token, (B, V) fp32 on
  // the host. With `all_logits`, also fills it with (B, Tmax, V) fp32 host logits of every
  // position (rows at and past a shorter prompt's length belong to padding).
  Tensor prefill(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts, Tensor* all_logits = nullptr);

  // One token per sequence (tokens.size() == cache.batch) at position cache.lengths[b]
  // (< cache.max_len); appends to the cache and returns the next-token logits (B, V) fp32
  // on the host.
  Tensor decode(KvCache& cache, std::span<const int32_t> tokens);

  // The two phases with the logits left on the device (the generation loop of generate.h on
  // CUDA: the tokens are chosen there, ops/cuda/sampling.h). Both return (B, V) fp32 on the
  // context's device, valid until the next prefill/decode call of this decoder.
  //   prefill_to_device(cache, prompts)  prefill() without the host copy
  //   decode_step(cache, tokens)         decode() with tokens int32 (B) on the context's
  //                                      device; positions come from cache.positions and the
  //                                      RoPE rows are gathered by position on the device; the
  //                                      step advances cache.positions with a kernel (and
  //                                      cache.lengths on the host): nothing is copied per step
  //                                      and, after the first step, nothing is allocated.
  // With cuda_graph (CUDA only): the first two steps of a (cache, tokens) pair run eagerly
  // (the arena, the scratch buffer and the GEMM plans reach their steady state), the third is
  // captured into a CUDA graph (cudaStreamBeginCapture on the context's stream) and every later
  // step replays it: one launch per step instead of one per op. Prefill drops the graph. A step
  // that cannot be captured (an op that synchronises or allocates, e.g. MoE routing counts)
  // runs eagerly, and so do all later ones of this decoder.
  Tensor prefill_to_device(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts);
  Tensor decode_step(KvCache& cache, const Tensor& tokens, bool cuda_graph = false);

  // Continuous batching (generate.h): prompts[j] into slot slots[j] of the cache (distinct
  // slots in [0, cache.batch), any order, any number 1..cache.batch). The joiners run as one
  // batch, right-padded to the longest of them (T), exactly as prefill() runs a batch; their
  // positions [0, len_j) are written into their slots (when the slots are one consecutive
  // range the attention blocks write there directly, otherwise through a (J, T, entry) staging
  // copy per layer), cache.lengths[slot] = len_j and the device positions of those slots are
  // reset to len_j. Every other slot keeps its cache rows, length and position: the
  // sequences decoding there go on as if nothing happened. Returns the logits of each
  // joiner's last token (J, V) fp32: on the host (prefill_slots; all_logits as in prefill(),
  // (J, T, V)) or on the device (prefill_slots_to_device: valid until the next prefill of this
  // decoder; decode steps do not overwrite them). Unlike prefill(), these keep a captured
  // decode-step graph: the prefill runs in its own arena, so the decode step's buffers stay
  // where the graph addresses them.
  Tensor prefill_slots(KvCache& cache, std::span<const int64_t> slots, const std::vector<std::vector<int32_t>>& prompts,
                       Tensor* all_logits = nullptr);
  Tensor prefill_slots_to_device(KvCache& cache, std::span<const int64_t> slots,
                                 const std::vector<std::vector<int32_t>>& prompts);
  // Copies cache.lengths (host) into cache.positions (device), ordered after the work queued
  // so far: for a caller that sets lengths by hand (an idle slot parked at position 1).
  void upload_positions(KvCache& cache) const;
  // Whether the last decode_step replayed a captured graph; why capture failed ("" if it did not).
  bool last_step_from_graph() const { return last_step_graphed_; }
  const std::string& graph_failure() const { return graph_failure_; }
  // Forgets a captured decode step: the next steps warm up and capture again (generate() calls
  // it when it starts, since its cache and sampler buffers are new).
  void reset_graph() { drop_graph(); }

 private:
  void check_cache(const KvCache& cache, const char* who) const;
  Tensor decode_step_body(KvCache& cache, const Tensor& tokens);  // the device work of a step
  struct StepGraph;  // a captured decode step (CUDA)
  void drop_graph();
  // x (n,C) through every layer, phase by phase; `attend` runs one attention block.
  template <typename Attend>
  void run_layers(LayerEnv& env, Tensor& x, Arena& arena, Attend&& attend);
  Tensor final_logits(const Tensor& x_rows, Arena& arena);  // (n,C) -> (n,V) fp32 host
  Tensor device_logits(const Tensor& x_rows);  // (n,C) -> (n,V) fp32 on the device (arena)
  // Prefill's forward; returns the hidden state of each prompt's last token, (B, C) (arena).
  Tensor prefill_rows(KvCache& cache, std::span<const int64_t> slots, const std::vector<std::vector<int32_t>>& prompts,
                      Tensor* all_logits, Arena& arena);
  Tensor device_logits(const Tensor& x_rows, Arena& arena);
  void ensure_rope_rows(int64_t n);

  ModelConfig config_;
  ops::Context& ctx_;
  DType dtype_ = DType::F32;
  std::vector<std::unique_ptr<NamedTensor>> tensors_;  // views of the given weights
  NamedTensor *embedding_ = nullptr, *final_norm_ = nullptr, *output_ = nullptr;
  std::vector<DecoderLayer> layers_;
  Rotary rotary_;
  Tensor cos_host_, sin_host_;  // (rows, R/2) fp32: positions [0, rows)
  Tensor cos_dev_, sin_dev_;    // the same tables on the context's device (decode_step gathers rows)
  Tensor decode_ids_;           // decode()'s tokens on the device
  std::unique_ptr<StepGraph> graph_;
  std::vector<const void*> graph_key_;  // what the warm-up steps / the graph were made for
  int64_t graph_warm_steps_ = 0;
  bool last_step_graphed_ = false;
  std::string graph_failure_;
  Arena arena_;
  Arena prefill_arena_;  // prefill_slots' activations (the decode step's arena_ stays as captured)
};

}  // namespace primus::infer

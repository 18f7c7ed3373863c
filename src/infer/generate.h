// generate(): prompts -> new tokens with a CachedDecoder, its KV cache and sampling.h, by
// continuous batching over a slotted cache (kv_cache.h).
//
//   cache: S slots x max_len positions (max_len = the longest prompt + max_new_tokens - 1);
//          S = the number of prompts, or fewer when GenerateOptions::kv_budget says so
//          (plan_kv_cache: a memory budget and/or a cap on the batch)
//   loop:  join   waiting prompts (in prompt order) take the free slots, lowest slot first;
//                 the joiners are prefilled together into their slots (prefill_slots) and
//                 their first token is drawn from the prefill's logits
//          step   one decode step over all S slots; a slot without a sequence rides along
//                 (its row is computed and ignored; the shapes, and a captured CUDA graph, stay
//                 fixed), parked at position 1 whenever its position would leave [1, max_len)
//          leave  a sequence that draws one of stop_ids (kept as its last token) or reaches
//                 max_new_tokens frees its slot at once; the next step's join fills it
// The draw of prompt b's k-th new token comes from sampling stream sample_ids[b] (or b) at
// step k, whatever slot it sits in and whenever it joined: the tokens are those of one batch
// of all prompts (S = B) for every S (up to the rounding of batched GEMMs, which may differ
// with the batch's shape: on the CPU fp32 path and in the tests the ids are equal). With S = B
// all prompts join at once and the loop is the one-batch generation: prefill all, then decode
// until every sequence has finished (finished ones ride along).
//
// On a GPU decoder the logits stay on the device and the tokens are chosen there
// (GenerateOptions::sample_on_device, infer/device_sampler.h: a sampler of S rows for the
// decode steps, one for the joiners, whose tokens are copied into the decode step's input on
// the device). Greedy decoding queues step s + 1 before the host reads step s; a slot freed by
// step s is filled after step s + 1 was queued (its result for that slot is dropped).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/cached_decoder.h"
#include "infer/sampling.h"

namespace primus::infer {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // e.g. the tokenizer's end of document / <|eot_id|>
  // Tokens are drawn from ids [0, vocab_limit) only (the tokenizer's vocabulary: the
  // padded rows of the output layer are never real tokens); 0 = every logits column.
  int64_t vocab_limit = 0;
  // Called for each new token as soon as it is chosen (streaming output).
  std::function<void(int64_t sequence, int32_t token)> on_token;
  // Keep the logits of every prompt position (GenerateResult::prompt_logits).
  bool keep_prompt_logits = false;
  // The sampling stream of each prompt (sampling.h: the draw of prompt b at step s comes from
  // counter (sample_ids[b] << 32) + s); empty = b. A caller that splits one batch of prompts
  // over several calls or ranks passes each prompt's index in the whole batch, so the draws do
  // not depend on how the batch was split.
  std::vector<uint64_t> sample_ids;
  // Sum, per sequence, of the entropy (nats) of softmax(logits / T) over the allowed ids at each
  // new token (T = temperature, 1 when greedy): GenerateResult::entropy_sums.
  bool keep_entropy = false;
  // On a GPU decoder: choose the tokens on the device (infer/device_sampler.h: the same tokens
  // as sample_token for the same logits; per step only the B ids and entropies come back to
  // the host). false: copy the (B, V) logits to the host each step and use sample_token there
  // (the reference path, e.g. for parity checks). Ignored on the CPU.
  bool sample_on_device = true;
  // With sample_on_device on a GPU decoder: capture the decode step in a CUDA graph after two
  // eager steps and replay it (CachedDecoder::decode_step; a step that cannot be captured runs
  // eagerly, GenerateResult::graph_failure says why). false: every step launches its ops.
  bool cuda_graphs = true;
  // How many slots the cache gets (kv_cache.h plan_kv_cache): a memory budget for the cache
  // and/or a cap on the batch; both 0 = one slot per prompt (one batch). Errors name the
  // budget's keys (the CLI's --kv-cache-memory / --max-batch by default).
  KvCacheBudget kv_budget;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // the new tokens of each prompt (stop token included)
  std::vector<std::string> finish_reasons;   // "stop" or "length"
  int64_t prompt_tokens = 0;                 // sum of prompt lengths
  int64_t generated_tokens = 0;              // sum of new tokens
  int64_t decode_steps = 0;                  // decode() calls
  double prefill_seconds = 0;                // prefill forward + first sampling
  double decode_seconds = 0;                 // every decode() call + sampling
  Tensor prompt_logits;                      // (B, Tmax, V) fp32 host, with keep_prompt_logits
  std::vector<double> entropy_sums;          // per sequence, with keep_entropy
  int64_t graph_steps = 0;                   // decode steps replayed from a CUDA graph
  std::string graph_failure;                 // why the decode step could not be captured ("" = it could)
  int64_t slots = 0;                         // S: sequences decoded together (the cache's batch)
  int64_t cache_max_len = 0;                 // positions per slot
  int64_t cache_bytes = 0;                   // the KV cache's memory (S x max_len x values per token)
  int64_t prefills = 0;                      // prefill calls (joins): 1 when S >= the number of prompts

  double prefill_tokens_per_s() const { return prompt_tokens / std::max(prefill_seconds, 1e-12); }
  // New tokens after the first (those the decode steps produced) per decode second.
  double decode_tokens_per_s() const {
    return static_cast<double>(generated_tokens - static_cast<int64_t>(tokens.size())) / std::max(decode_seconds, 1e-12);
  }
};

// The cache generate() allocates for these prompts: max_len = the longest prompt +
// max_new_tokens - 1, slots from options.kv_budget (throws naming its keys when the memory
// budget holds no slot).
KvCachePlan plan_generation_cache(const CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                                  const GenerateOptions& options);

// Throws on an empty prompt list, an empty prompt, max_new_tokens < 1, or prompts that
// with max_new_tokens do not fit max_len = the longest prompt + max_new_tokens - 1
// positions (the cache is sized to that).
GenerateResult generate(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& options);
// The same with a cache the caller keeps (decoder.new_cache(slots, max_len), e.g. once for
// every GRPO round): its batch is S and its max_len must hold the longest prompt +
// max_new_tokens - 1 (throws naming both otherwise); options.kv_budget is not used. Its
// contents on entry do not matter.
GenerateResult generate(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& options, KvCache& cache);

}  // namespace primus::infer

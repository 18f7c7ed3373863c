#include "infer/generate_bench.h"

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "infer/cached_decoder.h"
#include "infer/generate.h"
#include "ops/ops.h"

namespace primus::infer {

ModelConfig generate_bench_config(const std::string& shape, int64_t vocab) {
  PRIMUS_CHECK(vocab > 0, "generate bench: --vocab must be > 0, got {}", vocab);
  ModelConfig c;
  c.vocab_size = vocab;
  c.padded_vocab_size = vocab;
  c.untie_embeddings_and_output_weights = false;
  c.rotary_base = 500000;
  c.use_rope_scaling = true;
  if (shape == "tiny") {
    c.name = "llama_tiny";
    c.num_layers = 6;
    c.hidden_size = 384;
    c.ffn_hidden_size = 1024;
    c.num_attention_heads = 6;
    c.num_query_groups = 2;
    c.max_position_embeddings = 2048;
  } else if (shape == "1b") {
    c.name = "llama3.2_1B";
    c.num_layers = 16;
    c.hidden_size = 2048;
    c.ffn_hidden_size = 8192;
    c.num_attention_heads = 32;
    c.num_query_groups = 8;
    c.max_position_embeddings = 131072;
    c.rope_scaling_factor = 32.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.original_max_position_embeddings = 8192;
  } else {
    fail("generate bench: --shape {} is not known: use tiny or 1b", shape);
  }
  return c;
}

namespace {

// Random weights of the decoder's parameter table on ctx's device.
NamedTensorList random_weights(const ModelConfig& c, ops::Context& ctx, DType dt) {
  NamedTensorList out;
  uint64_t stream = 1;
  for (const auto& [name, shape] : decoder_weight_shapes(c)) {
    Tensor t = Tensor::empty(shape, dt, ctx.device());
    if (name.find("norm") != std::string::npos) ops::fill(ctx, t, 1.f);
    else ops::fill_normal(ctx, t, 1234, stream++, 0.f, 0.02f, {{0, 0, t.numel()}});
    out.emplace_back(name, t);
  }
  ctx.synchronize();
  return out;
}

}  // namespace

void run_generate_bench(const GenerateBenchOptions& o, const std::function<void(const nlohmann::json&)>& on_result) {
  PRIMUS_CHECK(o.prompt_len >= 1 && o.new_tokens >= 1 && o.rounds >= 1 && o.warmup >= 0,
               "generate bench: prompt length {}, new tokens {}, rounds {} must be >= 1 and warm-up {} >= 0",
               o.prompt_len, o.new_tokens, o.rounds, o.warmup);
  const ModelConfig c = generate_bench_config(o.shape, o.vocab);
  ops::Context ctx = o.device == Device::CPU ? ops::Context::cpu() : ops::Context::cuda();
  const DType dt = o.device == Device::CPU ? DType::F32 : DType::BF16;
  CachedDecoder decoder(c, ctx, random_weights(c, ctx, dt));
  const int64_t weight_bytes = decoder.weight_bytes();
  const int64_t cache_bytes_per_token = decoder.cache_values_per_token() * static_cast<int64_t>(dtype_size(dt));

  for (const int64_t B : o.batches) {
    PRIMUS_CHECK(B >= 1, "generate bench: batch {} must be >= 1", B);
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
    const CounterRng rng(7, 1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < o.prompt_len; ++t)
        prompts[static_cast<size_t>(b)].push_back(
            static_cast<int32_t>(rng.bits64(static_cast<uint64_t>(b * o.prompt_len + t)) % static_cast<uint64_t>(o.vocab)));
    GenerateOptions g;
    g.max_new_tokens = o.new_tokens;
    g.sampling = o.sampling;
    g.sample_on_device = !o.host_sampling;
    g.cuda_graphs = o.cuda_graphs;
    double best_prefill = 0, best_decode = 0, best_new = 0, best_step_ms = 1e30;
    int64_t steps = 0, graph_steps = 0;
    std::string graph_failure;
    for (int r = 0; r < o.warmup + o.rounds; ++r) {
      const GenerateResult res = generate(decoder, prompts, g);
      if (r < o.warmup) continue;
      steps = res.decode_steps;
      graph_steps = res.graph_steps;
      graph_failure = res.graph_failure;
      best_prefill = std::max(best_prefill, res.prefill_tokens_per_s());
      best_decode = std::max(best_decode, res.decode_tokens_per_s());
      best_new = std::max(best_new, static_cast<double>(res.generated_tokens) /
                                        std::max(res.prefill_seconds + res.decode_seconds, 1e-12));
      best_step_ms = std::min(best_step_ms, 1e3 * res.decode_seconds / static_cast<double>(std::max<int64_t>(res.decode_steps, 1)));
    }
    // Decode step s (1-based) reads positions 0..prompt_len + s - 1 of each sequence.
    const double mean_context = static_cast<double>(o.prompt_len) + static_cast<double>(o.new_tokens) / 2.0;
    const double bytes = static_cast<double>(weight_bytes) +
                         static_cast<double>(B) * mean_context * static_cast<double>(cache_bytes_per_token);
    const double roofline_ms = bytes / (o.hbm_gbps * 1e9) * 1e3;
    const bool device_sampling = o.device != Device::CPU && !o.host_sampling;
    on_result({{"bench", "generate"},
               {"model", c.name},
               {"device", std::string(device_name(o.device))},
               {"dtype", dtype_name(dt)},
               {"threads", std::thread::hardware_concurrency()},
               {"batch", B},
               {"prompt_len", o.prompt_len},
               {"new_tokens", o.new_tokens},
               {"vocab", o.vocab},
               {"sampling", device_sampling ? "device" : "host"},
               {"cuda_graphs", device_sampling && o.cuda_graphs},
               {"temperature", o.sampling.temperature},
               {"top_k", o.sampling.top_k},
               {"top_p", o.sampling.top_p},
               {"warmup", o.warmup},
               {"rounds", o.rounds},
               {"decode_steps", steps},
               {"graph_steps", graph_steps},
               {"graph_failure", graph_failure},
               {"prefill_tokens_per_s", best_prefill},
               {"decode_tokens_per_s", best_decode},
               {"new_tokens_per_s", best_new},
               {"decode_ms_per_step", best_step_ms},
               {"weight_bytes", weight_bytes},
               {"bytes_per_step", bytes},
               {"hbm_gbps", o.hbm_gbps},
               {"roofline_ms_per_step", roofline_ms},
               {"roofline_tokens_per_s", static_cast<double>(B) / (roofline_ms * 1e-3)},
               {"roofline_fraction", roofline_ms / best_step_ms}});
  }
}

}  // namespace primus::infer

// bench_generate: generation throughput of the KV-cache decoder (src/infer, infer::generate)
// on the CPU or CUDA, random weights, random prompts of --prompt-len tokens, no early stop
// (no stop ids: every sequence makes --new-tokens tokens). One JSON line per batch size.
//
// Shapes (--shape):
//   tiny  llama_tiny (configs/models/megatron/llama_tiny.yaml): 6 layers, hidden 384, 6 heads
//         of 64 / 2 kv heads, ffn 1024, tied vocabulary (--vocab, default 128256);
//   1b    Llama-3.2-1B (configs/models/megatron/llama3.2_1B.yaml): 16 layers, hidden 2048,
//         32 heads / 8 kv heads of 64, ffn 8192, tied 128256 vocabulary, RoPE base 500000
//         with llama3 scaling (factor 32, original 8192): the shape of issue 20 and of the
//         peer shared/anchors/hf_generate_bench.py.
// Weights: N(0, 0.02), norms 1, in the compute dtype (bf16 on CUDA, fp32 on CPU), made on the
// device directly (no training model, no optimizer state).
//
// Fields:
//   prefill_tokens_per_s  prompt tokens / prefill seconds (one forward of the whole batch +
//                         the first choice)
//   decode_tokens_per_s   new tokens after the first / decode seconds
//   new_tokens_per_s      all new tokens / (prefill + decode seconds): what a user waits for
//   decode_ms_per_step    one decode step of the whole batch incl. choosing the tokens
//   bytes_per_step        what a decode step must read at least: every weight once (the tied
//                         embedding once, as the output layer) + the KV cache up to each
//                         sequence's position (mean over the steps)
//   roofline_ms_per_step  bytes_per_step / --hbm-gbps (H100 SXM: 3350 GB/s)
//   roofline_fraction     roofline_ms_per_step / decode_ms_per_step
// --warmup rounds run first and are not reported; then the best of --rounds.
//
//   build/bin/bench_generate [--shape tiny|1b] [--batch 16,64] [--prompt-len 128]
//       [--new-tokens 256] [--rounds 3] [--warmup 1] [--device cpu|cuda] [--vocab N]
//       [--temperature T --top-k K --top-p P] [--host-sampling] [--no-cuda-graphs] [--hbm-gbps 3350]
// graph_steps: decode steps replayed from a CUDA graph (graph_failure: why capture failed).
#include <cstdio>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "core/strings.h"
#include "infer/cached_decoder.h"
#include "infer/generate.h"
#include "model/model_config.h"

using namespace primus;

namespace {

ModelConfig shape_config(const std::string& shape, int64_t vocab) {
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
    fail("bench_generate: --shape {} is not known: use tiny or 1b", shape);
  }
  return c;
}

// Random weights of the decoder's parameter table on ctx's device.
NamedTensorList random_weights(const ModelConfig& c, ops::Context& ctx, DType dt) {
  NamedTensorList out;
  uint64_t stream = 1;
  for (const auto& [name, shape] : infer::decoder_weight_shapes(c)) {
    Tensor t = Tensor::empty(shape, dt, ctx.device());
    if (name.find("norm") != std::string::npos) ops::fill(ctx, t, 1.f);
    else ops::fill_normal(ctx, t, 1234, stream++, 0.f, 0.02f, {{0, 0, t.numel()}});
    out.emplace_back(name, t);
  }
  ctx.synchronize();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_generate: KV-cache generation throughput (JSON lines)"};
  std::string batches = "1,4", device_opt = "cpu", shape = "tiny";
  int64_t prompt_len = 128, new_tokens = 64, vocab = 128256, top_k = 0;
  int rounds = 3, warmup = 1;
  float temperature = 0.f, top_p = 1.f;
  double hbm_gbps = 3350;
  bool host_sampling = false, no_graphs = false;
  app.add_option("--shape", shape, "tiny | 1b");
  app.add_option("--batch", batches, "comma-separated batch sizes");
  app.add_option("--prompt-len", prompt_len, "prompt tokens per sequence");
  app.add_option("--new-tokens", new_tokens, "new tokens per sequence");
  app.add_option("--rounds", rounds, "measured repetitions per batch size (best reported)");
  app.add_option("--warmup", warmup, "unreported repetitions first");
  app.add_option("--vocab", vocab, "vocabulary rows");
  app.add_option("--device", device_opt, "cpu | cuda (bf16 weights on CUDA)");
  app.add_option("--temperature", temperature, "0 = greedy");
  app.add_option("--top-k", top_k, "0 = off");
  app.add_option("--top-p", top_p, "1 = off");
  app.add_flag("--host-sampling", host_sampling, "CUDA: copy the logits to the host and sample there (the old path)");
  app.add_flag("--no-cuda-graphs", no_graphs, "CUDA: launch every op of every decode step (no graph replay)");
  app.add_option("--hbm-gbps", hbm_gbps, "memory bandwidth for the roofline (GB/s; H100 SXM 3350)");
  CLI11_PARSE(app, argc, argv);

  try {
    const ModelConfig c = shape_config(shape, vocab);
    const Device device = device_opt == "cuda" ? Device::CUDA : Device::CPU;
    PRIMUS_CHECK(device_opt == "cuda" || device_opt == "cpu", "--device {}: use cpu or cuda", device_opt);
    ops::Context ctx = device == Device::CPU ? ops::Context::cpu() : ops::Context::cuda();
    const DType dt = device == Device::CPU ? DType::F32 : DType::BF16;
    const NamedTensorList weights = random_weights(c, ctx, dt);
    infer::CachedDecoder decoder(c, ctx, weights);
    int64_t weight_bytes = 0;
    for (const auto& [name, t] : weights) weight_bytes += static_cast<int64_t>(t.nbytes());
    const int64_t cache_bytes_per_token = decoder.cache_values_per_token() * static_cast<int64_t>(dtype_size(dt));

    for (const std::string& bs : split(batches, ',')) {
      const int64_t B = std::stoll(bs);
      std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
      const CounterRng rng(7, 1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < prompt_len; ++t)
          prompts[static_cast<size_t>(b)].push_back(static_cast<int32_t>(rng.bits64(b * prompt_len + t) % vocab));
      infer::GenerateOptions o;
      o.max_new_tokens = new_tokens;
      o.sampling.temperature = temperature;
      o.sampling.top_k = top_k;
      o.sampling.top_p = top_p;
      o.sample_on_device = !host_sampling;
      o.cuda_graphs = !no_graphs;
      double best_prefill = 0, best_decode = 0, best_new = 0, best_step_ms = 1e30;
      int64_t steps = 0, graph_steps = 0;
      std::string graph_failure;
      for (int r = 0; r < warmup + rounds; ++r) {
        const infer::GenerateResult res = infer::generate(decoder, prompts, o);
        if (r < warmup) continue;
        steps = res.decode_steps;
        graph_steps = res.graph_steps;
        graph_failure = res.graph_failure;
        best_prefill = std::max(best_prefill, res.prefill_tokens_per_s());
        best_decode = std::max(best_decode, res.decode_tokens_per_s());
        best_new = std::max(best_new, res.generated_tokens / std::max(res.prefill_seconds + res.decode_seconds, 1e-12));
        best_step_ms = std::min(best_step_ms, 1e3 * res.decode_seconds / std::max<int64_t>(res.decode_steps, 1));
      }
      // Decode step s (1-based) reads positions 0..prompt_len + s - 1 of each sequence.
      const double mean_context = static_cast<double>(prompt_len) + (static_cast<double>(new_tokens) - 1) / 2.0 + 0.5;
      const double bytes = static_cast<double>(weight_bytes) +
                           static_cast<double>(B) * mean_context * static_cast<double>(cache_bytes_per_token);
      const double roofline_ms = bytes / (hbm_gbps * 1e9) * 1e3;
      nlohmann::json j = {{"bench", "generate"},
                          {"model", c.name},
                          {"device", device_opt},
                          {"dtype", dtype_name(dt)},
                          {"threads", std::thread::hardware_concurrency()},
                          {"batch", B},
                          {"prompt_len", prompt_len},
                          {"new_tokens", new_tokens},
                          {"vocab", vocab},
                          {"sampling", host_sampling ? "host" : (device == Device::CPU ? "host" : "device")},
                          {"temperature", temperature},
                          {"top_k", top_k},
                          {"top_p", top_p},
                          {"warmup", warmup},
                          {"rounds", rounds},
                          {"decode_steps", steps},
                          {"graph_steps", graph_steps},
                          {"graph_failure", graph_failure},
                          {"prefill_tokens_per_s", best_prefill},
                          {"decode_tokens_per_s", best_decode},
                          {"new_tokens_per_s", best_new},
                          {"decode_ms_per_step", best_step_ms},
                          {"weight_bytes", weight_bytes},
                          {"bytes_per_step", bytes},
                          {"hbm_gbps", hbm_gbps},
                          {"roofline_ms_per_step", roofline_ms},
                          {"roofline_tokens_per_s", static_cast<double>(B) / (roofline_ms * 1e-3)},
                          {"roofline_fraction", roofline_ms / best_step_ms}};
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_generate: %s\n", e.what());
    return 1;
  }
  return 0;
}

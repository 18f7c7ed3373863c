// bench_generate: generation throughput of the KV-cache decoder (src/infer) on the CPU
// (or CUDA) for the llama_tiny shape (configs/models/megatron/llama_tiny.yaml: 6 layers,
// hidden 384, 6 heads of 64 / 2 kv heads, ffn 1024, tied 128256-token vocabulary, Llama 3.1
// RoPE scaling), random weights. One JSON line per batch size:
//   prefill_tokens_per_s  prompt tokens / prefill seconds (the whole batch in one forward)
//   decode_tokens_per_s   new tokens after the first / decode seconds (one forward per step)
//   decode_ms_per_step    one decode() of the whole batch, incl. the fp32 logits copy and
//                         greedy argmax over the vocabulary
// Best of --rounds (the least disturbed by other load on a shared machine).
//
//   build/bin/bench_generate [--batch 1,4] [--prompt-len 128] [--new-tokens 64] [--rounds 3]
//                            [--vocab 128256] [--device cpu|cuda]
#include <cstdio>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/strings.h"
#include "infer/generate.h"
#include "infer/cached_decoder.h"
#include "model/decoder.h"

using namespace primus;

int main(int argc, char** argv) {
  CLI::App app{"bench_generate: KV-cache generation throughput (JSON lines)"};
  std::string batches = "1,4", device_opt = "cpu";
  int64_t prompt_len = 128, new_tokens = 64, vocab = 128256;
  int rounds = 3;
  app.add_option("--batch", batches, "comma-separated batch sizes");
  app.add_option("--prompt-len", prompt_len, "prompt tokens per sequence");
  app.add_option("--new-tokens", new_tokens, "new tokens per sequence");
  app.add_option("--rounds", rounds, "repetitions per batch size (best reported)");
  app.add_option("--vocab", vocab, "vocabulary rows");
  app.add_option("--device", device_opt, "cpu | cuda (bf16 weights on CUDA)");
  CLI11_PARSE(app, argc, argv);

  ModelConfig c;
  c.name = "llama_tiny";
  c.num_layers = 6;
  c.hidden_size = 384;
  c.ffn_hidden_size = 1024;
  c.num_attention_heads = 6;
  c.num_query_groups = 2;
  c.padded_vocab_size = vocab;
  c.vocab_size = vocab;
  c.max_position_embeddings = 2048;
  c.untie_embeddings_and_output_weights = false;
  c.rotary_base = 500000;
  c.use_rope_scaling = true;
  const Device device = device_opt == "cuda" ? Device::CUDA : Device::CPU;
  ops::Context ctx = device == Device::CPU ? ops::Context::cpu() : ops::Context::cuda();
  DecoderOptions opt;
  opt.param_dtype = device == Device::CPU ? DType::F32 : DType::BF16;
  DecoderModel model(c, ctx, opt);
  infer::CachedDecoder decoder(model.config(), ctx, infer::weights_of(model));

  for (const std::string& bs : split(batches, ',')) {
    const int64_t B = std::stoll(bs);
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
    const CounterRng rng(7, 1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < prompt_len; ++t)
        prompts[static_cast<size_t>(b)].push_back(static_cast<int32_t>(rng.bits64(b * prompt_len + t) % vocab));
    infer::GenerateOptions o;
    o.max_new_tokens = new_tokens;
    double best_prefill = 0, best_decode = 0, best_step_ms = 1e30;
    for (int r = 0; r < rounds; ++r) {
      const infer::GenerateResult res = infer::generate(decoder, prompts, o);
      best_prefill = std::max(best_prefill, res.prefill_tokens_per_s());
      best_decode = std::max(best_decode, res.decode_tokens_per_s());
      best_step_ms = std::min(best_step_ms, 1e3 * res.decode_seconds / std::max<int64_t>(res.decode_steps, 1));
    }
    nlohmann::json j = {{"bench", "generate"},
                        {"model", "llama_tiny"},
                        {"device", device_opt},
                        {"dtype", dtype_name(opt.param_dtype)},
                        {"threads", std::thread::hardware_concurrency()},
                        {"batch", B},
                        {"prompt_len", prompt_len},
                        {"new_tokens", new_tokens},
                        {"vocab", vocab},
                        {"rounds", rounds},
                        {"prefill_tokens_per_s", best_prefill},
                        {"decode_tokens_per_s", best_decode},
                        {"decode_ms_per_step", best_step_ms}};
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

// bench_generate: generation throughput of the KV-cache decoder (src/infer, infer::generate)
// on the CPU or CUDA, random weights, random prompts of --prompt-len tokens, no early stop
// (no stop ids: every sequence makes --new-tokens tokens). One JSON line per batch size; the
// shapes, fields and the roofline are described in infer/generate_bench.h (also run by
// `primus bench generate`).
//
//   --shape tiny  llama_tiny (6 layers, hidden 384, 6/2 heads, ffn 1024, tied --vocab rows)
//   --shape 1b    Llama-3.2-1B (16 layers, hidden 2048, 32/8 heads, ffn 8192, tied 128256
//                 vocabulary, RoPE base 500000 with llama3 scaling): issue 20's shape and the
//                 peer shared/anchors/hf_generate_bench.py's
//
//   build/bin/bench_generate [--shape tiny|1b] [--batch 16,64] [--prompt-len 128]
//       [--new-tokens 256] [--rounds 3] [--warmup 1] [--device cpu|cuda] [--vocab N]
//       [--temperature T --top-k K --top-p P] [--host-sampling] [--no-cuda-graphs] [--hbm-gbps 3350]
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/strings.h"
#include "infer/generate_bench.h"

using namespace primus;

int main(int argc, char** argv) {
  CLI::App app{"bench_generate: KV-cache generation throughput (JSON lines)"};
  infer::GenerateBenchOptions o;
  std::string batches = "1,4", device_opt = "cpu";
  bool no_graphs = false;
  app.add_option("--shape", o.shape, "tiny | 1b");
  app.add_option("--batch", batches, "comma-separated batch sizes");
  app.add_option("--prompt-len", o.prompt_len, "prompt tokens per sequence");
  app.add_option("--new-tokens", o.new_tokens, "new tokens per sequence");
  app.add_option("--rounds", o.rounds, "measured repetitions per batch size (best reported)");
  app.add_option("--warmup", o.warmup, "unreported repetitions first");
  app.add_option("--vocab", o.vocab, "vocabulary rows");
  app.add_option("--device", device_opt, "cpu | cuda (bf16 weights on CUDA)");
  app.add_option("--temperature", o.sampling.temperature, "0 = greedy");
  app.add_option("--top-k", o.sampling.top_k, "0 = off");
  app.add_option("--top-p", o.sampling.top_p, "1 = off");
  app.add_flag("--host-sampling", o.host_sampling, "CUDA: copy the logits to the host and sample there (the old path)");
  app.add_flag("--no-cuda-graphs", no_graphs, "CUDA: launch every op of every decode step (no graph replay)");
  app.add_option("--hbm-gbps", o.hbm_gbps, "memory bandwidth for the roofline (GB/s; H100 SXM 3350)");
  CLI11_PARSE(app, argc, argv);
  try {
    PRIMUS_CHECK(device_opt == "cuda" || device_opt == "cpu", "--device {}: use cpu or cuda", device_opt);
    o.device = device_opt == "cuda" ? Device::CUDA : Device::CPU;
    o.cuda_graphs = !no_graphs;
    o.batches.clear();
    for (const std::string& b : split(batches, ',')) o.batches.push_back(std::stoll(b));
    infer::run_generate_bench(o, [](const nlohmann::json& j) {
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_generate: %s\n", e.what());
    return 1;
  }
  return 0;
}

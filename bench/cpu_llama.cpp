// bench_cpu_llama: CPU training throughput of our Llama (forward + backward + AdamW with
// clipping) for the ~10M and ~125M shapes, side by side with the same model in eager
// PyTorch CPU (bench/cpu_llama_torch.py), run from here in the same process tree, one
// after the other, with the same thread count. Prints one JSON line per model and round;
// speedup_vs_pytorch compares the best step of each side (the least disturbed by other
// load on a shared machine); means are in tokens_per_s.
//
//   build/bin/bench_cpu_llama [--models 10M,125M] [--seq 256] [--batch 4] [--steps 3]
//                             [--warmup 1] [--rounds 1] [--threads 2] [--python /usr/bin/python3|none]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <cblas.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/strings.h"
#include "model/decoder.h"
#include "ops/cpu/cpu_backend.h"
#include "optim/adamw.h"

using namespace primus;

namespace {

struct Shape_ {
  int64_t layers, hidden, heads, kv_heads, ffn, vocab;
};
const std::map<std::string, Shape_> kShapes = {
    {"10M", {6, 256, 8, 4, 768, 32000}},      // ~10M without embeddings (~26M with both tables)
    {"125M", {12, 768, 12, 4, 2048, 32000}},  // ~124M with untied embeddings
};

nlohmann::json run_primus(const Shape_& s, int64_t seq, int64_t batch, int steps, int warmup, int threads) {
  ModelConfig c;
  c.name = "bench";
  c.num_layers = s.layers;
  c.hidden_size = s.hidden;
  c.num_attention_heads = s.heads;
  c.num_query_groups = s.kv_heads;
  c.ffn_hidden_size = s.ffn;
  c.padded_vocab_size = s.vocab;
  c.max_position_embeddings = seq;
  ops::Context ctx = ops::Context::cpu();
  (void)threads;  // the pool sizes itself from hardware_concurrency; reported below
  DecoderModel model(c, ctx);
  AdamWConfig acfg;
  acfg.beta2 = 0.95f;
  AdamW opt(ctx, model.parameters(), acfg);
  Tensor tokens = Tensor::empty({batch, seq}, DType::I32), labels = Tensor::empty({batch, seq}, DType::I32);
  Tensor mask = Tensor::empty({batch, seq}, DType::F32);
  using clock = std::chrono::steady_clock;
  double fb_s = 0, opt_s = 0, loss = 0, best_s = 1e30;
  auto t_start = clock::now();
  for (int i = 0; i < warmup + steps; ++i) {
    CounterRng rng(1, static_cast<uint64_t>(i));
    for (int64_t j = 0; j < batch * seq; ++j) {
      tokens.data<int32_t>()[j] = static_cast<int32_t>(rng.bits64(j) % s.vocab);
      mask.data<float>()[j] = 1.f;
    }
    for (int64_t j = 0; j < batch * seq; ++j)
      labels.data<int32_t>()[j] = tokens.data<int32_t>()[(j % seq == seq - 1) ? j - seq + 1 : j + 1];
    if (i == warmup) t_start = clock::now(), fb_s = opt_s = 0;
    const auto t0 = clock::now();
    model.zero_grads();
    const auto r = model.forward_backward(tokens, labels, mask, 1.f / static_cast<float>(batch * seq));
    const auto t1 = clock::now();
    opt.step(1e-4, 0.1);
    const auto t2 = clock::now();
    fb_s += std::chrono::duration<double>(t1 - t0).count();
    opt_s += std::chrono::duration<double>(t2 - t1).count();
    if (i >= warmup) best_s = std::min(best_s, std::chrono::duration<double>(t2 - t0).count());
    loss = r.loss_sum / r.num_tokens;
  }
  const double step_s = std::chrono::duration<double>(clock::now() - t_start).count() / steps;
  nlohmann::json j;
  j["system"] = "primus";
  j["threads"] = std::thread::hardware_concurrency();
  j["blas_core"] = openblas_get_corename();  // OPENBLAS_CORETYPE picks it (see docs/ENGINE.md)
  j["params"] = model.num_parameters();
  j["step_ms"] = std::round(step_s * 1e4) / 10;
  j["fwd_bwd_ms"] = std::round(fb_s / steps * 1e4) / 10;
  j["optimizer_ms"] = std::round(opt_s / steps * 1e4) / 10;
  j["tokens_per_s"] = std::round(batch * seq / step_s * 10) / 10;
  j["best_step_ms"] = std::round(best_s * 1e4) / 10;
  j["best_tokens_per_s"] = std::round(batch * seq / best_s * 10) / 10;
  j["activation_mib"] = std::round(model.activation_bytes_high_water() / 1048576.0);
  j["loss"] = loss;
  return j;
}

nlohmann::json run_torch(const std::string& python, const Shape_& s, int64_t seq, int64_t batch, int steps,
                         int warmup, int threads) {
  const std::string cmd = fmt::format(
      "{} {}/bench/cpu_llama_torch.py --layers {} --hidden {} --heads {} --kv-heads {} --ffn {} --vocab {} "
      "--seq {} --batch {} --steps {} --warmup {} --threads {}",
      python, PRIMUS_SOURCE_DIR, s.layers, s.hidden, s.heads, s.kv_heads, s.ffn, s.vocab, seq, batch, steps, warmup,
      threads);
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  PRIMUS_CHECK(pipe != nullptr, "cannot run '{}'", cmd);
  std::string out;
  char buf[4096];
  while (fgets(buf, sizeof buf, pipe.get()) != nullptr) out += buf;
  try {
    return nlohmann::json::parse(out.substr(out.rfind('{')));
  } catch (const std::exception&) {
    return {{"error", "PyTorch side failed: " + cmd}, {"output", out}};
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU training throughput of the Llama, ours vs PyTorch CPU"};
  std::string models = "10M,125M", python = "/usr/bin/python3";
  int64_t seq = 256, batch = 4;
  int steps = 3, warmup = 1, rounds = 1, threads = static_cast<int>(std::thread::hardware_concurrency());
  app.add_option("--models", models, "comma-separated shapes: 10M, 125M");
  app.add_option("--seq", seq);
  app.add_option("--batch", batch);
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup);
  app.add_option("--rounds", rounds, "alternate ours / PyTorch this many times (one JSON line each)");
  app.add_option("--threads", threads, "threads for PyTorch (ours uses all cores)");
  app.add_option("--python", python, "python with torch for the PyTorch side, or 'none'");
  CLI11_PARSE(app, argc, argv);
  try {
    for (const std::string& name : split(models, ',')) {
      auto it = kShapes.find(name);
      PRIMUS_CHECK(it != kShapes.end(), "unknown model '{}' (10M, 125M)", name);
      for (int round = 0; round < rounds; ++round) {
        nlohmann::json row;
        row["bench"] = "cpu_llama_training";
        row["model"] = name;
        row["seq"] = seq;
        row["batch"] = batch;
        row["steps"] = steps;
        row["round"] = round;
        row["primus"] = run_primus(it->second, seq, batch, steps, warmup, threads);
        if (python != "none") {
          row["pytorch"] = run_torch(python, it->second, seq, batch, steps, warmup, threads);
          if (row["pytorch"].contains("best_tokens_per_s"))
            row["speedup_vs_pytorch"] = std::round(row["primus"]["best_tokens_per_s"].get<double>() /
                                                   row["pytorch"]["best_tokens_per_s"].get<double>() * 100) / 100;
        }
        std::printf("%s\n", row.dump().c_str());
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

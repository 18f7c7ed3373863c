// bench_cpu_ops: time of each CPU op at the shapes of one training step of the ~10M /
// ~125M Llama (so the model bench's time can be split by op). JSON lines out:
//   {"op": ..., "shape": ..., "ms": best of N, "gflops": (GEMM-like ops only)}
//
//   build/bin/bench_cpu_ops [--model 125M] [--seq 256] [--batch 4] [--reps 5]
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "ops/ops.h"

using namespace primus;

namespace {

Tensor randn(Shape s, float std = 1.f) {
  Tensor t = Tensor::empty(std::move(s), DType::F32);
  CounterRng(3, t.numel()).fill_normal(t, 0.f, std);
  return t;
}

void report(const std::string& op, const std::string& shape, int reps, double flops, const std::function<void()>& fn) {
  fn();  // warm up (first-touch, BLAS buffers)
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  nlohmann::json j{{"op", op}, {"shape", shape}, {"ms", std::round(best * 1e5) / 100}};
  if (flops > 0) j["gflops"] = std::round(flops / best / 1e8) / 10;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"per-op CPU timings at Llama training shapes"};
  std::string model = "125M";
  int64_t seq = 256, batch = 4;
  int reps = 5;
  app.add_option("--model", model, "10M or 125M");
  app.add_option("--seq", seq);
  app.add_option("--batch", batch);
  app.add_option("--reps", reps);
  CLI11_PARSE(app, argc, argv);
  const std::map<std::string, std::array<int64_t, 5>> shapes = {{"10M", {256, 8, 4, 768, 32000}},
                                                                {"125M", {768, 12, 4, 2048, 32000}}};
  const auto [C, Hq, Hkv, F, V] = shapes.at(model);
  const int64_t D = C / Hq, N = batch * seq, B = batch, T = seq;
  auto ctx = ops::Context::cpu();

  const std::vector<std::tuple<std::string, int64_t, int64_t>> linears = {
      {"qkv", (Hq + 2 * Hkv) * D, C}, {"proj", C, Hq * D}, {"fc1", 2 * F, C}, {"fc2", C, F}, {"output", V, C}};
  for (const auto& [name, out, in] : linears) {
    Tensor x = randn({N, in}), w = randn({out, in}, 0.02f), y = Tensor::empty({N, out}, DType::F32);
    Tensor dy = randn({N, out}), dx = Tensor::empty({N, in}, DType::F32), dw = Tensor::zeros({out, in}, DType::F32);
    const std::string s = fmt::format("N={} in={} out={}", N, in, out);
    const double fl = 2.0 * N * in * out;
    report("linear_forward." + name, s, reps, fl, [&] { ops::linear_forward(ctx, y, x, w); });
    report("linear_backward." + name, s, reps, 2 * fl, [&] { ops::linear_backward(ctx, &dx, dw, dy, x, w); });
  }
  {
    Tensor q = randn({B, T, Hq, D}), k = randn({B, T, Hkv, D}), v = randn({B, T, Hkv, D});
    Tensor o = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({B, Hq, T}, DType::F32);
    Tensor dO = randn(q.shape()), dq = Tensor::empty(q.shape(), DType::F32);
    Tensor dk = Tensor::empty(k.shape(), DType::F32), dv = Tensor::empty(v.shape(), DType::F32);
    const std::string s = fmt::format("B={} T={} Hq={} Hkv={} D={}", B, T, Hq, Hkv, D);
    const double fl = 2.0 * B * Hq * T * T * D;  // causal: half of the two full T x T x D products
    const float sc = 1.f / std::sqrt(static_cast<float>(D));
    report("attention_forward", s, reps, fl, [&] { ops::attention_forward(ctx, o, lse, q, k, v, sc, true); });
    report("attention_backward", s, reps, 2.5 * fl,
           [&] { ops::attention_backward(ctx, dq, dk, dv, dO, q, k, v, o, lse, sc, true); });
  }
  {
    Tensor logits = randn({N, V}), grad = Tensor::empty({N, V}, DType::F32), losses = Tensor::empty({N}, DType::F32);
    Tensor targets = Tensor::empty({N}, DType::I32), dloss = Tensor::empty({N}, DType::F32);
    for (int64_t i = 0; i < N; ++i) targets.data<int32_t>()[i] = static_cast<int32_t>(i * 7 % V), dloss.data<float>()[i] = 1.f / N;
    report("cross_entropy_fused", fmt::format("N={} V={}", N, V), reps, 0, [&] {
      grad.copy_from(logits);
      ops::cross_entropy_fused(ctx, losses, grad, targets, dloss);
    });
  }
  {
    Tensor gu = randn({N, 2 * F}), out = Tensor::empty({N, F}, DType::F32), dgu = Tensor::empty({N, 2 * F}, DType::F32);
    report("swiglu_forward", fmt::format("N={} F={}", N, F), reps, 0, [&] { ops::swiglu_forward(ctx, out, gu); });
    report("swiglu_backward", fmt::format("N={} F={}", N, F), reps, 0, [&] { ops::swiglu_backward(ctx, dgu, out, gu); });
  }
  {
    Tensor x = randn({N, C}), w = randn({C}), y = Tensor::empty({N, C}, DType::F32), r = Tensor::empty({N}, DType::F32);
    Tensor dx = Tensor::zeros({N, C}, DType::F32), dw = Tensor::zeros({C}, DType::F32);
    report("rmsnorm_forward", fmt::format("N={} C={}", N, C), reps, 0, [&] { ops::rmsnorm_forward(ctx, y, r, x, w, 1e-5f); });
    report("rmsnorm_backward", fmt::format("N={} C={}", N, C), reps, 0,
           [&] { ops::rmsnorm_backward(ctx, dx, dw, y, x, w, r); });
  }
  {
    const int64_t n = 10'000'000;
    std::vector<ops::AdamWTensor> p(1);
    p[0] = {.master = randn({n}), .grad = randn({n}), .exp_avg = Tensor::zeros({n}, DType::F32),
            .exp_avg_sq = Tensor::zeros({n}, DType::F32), .weight_decay_mult = 1.f};
    ops::AdamWParams ap;
    ap.lr = 1e-4f;
    report("adamw_step", "10M params", reps, 0, [&] { ops::adamw_step(ctx, p, ap); });
    report("sum_of_squares", "10M params", reps, 0, [&] { (void)ops::sum_of_squares(ctx, {p[0].grad}); });
  }
  return 0;
}

#include "safe/gpu_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "core/tensor.h"

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/timing.h"
#endif

namespace primus::safe {

double attention_forward_flops(const AttentionShape& s) {
  const double full = 4.0 * s.batch * s.heads * static_cast<double>(s.seq) * s.seq * s.head_dim;
  return s.causal ? full / 2 : full;
}

#ifndef PRIMUS_WITH_CUDA

bool gpu_ready(const char* command) {
  std::fprintf(stderr, "primus %s: this primus was built without CUDA; rebuild on a machine with nvcc "
               "(cmake -DPRIMUS_CUDA=ON) to run GPU benchmarks.\n", command);
  return false;
}
int run_gemm_bench(const GemmBenchOptions&) { return gpu_ready("bench gemm") ? 0 : kNoGpuExitCode; }
int run_attention_bench(const AttentionBenchOptions&) { return gpu_ready("bench attention") ? 0 : kNoGpuExitCode; }
int run_ops_bench(const OpsBenchOptions&) { return gpu_ready("bench ops") ? 0 : kNoGpuExitCode; }

#else

bool gpu_ready(const char* command) {
  if (!cuda_available()) {
    std::fprintf(stderr, "primus %s: no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES).\n", command);
    return false;
  }
  return true;
}

namespace {

void emit(const std::vector<nlohmann::json>& rows, const std::vector<std::string>& cols, TableFormat format,
          const std::string& file) {
  print_table(stdout, rows, cols, format);
  if (!file.empty()) {
    std::ofstream out(file);
    PRIMUS_CHECK(out.good(), "cannot write benchmark output '{}'", file);
    out << table_to_string(rows, cols, format);
  }
}



Tensor random_tensor(cuda::CudaBackend& be, Shape s, DType dt, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Tensor t = Tensor::empty(std::move(s), dt, Device::CUDA);
  cuda::launch_fill_uniform(t.raw(), dt, t.numel(), seed, lo, hi, be.stream());
  return t;
}

double peak_tflops() {
  const auto devs = cuda::list_devices();
  return devs.empty() ? 0.0 : devs[0].peak_bf16_tflops;
}

}  // namespace

cuda::GemmKey gemm_key_of(const GemmProblem& p) {
  cuda::GemmKey k;
  k.m = p.m;
  k.n = p.n;
  k.k = p.k;
  k.ta = p.ta;
  k.tb = p.tb;
  k.in_dtype = p.in;
  k.out_dtype = p.out;
  k.accumulate = p.accumulate;
  k.align = 256;
  return k;
}

int run_gemm_bench(const GemmBenchOptions& o) {
  if (!gpu_ready("bench gemm")) return kNoGpuExitCode;
  cuda::CudaBackend be(0);
  const double peak = peak_tflops();
  std::vector<nlohmann::json> rows;
  double step_us = 0, step_best_us = 0;
  for (const GemmProblem& p : o.problems) {
    const cuda::GemmKey key = gemm_key_of(p);
    const double us = be.gemm().time_current(key, o.warmup, o.iters);
    nlohmann::json r{{"gemm", p.label}, {"m", p.m}, {"n", p.n}, {"k", p.k}, {"ta", p.ta ? 1 : 0},
                     {"tb", p.tb ? 1 : 0}, {"in", std::string(dtype_name(p.in))},
                     {"out", std::string(dtype_name(p.out))}, {"acc", p.accumulate ? 1 : 0}, {"count", p.count},
                     {"us", us}, {"tflops", p.flops() / (us * 1e6)}};
    if (peak > 0) r["pct_peak"] = 100.0 * p.flops() / (us * 1e6) / peak;
    step_us += us * p.count;
    if (o.compare_best) {
      const cuda::GemmTuneResult t = be.gemm().tune(key, o.candidates, o.warmup, o.iters);
      if (t.best >= 0) {
        r["best_us"] = t.best_us();
        r["best_tflops"] = p.flops() / (t.best_us() * 1e6);
        r["best_index"] = t.best;
        r["candidates"] = static_cast<int>(t.candidates.size());
        r["vs_best_pct"] = 100.0 * t.best_us() / us;
        step_best_us += std::min(us, t.best_us()) * p.count;
      }
    }
    rows.push_back(r);
  }
  std::vector<std::string> cols = {"gemm", "m", "n", "k", "ta", "tb", "in", "out", "count", "us", "tflops"};
  if (peak > 0) cols.push_back("pct_peak");
  if (o.compare_best) {
    for (const char* c : {"best_us", "best_tflops", "best_index", "candidates", "vs_best_pct"}) cols.push_back(c);
  }
  emit(rows, cols, o.format, o.output_file);
  if (o.problems.size() > 1) {
    std::printf("\nGEMM time per training step (sum of count * us): %.1f ms", step_us / 1e3);
    if (o.compare_best && step_best_us > 0)
      std::printf("; with the best algorithm per shape: %.1f ms (%.1f%%)", step_best_us / 1e3,
                  100.0 * step_best_us / step_us);
    std::printf("\n");
  }
  return 0;
}

int run_attention_bench(const AttentionBenchOptions& o) {
  if (!gpu_ready("bench attention")) return kNoGpuExitCode;
  cuda::CudaBackend be(0);
  std::vector<nlohmann::json> rows;
  for (const AttentionShape& s : o.shapes) {
    const std::vector<cuda::FlashConfig> configs =
        o.all_configs ? cuda::flash_configs(s.head_dim) : std::vector<cuda::FlashConfig>{cuda::FlashConfig{}};
    const Shape sq{s.batch, s.seq, s.heads, s.head_dim}, sk{s.batch, s.seq, s.kv_heads, s.head_dim},
        sl{s.batch, s.heads, s.seq};
    Tensor q = random_tensor(be, sq, DType::BF16, 1), k = random_tensor(be, sk, DType::BF16, 2),
           v = random_tensor(be, sk, DType::BF16, 3), dout = random_tensor(be, sq, DType::BF16, 4);
    Tensor out = Tensor::empty(sq, DType::BF16, Device::CUDA), lse = Tensor::empty(sl, DType::F32, Device::CUDA);
    Tensor dq = Tensor::empty(sq, DType::BF16, Device::CUDA), dk = Tensor::empty(sk, DType::BF16, Device::CUDA),
           dv = Tensor::empty(sk, DType::BF16, Device::CUDA);
    const float scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
    const double f_fwd = attention_forward_flops(s), f_bwd = 2.5 * f_fwd;
    auto time_kernel = [&](const std::string& kernel) {
      const auto fwd = cuda::time_on_stream(be.stream(), o.warmup, o.iters, [&](int) {
        be.attention_forward(out, lse, q, k, v, scale, s.causal);
      });
      const auto bwd = cuda::time_on_stream(be.stream(), o.warmup, o.iters, [&](int) {
        be.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale, s.causal);
      });
      rows.push_back({{"shape", s.label},
                      {"B", s.batch},
                      {"T", s.seq},
                      {"H", s.heads},
                      {"KV", s.kv_heads},
                      {"D", s.head_dim},
                      {"causal", s.causal},
                      {"kernel", kernel},
                      {"fwd_us", fwd.median_us},
                      {"fwd_tflops", f_fwd / (fwd.median_us * 1e6)},
                      {"bwd_us", bwd.median_us},
                      {"bwd_tflops", f_bwd / (bwd.median_us * 1e6)},
                      {"fwd_bwd_us", fwd.median_us + bwd.median_us},
                      {"fwd_bwd_tflops", (f_fwd + f_bwd) / ((fwd.median_us + bwd.median_us) * 1e6)}});
    };
    be.set_attention_kernel(cuda::AttentionKernel::Flash);  // our kernels, not the default (cuDNN)
    for (const cuda::FlashConfig& cfg : configs) {
      be.set_flash_config(cfg);
      time_kernel(fmt::format("flash fw{} fr{} bw{} br{} bk{}", cfg.fwd_warps, cfg.fwd_rows, cfg.bwd_warps,
                              cfg.bwd_rows, cfg.bwd_keys));
    }
    be.set_flash_config(cuda::FlashConfig{});
    // cuDNN's fused SDPA (the backend's default where it builds), strict: a refusal is reported, not hidden.
    be.set_attention_kernel(cuda::AttentionKernel::Cudnn);
    try {
      time_kernel("cudnn");
      const cuda::CudnnAttentionShape cs{s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, s.head_dim, DType::BF16,
                                         s.causal};
      std::fprintf(stderr, "bench attention %s: cudnn forward %s; backward %s\n", s.label.c_str(),
                   be.cudnn_attention().describe(cuda::CudnnPass::Forward, cs).c_str(),
                   be.cudnn_attention().describe(cuda::CudnnPass::Backward, cs).c_str());
    } catch (const Error& e) {
      std::fprintf(stderr, "bench attention %s: cuDNN SDPA failed: %s\n", s.label.c_str(), e.what());
    }
    be.set_attention_kernel(cuda::AttentionKernel::Auto);
  }
  emit(rows,
       {"shape", "B", "T", "H", "KV", "D", "causal", "kernel", "fwd_us", "fwd_tflops", "bwd_us", "bwd_tflops",
        "fwd_bwd_us", "fwd_bwd_tflops"},
       o.format, o.output_file);
  return 0;
}

int run_ops_bench(const OpsBenchOptions& o) {
  if (!gpu_ready("bench ops")) return kNoGpuExitCode;
  cuda::CudaBackend be(0);
  cudaStream_t st = be.stream();
  const DenseShape& s = o.shape;
  const int64_t N = o.tokens, C = s.hidden, F = s.ffn, V = s.vocab, T = o.seq, B = std::max<int64_t>(1, N / T);
  const int64_t Hq = s.heads, Hkv = s.kv_heads, D = s.head_dim, W = (Hq + 2 * Hkv) * D;
  std::vector<nlohmann::json> rows;

  // HBM roofline for memory-bound ops: a large device-to-device copy (bytes read + written).
  double hbm_gbps = 0;
  {
    const size_t bytes = size_t{1} << 30;
    Tensor a = random_tensor(be, {static_cast<int64_t>(bytes / 2)}, DType::BF16, 9);
    Tensor b = Tensor::empty({static_cast<int64_t>(bytes / 2)}, DType::BF16, Device::CUDA);
    const auto t = cuda::time_on_stream(st, 2, 10, [&](int) {
      PRIMUS_CUDA_CHECK(cudaMemcpyAsync(b.raw(), a.raw(), bytes, cudaMemcpyDeviceToDevice, st));
    });
    hbm_gbps = 2.0 * bytes / (t.median_us * 1e3);
    rows.push_back({{"op", "hbm_copy (d2d memcpy)"}, {"shape", "1 GiB"}, {"us", t.median_us},
                    {"bytes", static_cast<double>(2 * bytes)}, {"gbps", hbm_gbps}, {"floor_us", t.median_us},
                    {"pct_of_floor", 100.0}});
  }
  auto bench = [&](const std::string& op, const std::string& shape, double bytes, const std::function<void()>& body) {
    const auto t = cuda::time_on_stream(st, o.warmup, o.iters, [&](int) { body(); });
    const double floor_us = bytes / (hbm_gbps * 1e3);
    rows.push_back({{"op", op}, {"shape", shape}, {"us", t.median_us}, {"bytes", bytes},
                    {"gbps", bytes / (t.median_us * 1e3)}, {"floor_us", floor_us},
                    {"pct_of_floor", 100.0 * floor_us / t.median_us}});
  };
  const std::string nc = fmt::format("N={} C={}", N, C);
  {
    Tensor x = random_tensor(be, {N, C}, DType::BF16, 11), w = random_tensor(be, {C}, DType::BF16, 12, 0.5f, 1.5f);
    Tensor y = Tensor::empty({N, C}, DType::BF16, Device::CUDA), rstd = Tensor::empty({N}, DType::F32, Device::CUDA);
    Tensor dy = random_tensor(be, {N, C}, DType::BF16, 13), dx = random_tensor(be, {N, C}, DType::BF16, 14);
    Tensor dw = Tensor::zeros({C}, DType::F32, Device::CUDA);
    bench("rmsnorm_forward", nc, 2.0 * N * C * 2 + N * 4, [&] { be.rmsnorm_forward(y, rstd, x, w, 1e-5f); });
    bench("rmsnorm_backward", nc, 4.0 * N * C * 2 + N * 4, [&] { be.rmsnorm_backward(dx, dw, dy, x, w, rstd); });
    Tensor x32 = random_tensor(be, {N, C}, DType::F32, 15);
    bench("copy_cast fp32->bf16", nc, 6.0 * N * C, [&] { be.copy_cast(y, x32); });
    bench("add bf16", nc, 6.0 * N * C, [&] { be.add(y, x, dy); });
  }
  {
    std::vector<float> cs(static_cast<size_t>(T * D / 2)), sn(cs.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double f = t * std::pow(500000.0, -2.0 * i / D);
        cs[static_cast<size_t>(t * D / 2 + i)] = static_cast<float>(std::cos(f));
        sn[static_cast<size_t>(t * D / 2 + i)] = static_cast<float>(std::sin(f));
      }
    Tensor cosT = Tensor::from_floats(cs, {T, D / 2}, DType::F32, Device::CUDA);
    Tensor sinT = Tensor::from_floats(sn, {T, D / 2}, DType::F32, Device::CUDA);
    Tensor qkv = random_tensor(be, {B * T, W}, DType::BF16, 21);
    Tensor q = Tensor::empty({B, T, Hq, D}, DType::BF16, Device::CUDA), k = Tensor::empty({B, T, Hkv, D}, DType::BF16, Device::CUDA),
           v = Tensor::empty({B, T, Hkv, D}, DType::BF16, Device::CUDA);
    const std::string sh = fmt::format("B={} T={} Hq={} Hkv={} D={}", B, T, Hq, Hkv, D);
    bench("qkv_split_rope_forward", sh, 2.0 * B * T * W * 2, [&] { be.qkv_split_rope_forward(q, k, v, qkv, cosT, sinT); });
    bench("qkv_split_rope_backward", sh, 2.0 * B * T * W * 2, [&] { be.qkv_split_rope_backward(qkv, q, k, v, cosT, sinT); });
  }
  {
    Tensor gu = random_tensor(be, {N, 2 * F}, DType::BF16, 31, -4.f, 4.f), out = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    Tensor dout = random_tensor(be, {N, F}, DType::BF16, 32), dgu = Tensor::empty({N, 2 * F}, DType::BF16, Device::CUDA);
    const std::string sh = fmt::format("N={} F={}", N, F);
    bench("swiglu_forward", sh, 3.0 * N * F * 2, [&] { be.swiglu_forward(out, gu); });
    bench("swiglu_backward", sh, 5.0 * N * F * 2, [&] { be.swiglu_backward(dgu, dout, gu); });
  }
  {
    Tensor table = random_tensor(be, {V, C}, DType::BF16, 41), out = Tensor::empty({N, C}, DType::BF16, Device::CUDA);
    Tensor dtable = Tensor::zeros({V, C}, DType::F32, Device::CUDA), dout = random_tensor(be, {N, C}, DType::BF16, 42);
    std::vector<int32_t> idv(static_cast<size_t>(N));
    uint64_t z = 12345;
    for (auto& id : idv) {
      z = z * 6364136223846793005ull + 1442695040888963407ull;
      id = static_cast<int32_t>((z >> 33) % static_cast<uint64_t>(V));
    }
    Tensor ids = Tensor::empty({N}, DType::I32);
    std::copy(idv.begin(), idv.end(), ids.data<int32_t>());
    ids = ids.to(Device::CUDA);
    bench("embedding_forward", fmt::format("N={} V={} C={}", N, V, C), 2.0 * N * C * 2 + N * 4,
          [&] { be.embedding_forward(out, ids, table); });
    bench("embedding_backward", fmt::format("N={} V={} C={}", N, V, C), N * C * 2.0 + 2.0 * N * C * 4,
          [&] { be.embedding_backward(dtable, dout, ids); });
  }
  {
    Tensor logits = random_tensor(be, {N, V}, DType::BF16, 51, -4.f, 4.f);
    Tensor losses = Tensor::empty({N}, DType::F32, Device::CUDA);
    std::vector<int32_t> tv(static_cast<size_t>(N));
    for (size_t i = 0; i < tv.size(); ++i) tv[i] = static_cast<int32_t>((i * 7919) % static_cast<size_t>(V));
    Tensor targets = Tensor::empty({N}, DType::I32);
    std::copy(tv.begin(), tv.end(), targets.data<int32_t>());
    targets = targets.to(Device::CUDA);
    Tensor dloss = Tensor::from_floats(std::vector<float>(static_cast<size_t>(N), 1.f / N), {N}, DType::F32, Device::CUDA);
    const std::string sh = fmt::format("N={} V={}", N, V);
    bench("cross_entropy_forward", sh, 1.0 * N * V * 2, [&] { be.cross_entropy_forward(losses, logits, targets); });
    bench("cross_entropy_fused (fwd+bwd)", sh, 2.0 * N * V * 2, [&] { be.cross_entropy_fused(losses, logits, targets, dloss); });
  }
  {
    // AdamW and the grad norm over a few layers' worth of parameters (per-parameter rate).
    std::vector<int64_t> sizes;
    const int64_t layers = std::min<int64_t>(s.layers, 4);
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t n : {W * C, C * Hq * D, 2 * F * C, C * F, C, C}) sizes.push_back(n);
    }
    std::vector<ops::AdamWTensor> params;
    std::vector<Tensor> grads;
    int64_t total = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      ops::AdamWTensor p;
      p.master = random_tensor(be, {sizes[i]}, DType::F32, 100 + i);
      p.grad = random_tensor(be, {sizes[i]}, DType::F32, 200 + i, -1e-3f, 1e-3f);
      p.exp_avg = Tensor::zeros({sizes[i]}, DType::F32, Device::CUDA);
      p.exp_avg_sq = Tensor::zeros({sizes[i]}, DType::F32, Device::CUDA);
      p.model = Tensor::empty({sizes[i]}, DType::BF16, Device::CUDA);
      grads.push_back(p.grad);
      params.push_back(p);
      total += sizes[i];
    }
    ops::AdamWParams hp;
    hp.lr = 1e-4f;
    hp.weight_decay = 0.1f;
    const std::string sh = fmt::format("{} tensors, {:.0f}M params", sizes.size(), total / 1e6);
    bench("adamw_step (multi-tensor)", sh, 30.0 * total, [&] {
      be.adamw_step(params, hp);
      ++hp.step;
    });
    bench("sum_of_squares (grad norm, fp32)", sh, 4.0 * total, [&] { (void)be.sum_of_squares(grads); });
  }
  emit(rows, {"op", "shape", "us", "gbps", "floor_us", "pct_of_floor"}, o.format, o.output_file);
  return 0;
}

#endif  // PRIMUS_WITH_CUDA

}  // namespace primus::safe

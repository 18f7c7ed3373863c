#include "safe/gpu_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>

#include "core/error.h"
#include "core/tensor.h"

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/moe.h"
#include "ops/cuda/timing.h"
#endif

namespace primus::safe {

double attention_forward_flops(const AttentionShape& s) {
  double pairs = static_cast<double>(s.seq) * s.seq;
  if (s.doc_len > 0 && s.doc_len < s.seq) {
    const int64_t whole = s.seq / s.doc_len, rest = s.seq % s.doc_len;
    pairs = static_cast<double>(whole) * s.doc_len * s.doc_len + static_cast<double>(rest) * rest;
  }
  const double full = 2.0 * s.batch * s.heads * pairs * static_cast<double>(s.head_dim + s.dv());
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
int run_moe_bench(const MoeBenchOptions&) { return gpu_ready("bench moe") ? 0 : kNoGpuExitCode; }

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



double peak_tflops() {
  const auto devs = cuda::list_devices();
  return devs.empty() ? 0.0 : devs[0].peak_bf16_tflops;
}

}  // namespace

Tensor random_tensor(cuda::CudaBackend& be, Shape s, DType dt, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty(std::move(s), dt, Device::CUDA);
  cuda::launch_fill_uniform(t.raw(), dt, t.numel(), seed, lo, hi, be.stream());
  return t;
}

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
        sv{s.batch, s.seq, s.kv_heads, s.dv()}, so{s.batch, s.seq, s.heads, s.dv()}, sl{s.batch, s.heads, s.seq};
    Tensor q = random_tensor(be, sq, DType::BF16, 1), k = random_tensor(be, sk, DType::BF16, 2),
           v = random_tensor(be, sv, DType::BF16, 3), dout = random_tensor(be, so, DType::BF16, 4);
    Tensor out = Tensor::empty(so, DType::BF16, Device::CUDA), lse = Tensor::empty(sl, DType::F32, Device::CUDA);
    Tensor dq = Tensor::empty(sq, DType::BF16, Device::CUDA), dk = Tensor::empty(sk, DType::BF16, Device::CUDA),
           dv = Tensor::empty(sv, DType::BF16, Device::CUDA);
    const float scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
    const double f_fwd = attention_forward_flops(s), f_bwd = 2.5 * f_fwd;
    // Packed rows: document ids t / doc_len (segments, (B,T) int32).
    Tensor segments;
    if (s.doc_len > 0) {
      Tensor host = Tensor::empty({s.batch, s.seq}, DType::I32);
      for (int64_t i = 0; i < s.batch * s.seq; ++i) host.data<int32_t>()[i] = static_cast<int32_t>((i % s.seq) / s.doc_len);
      segments = host.to(Device::CUDA);
    }
    const Tensor* seg = s.doc_len > 0 ? &segments : nullptr;
    auto time_kernel = [&](const std::string& kernel) {
      const auto fwd = cuda::time_on_stream(be.stream(), o.warmup, o.iters, [&](int) {
        be.attention_forward(out, lse, q, k, v, scale, s.causal, seg);
      });
      const auto bwd = cuda::time_on_stream(be.stream(), o.warmup, o.iters, [&](int) {
        be.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale, s.causal, seg);
      });
      rows.push_back({{"shape", s.label},
                      {"B", s.batch},
                      {"T", s.seq},
                      {"H", s.heads},
                      {"KV", s.kv_heads},
                      {"D", s.head_dim},
                      {"Dv", s.dv()},
                      {"causal", s.causal},
                      {"doc_len", s.doc_len},
                      {"kernel", kernel},
                      {"fwd_us", fwd.median_us},
                      {"fwd_tflops", f_fwd / (fwd.median_us * 1e6)},
                      {"bwd_us", bwd.median_us},
                      {"bwd_tflops", f_bwd / (bwd.median_us * 1e6)},
                      {"fwd_bwd_us", fwd.median_us + bwd.median_us},
                      {"fwd_bwd_tflops", (f_fwd + f_bwd) / ((fwd.median_us + bwd.median_us) * 1e6)}});
    };
    // --attention-backend: all (every kernel below), or the one kernel training's attention_backend names.
    const std::string& backend = o.backend;
    const bool all = backend == "all";
    if (all || backend == "flash") {
      be.set_attention_kernel(cuda::AttentionKernel::Flash);  // our kernels, not the default (cuDNN)
      for (const cuda::FlashConfig& cfg : configs) {
        be.set_flash_config(cfg);
        try {  // a head-dim pair the flash kernels lack (e.g. MLA's 192/128) is an error in this mode
          time_kernel(fmt::format("flash fw{} fr{} bw{} br{} bk{}", cfg.fwd_warps, cfg.fwd_rows, cfg.bwd_warps,
                                  cfg.bwd_rows, cfg.bwd_keys));
        } catch (const Error& e) {
          std::fprintf(stderr, "bench attention %s: flash kernels failed: %s\n", s.label.c_str(), e.what());
        }
      }
      be.set_flash_config(cuda::FlashConfig{});
    }
    if (backend == "auto") {  // what Turbo attention trains with: cuDNN, else flash, else the plain kernel
      be.set_attention_kernel(cuda::AttentionKernel::Auto);
      try {
        time_kernel("auto");
      } catch (const Error& e) {
        std::fprintf(stderr, "bench attention %s: auto attention failed: %s\n", s.label.c_str(), e.what());
      }
    }
    // cuDNN's fused SDPA, strict: a refusal is reported, not hidden. `all` leaves it out for packed rows
    // (cuDNN is not given document masks: cuda_backend.h); `fused` reports that refusal.
    if ((all && !seg) || backend == "fused") {
      be.set_attention_kernel(cuda::AttentionKernel::Cudnn);
      try {
        time_kernel("cudnn");
        const cuda::CudnnAttentionShape cs{s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, s.dv(), DType::BF16,
                                           s.causal};
        std::fprintf(stderr, "bench attention %s: cudnn forward %s; backward %s\n", s.label.c_str(),
                     be.cudnn_attention().describe(cuda::CudnnPass::Forward, cs).c_str(),
                     be.cudnn_attention().describe(cuda::CudnnPass::Backward, cs).c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "bench attention %s: cuDNN SDPA failed: %s\n", s.label.c_str(), e.what());
      }
    }
    // The plain kernel: asked for, or (all) where neither flash nor cuDNN takes the head-dim pair, so
    // training runs it.
    if ((all && !seg && s.dv() != s.head_dim) || backend == "unfused" || backend == "local") {
      be.set_attention_kernel(cuda::AttentionKernel::Simple);
      try {
        time_kernel("simple");
      } catch (const Error& e) {
        std::fprintf(stderr, "bench attention %s: the plain kernel failed: %s\n", s.label.c_str(), e.what());
      }
    }
    be.set_attention_kernel(cuda::AttentionKernel::Auto);
  }
  emit(rows,
       {"shape", "B", "T", "H", "KV", "D", "Dv", "causal", "doc_len", "kernel", "fwd_us", "fwd_tflops", "bwd_us", "bwd_tflops",
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

int run_moe_bench(const MoeBenchOptions& o) {
  if (!gpu_ready("bench moe")) return kNoGpuExitCode;
  const ModelConfig& m = o.model;
  PRIMUS_CHECK(m.num_experts > 0 && m.moe_router_topk >= 1,
               "bench moe: model '{}' has no experts (num_experts {}); pick an MoE shape such as mixtral-mini",
               m.name, m.num_experts);
  cuda::CudaBackend be(0);
  cudaStream_t st = be.stream();
  const int64_t N = o.tokens, E = m.num_experts, k = m.moe_router_topk, C = m.hidden_size, F = m.moe_ffn_hidden_size;
  const double peak = peak_tflops();

  // A random router's routing: k distinct experts per token, uniform (seeded).
  std::vector<int32_t> ids(static_cast<size_t>(N * k));
  std::vector<int64_t> rows(static_cast<size_t>(E), 0);
  uint64_t state = o.seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < k; ++j) {
      int32_t e;
      bool fresh;
      do {
        e = static_cast<int32_t>(next() % static_cast<uint64_t>(E));
        fresh = true;
        for (int64_t i = 0; i < j; ++i) fresh = fresh && ids[static_cast<size_t>(t * k + i)] != e;
      } while (!fresh);
      ids[static_cast<size_t>(t * k + j)] = e;
      ++rows[static_cast<size_t>(e)];
    }
  const int64_t M = N * k;
  const int64_t busiest = *std::max_element(rows.begin(), rows.end());

  Tensor x = random_tensor(be, {M, C}, DType::BF16, 1), w1 = random_tensor(be, {E, 2 * F, C}, DType::BF16, 2, -0.02f, 0.02f);
  Tensor w2 = random_tensor(be, {E, C, F}, DType::BF16, 3, -0.02f, 0.02f);
  Tensor g = Tensor::empty({M, 2 * F}, DType::BF16, Device::CUDA), act = random_tensor(be, {M, F}, DType::BF16, 4);
  Tensor y = Tensor::empty({M, C}, DType::BF16, Device::CUDA), dy = random_tensor(be, {M, C}, DType::BF16, 5);
  Tensor dg = random_tensor(be, {M, 2 * F}, DType::BF16, 6);
  Tensor dact = Tensor::empty({M, F}, DType::BF16, Device::CUDA), dx = Tensor::empty({M, C}, DType::BF16, Device::CUDA);
  Tensor dw1 = Tensor::zeros({E, 2 * F, C}, DType::F32, Device::CUDA), dw2 = Tensor::zeros({E, C, F}, DType::F32, Device::CUDA);
  // The same FLOPs as one dense layer of M rows (what the grouped GEMMs are measured against).
  Tensor dw1_dense = Tensor::zeros({1, 2 * F, C}, DType::F32, Device::CUDA);
  Tensor dw2_dense = Tensor::zeros({1, C, F}, DType::F32, Device::CUDA);
  const std::vector<int64_t> one_group = {M};
  // The dense baseline multiplies by expert 0's weights alone (one group of all M rows): the
  // backend's grouped GEMMs read one row count per expert of `w`, so w must be that one expert.
  const Tensor w1_dense = w1.rows(0, 1), w2_dense = w2.rows(0, 1);

  struct Gemm {
    const char* name;
    double flops;
    std::function<void(const std::vector<int64_t>&, bool dense)> run;
  };
  const double fc1 = 2.0 * M * 2 * F * C, fc2 = 2.0 * M * C * F;
  const std::vector<Gemm> gemms = {
      {"fc1 forward", fc1,
       [&](const std::vector<int64_t>& r, bool dense) { be.grouped_linear_forward(g, x, dense ? w1_dense : w1, r); }},
      {"fc2 forward", fc2,
       [&](const std::vector<int64_t>& r, bool dense) { be.grouped_linear_forward(y, act, dense ? w2_dense : w2, r); }},
      {"fc2 backward (dgrad + wgrad)", 2 * fc2,
       [&](const std::vector<int64_t>& r, bool dense) {
         be.grouped_linear_backward(dact, dense ? dw2_dense : dw2, dy, act, dense ? w2_dense : w2, r, false);
       }},
      {"fc1 backward (dgrad + wgrad)", 2 * fc1,
       [&](const std::vector<int64_t>& r, bool dense) {
         be.grouped_linear_backward(dx, dense ? dw1_dense : dw1, dg, x, dense ? w1_dense : w1, r, false);
       }},
  };
  std::vector<nlohmann::json> out;
  double dense_total = 0;
  std::map<std::string, double> impl_total;
  for (const Gemm& gm : gemms) {
    // Dense: expert 0's weights over all M rows, one GEMM.
    const auto td = cuda::time_on_stream(st, o.warmup, o.iters, [&](int) { gm.run(one_group, true); });
    dense_total += td.median_us;
    out.push_back({{"gemm", gm.name}, {"impl", "dense (1 GEMM, all rows)"}, {"us", td.median_us},
                   {"tflops", gm.flops / (td.median_us * 1e6)}, {"vs_dense_pct", 100.0}});
    for (const auto& [label, impl] : {std::pair{"grouped: loop", cuda::GroupedGemmImpl::Loop},
                                      std::pair{"grouped: lanes (moe_grouped_gemm)", cuda::GroupedGemmImpl::Lanes},
                                      std::pair{"grouped: cublas batched", cuda::GroupedGemmImpl::Batched}}) {
      cuda::set_grouped_gemm_impl(impl);
      const auto t = cuda::time_on_stream(st, o.warmup, o.iters, [&](int) { gm.run(rows, false); });
      impl_total[label] += t.median_us;
      out.push_back({{"gemm", gm.name}, {"impl", label}, {"us", t.median_us},
                     {"tflops", gm.flops / (t.median_us * 1e6)}, {"vs_dense_pct", 100.0 * td.median_us / t.median_us}});
    }
    cuda::set_grouped_gemm_impl(cuda::GroupedGemmImpl::Loop);
  }
  const double total_flops = 3 * (fc1 + fc2);
  out.push_back({{"gemm", "all (one layer, fwd + bwd)"}, {"impl", "dense (1 GEMM, all rows)"}, {"us", dense_total},
                 {"tflops", total_flops / (dense_total * 1e6)}, {"vs_dense_pct", 100.0}});
  for (const auto& [label, us] : impl_total)
    out.push_back({{"gemm", "all (one layer, fwd + bwd)"}, {"impl", label}, {"us", us},
                   {"tflops", total_flops / (us * 1e6)}, {"vs_dense_pct", 100.0 * dense_total / us}});
  if (peak > 0)
    for (auto& r : out) r["pct_peak"] = 100.0 * r["tflops"].get<double>() / peak;

  // The routing and permutation of the same micro-batch (router logits from random hidden states).
  Tensor h = random_tensor(be, {N, C}, DType::BF16, 7), wr = random_tensor(be, {E, C}, DType::BF16, 8, -0.02f, 0.02f);
  Tensor logits = Tensor::empty({N, E}, DType::F32, Device::CUDA), probs = Tensor::empty({N, k}, DType::F32, Device::CUDA);
  Tensor idx = Tensor::empty({N, k}, DType::I32, Device::CUDA), row_of = Tensor::empty({N, k}, DType::I32, Device::CUDA);
  Tensor por = Tensor::empty({M}, DType::I32, Device::CUDA), counts = Tensor::empty({E}, DType::I32, Device::CUDA);
  Tensor yN = Tensor::zeros({N, C}, DType::BF16, Device::CUDA), dprobs = Tensor::empty({N, k}, DType::F32, Device::CUDA);
  Tensor dlogits = Tensor::empty({N, E}, DType::F32, Device::CUDA);
  ops::Backend::MoeRouting r;
  r.topk = k;
  r.pre_softmax = m.moe_router_pre_softmax;
  r.scaling = static_cast<float>(m.moe_router_topk_scaling_factor);
  std::vector<nlohmann::json> kernels;
  auto kernel = [&](const char* name, double bytes, const std::function<void()>& body) {
    const auto t = cuda::time_on_stream(st, o.warmup, o.iters, [&](int) { body(); });
    kernels.push_back({{"gemm", name}, {"impl", "kernel"}, {"us", t.median_us}, {"tflops", 0.0},
                       {"gbps", bytes / (t.median_us * 1e3)}});
  };
  be.matmul(logits, h, ops::Transpose::No, wr, ops::Transpose::Yes, 1.f, 0.f);
  kernel("router top-k forward", 4.0 * N * E, [&] { be.moe_topk_forward(probs, idx, logits, Tensor(), r); });
  kernel("dispatch plan (dropless)", 16.0 * M, [&] { be.moe_dispatch_plan(row_of, por, counts, idx, probs, -1, true, false); });
  kernel("permute (gather rows)", 4.0 * M * C, [&] { be.moe_permute(x, h, por, k); });
  kernel("unpermute (weighted sum)", 2.0 * (M + N) * C, [&] { be.moe_unpermute(yN, y, row_of, probs); });
  kernel("unpermute backward", 2.0 * (2 * M + N) * C, [&] { be.moe_unpermute_backward(dy, dprobs, yN, y, row_of, por, probs); });
  kernel("permute backward", 2.0 * (M + 2 * N) * C, [&] { be.moe_permute_backward(yN, x, row_of); });
  kernel("router top-k backward", 8.0 * N * E, [&] { be.moe_topk_backward(dlogits, dprobs, logits, idx, r); });
  for (auto& kr : kernels) out.push_back(kr);

  std::printf("# %s: %lld tokens x top-%lld over %lld experts of %lld x %lld (rows per expert %lld..%lld, mean %lld)\n\n",
              m.name.c_str(), (long long)N, (long long)k, (long long)E, (long long)F, (long long)C,
              (long long)*std::min_element(rows.begin(), rows.end()), (long long)busiest, (long long)(M / E));
  emit(out, {"gemm", "impl", "us", "tflops", "pct_peak", "vs_dense_pct", "gbps"}, o.format, o.output_file);
  return 0;
}

#endif  // PRIMUS_WITH_CUDA

}  // namespace primus::safe

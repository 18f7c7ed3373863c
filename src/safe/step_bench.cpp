// `primus bench step`: measures the step table of safe/step_table.h on the GPU.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "model/decoder_spec.h"
#include "ops/backend.h"
#include "safe/gpu_bench.h"
#include "safe/step_table.h"

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/timing.h"
#endif

namespace primus::safe {

#ifndef PRIMUS_WITH_CUDA

int run_step_bench(const StepBenchOptions&) { return gpu_ready("bench step") ? 0 : kNoGpuExitCode; }

#else

namespace {

constexpr int64_t kLogitsChunkRows = 4096;  // the trainer's default logits_chunk_rows

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// One tensor-parallel size's entry: the shapes of one rank, timed kernel by kernel.
StepTableEntry measure_entry(cuda::CudaBackend& be, const StepBenchOptions& o, int64_t tp) {
  const cudaStream_t st = be.stream();
  const ModelConfig m = tp_local_model(o.model, tp);
  const TrainingSetup& s = o.setup;
  const int64_t S = s.seq_length, Bm = s.micro_batch_size, N = Bm * S, C = m.hidden_size;
  const int64_t R = tp > 1 ? N / tp : N;  // sequence parallel: the norms run on this rank's share of the tokens
  const DType wgrad = s.grad_reduce_in_bf16 ? DType::BF16 : DType::F32;
  auto timed = [&](const std::function<void()>& body) {
    return cuda::time_on_stream(st, o.warmup, o.iters, [&](int) { body(); }).median_us;
  };

  // GEMMs: every projection of every layer and the output layer's chunks, forward / backward.
  double gemm_fwd = 0, gemm_bwd = 0, head_gemm = 0;
  for (const GemmProblem& p : training_gemms(m, N, kLogitsChunkRows, wgrad)) {
    const double us = be.gemm().time_current(gemm_key_of(p), o.warmup, o.iters) * static_cast<double>(p.count);
    if (p.label.rfind("lm_head", 0) == 0) head_gemm += us;
    else if (ends_with(p.label, " fwd")) gemm_fwd += us;
    else gemm_bwd += us;
  }

  // Attention, per layer (the kernel training picks: cuDNN, else flash).
  int64_t dense_layers = 0, moe_layers = 0;
  for (const LayerSpec& l : decoder_layers(m)) (l.mlp == MlpKind::MoE ? moe_layers : dense_layers) += 1;
  const int64_t L = dense_layers + moe_layers;
  const bool mla = m.multi_latent_attention;
  const int64_t Hq = m.num_attention_heads, Hkv = mla ? Hq : m.query_groups();
  const int64_t D = mla ? m.qk_head_dim + m.qk_pos_emb_head_dim : m.head_dim(), Dv = mla ? m.v_head_dim : D;
  double attn_fwd = 0, attn_bwd = 0;
  {
    Tensor q = random_tensor(be, {Bm, S, Hq, D}, DType::BF16, 1), k = random_tensor(be, {Bm, S, Hkv, D}, DType::BF16, 2);
    Tensor v = random_tensor(be, {Bm, S, Hkv, Dv}, DType::BF16, 3), dout = random_tensor(be, {Bm, S, Hq, Dv}, DType::BF16, 4);
    Tensor out = Tensor::empty({Bm, S, Hq, Dv}, DType::BF16, Device::CUDA);
    Tensor lse = Tensor::empty({Bm, Hq, S}, DType::F32, Device::CUDA);
    Tensor dq = Tensor::empty(q.shape(), DType::BF16, Device::CUDA), dk = Tensor::empty(k.shape(), DType::BF16, Device::CUDA);
    Tensor dv = Tensor::empty(v.shape(), DType::BF16, Device::CUDA);
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    be.set_attention_kernel(cuda::AttentionKernel::Auto);
    attn_fwd = static_cast<double>(L) * timed([&] { be.attention_forward(out, lse, q, k, v, scale, true, nullptr); });
    attn_bwd = static_cast<double>(L) *
               timed([&] { be.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale, true, nullptr); });
  }

  // Elementwise, per layer: two RMSNorms, RoPE (GQA's fused split + rotate), SwiGLU.
  double elem_fwd = 0, elem_bwd = 0, head_elem = 0;
  {
    Tensor x = random_tensor(be, {R, C}, DType::BF16, 11), w = random_tensor(be, {C}, DType::BF16, 12, 0.5f, 1.5f);
    Tensor y = Tensor::empty({R, C}, DType::BF16, Device::CUDA), rstd = Tensor::empty({R}, DType::F32, Device::CUDA);
    Tensor dy = random_tensor(be, {R, C}, DType::BF16, 13), dx = random_tensor(be, {R, C}, DType::BF16, 14);
    Tensor dw = Tensor::zeros({C}, DType::F32, Device::CUDA);
    const double nf = timed([&] { be.rmsnorm_forward(y, rstd, x, w, 1e-5f); });
    const double nb = timed([&] { be.rmsnorm_backward(dx, dw, dy, x, w, rstd); });
    elem_fwd += 2.0 * static_cast<double>(L) * nf;
    elem_bwd += 2.0 * static_cast<double>(L) * nb;
    head_elem += nf + nb;  // the final norm
  }
  if (!mla) {
    const int64_t W = (Hq + 2 * Hkv) * D;
    Tensor cs = random_tensor(be, {S, D / 2}, DType::F32, 21), sn = random_tensor(be, {S, D / 2}, DType::F32, 22);
    Tensor qkv = random_tensor(be, {N, W}, DType::BF16, 23);
    Tensor q = Tensor::empty({Bm, S, Hq, D}, DType::BF16, Device::CUDA), k = Tensor::empty({Bm, S, Hkv, D}, DType::BF16, Device::CUDA),
           v = Tensor::empty({Bm, S, Hkv, D}, DType::BF16, Device::CUDA);
    elem_fwd += static_cast<double>(L) * timed([&] { be.qkv_split_rope_forward(q, k, v, qkv, cs, sn); });
    elem_bwd += static_cast<double>(L) * timed([&] { be.qkv_split_rope_backward(qkv, q, k, v, cs, sn); });
  }
  auto swiglu = [&](int64_t rows, int64_t F, double times) {
    if (rows <= 0 || F <= 0 || times <= 0) return;
    Tensor gu = random_tensor(be, {rows, 2 * F}, DType::BF16, 31, -4.f, 4.f);
    Tensor out = Tensor::empty({rows, F}, DType::BF16, Device::CUDA), dout = random_tensor(be, {rows, F}, DType::BF16, 32);
    Tensor dgu = Tensor::empty({rows, 2 * F}, DType::BF16, Device::CUDA);
    elem_fwd += times * timed([&] { be.swiglu_forward(out, gu); });
    elem_bwd += times * timed([&] { be.swiglu_backward(dgu, dout, gu); });
  };
  swiglu(N, m.ffn_hidden_size, static_cast<double>(dense_layers));
  swiglu(N * m.moe_router_topk, m.moe_ffn_hidden_size, static_cast<double>(moe_layers));
  swiglu(N, m.moe_shared_expert_intermediate_size, static_cast<double>(moe_layers));

  // Head: the embedding (vocab-parallel) and the fused cross-entropy over each logits chunk.
  const int64_t V = m.padded_vocab_size;
  {
    Tensor table = random_tensor(be, {V, C}, DType::BF16, 41), out = Tensor::empty({N, C}, DType::BF16, Device::CUDA);
    Tensor dtable = Tensor::zeros({V, C}, DType::F32, Device::CUDA), dout = random_tensor(be, {N, C}, DType::BF16, 42);
    Tensor ids_host = Tensor::empty({N}, DType::I32);
    for (int64_t i = 0; i < N; ++i) ids_host.data<int32_t>()[i] = static_cast<int32_t>((i * 7919) % V);
    const Tensor ids = ids_host.to(Device::CUDA);
    head_elem += timed([&] { be.embedding_forward(out, ids, table); });
    head_elem += timed([&] { be.embedding_backward(dtable, dout, ids); });
    const int64_t rows = std::min(N, kLogitsChunkRows);
    Tensor logits = random_tensor(be, {rows, V}, DType::BF16, 51, -4.f, 4.f);
    Tensor losses = Tensor::empty({rows}, DType::F32, Device::CUDA);
    const Tensor targets = ids.rows(0, rows);
    const Tensor dloss =
        Tensor::from_floats(std::vector<float>(static_cast<size_t>(rows), 1.f / static_cast<float>(N)), {rows},
                            DType::F32, Device::CUDA);
    head_elem += static_cast<double>(N) / static_cast<double>(rows) *
                 timed([&] { be.cross_entropy_fused(losses, logits, targets, dloss); });
  }

  // Optimizer: AdamW over one layer's tensors with the experiment's dtypes, and the gradient norm.
  double opt_ns = 0;
  {
    std::vector<int64_t> sizes;
    for (const ParamSpec& p : layer_params(m, decoder_layers(m).front())) sizes.push_back(p.numel());
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    const int64_t copies = std::max<int64_t>(1, (int64_t{64} << 20) / std::max<int64_t>(1, total));  // >= 64M
    const bool mixed = s.precision != Precision::kFp32;
    std::vector<ops::AdamWTensor> params;
    std::vector<Tensor> grads;
    int64_t n_all = 0;
    for (int64_t c = 0; c < copies; ++c)
      for (int64_t n : sizes) {
        ops::AdamWTensor p;
        const uint64_t seed = 100 + params.size();
        if (mixed) p.model = random_tensor(be, {n}, DType::BF16, seed);
        if (mixed && s.master_remainders) p.master_remainder = Tensor::zeros({n}, DType::I16, Device::CUDA);
        else p.master = random_tensor(be, {n}, DType::F32, seed);
        p.grad = random_tensor(be, {n}, mixed && s.grad_reduce_in_bf16 ? DType::BF16 : DType::F32, seed + 7, -1e-3f, 1e-3f);
        p.exp_avg = Tensor::zeros({n}, s.exp_avg_bf16 ? DType::BF16 : DType::F32, Device::CUDA);
        p.exp_avg_sq = Tensor::zeros({n}, s.exp_avg_sq_bf16 ? DType::BF16 : DType::F32, Device::CUDA);
        grads.push_back(p.grad);
        params.push_back(std::move(p));
        n_all += n;
      }
    ops::AdamWParams hp;
    hp.lr = 1e-4f;
    hp.weight_decay = 0.1f;
    const double adam = timed([&] {
      be.adamw_step(params, hp);
      ++hp.step;
    });
    const double norm = timed([&] { (void)be.sum_of_squares(grads); });
    opt_ns = (adam + norm) * 1e3 / static_cast<double>(n_all);
  }

  StepTableEntry e;
  e.tp = tp;
  e.layers_fwd_us = gemm_fwd + attn_fwd + elem_fwd;
  e.layers_bwd_us = gemm_bwd + attn_bwd + elem_bwd;
  e.head_us = head_gemm + head_elem;
  e.optimizer_ns_per_param = opt_ns;
  e.parts = {{"gemm_fwd_us", gemm_fwd},   {"gemm_bwd_us", gemm_bwd},   {"attention_fwd_us", attn_fwd},
             {"attention_bwd_us", attn_bwd}, {"elementwise_fwd_us", elem_fwd}, {"elementwise_bwd_us", elem_bwd},
             {"head_gemm_us", head_gemm}, {"head_elementwise_us", head_elem}};
  return e;
}

}  // namespace

int run_step_bench(const StepBenchOptions& o) {
  if (!gpu_ready("bench step")) return kNoGpuExitCode;
  PRIMUS_CHECK(!o.output_file.empty(), "bench step: --out FILE.json is required (the table projection reads)");
  PRIMUS_CHECK(o.setup.precision != Precision::kFp32,
               "bench step: the experiment trains in fp32; the GPU path trains bf16 or fp16 (set bf16: true)");
  cuda::CudaBackend be(0);
  StepTable t;
  {  // the runtime's own memory: context, then cuBLAS(Lt) and cuDNN after a first GEMM and attention
    GemmProblem p{"warm-up", 256, 256, 256, false, true, DType::BF16, DType::BF16, false, 1};
    (void)be.gemm().time_current(gemm_key_of(p), 1, 1);
    Tensor q = random_tensor(be, {1, 256, 2, 64}, DType::BF16, 1), out = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
    Tensor lse = Tensor::empty({1, 2, 256}, DType::F32, Device::CUDA), dq = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
    Tensor dk = Tensor::empty(q.shape(), DType::BF16, Device::CUDA), dv = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
    be.attention_forward(out, lse, q, q, q, 0.125f, true, nullptr);
    be.attention_backward(dq, dk, dv, q, q, q, q, out, lse, 0.125f, true, nullptr);
    be.synchronize();
    size_t free_b = 0, total_b = 0;
    PRIMUS_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    t.runtime_bytes = static_cast<double>(total_b - free_b);
  }
  t.model = o.model.name;
  const auto devs = cuda::list_devices();
  t.device = devs.empty() ? "GPU" : devs[0].name;
  t.layers = o.model.num_layers;
  t.hidden = o.model.hidden_size;
  t.seq_length = o.setup.seq_length;
  t.micro_batch_size = o.setup.micro_batch_size;
  std::printf("| tp | layers fwd ms | layers bwd ms | head ms | optimizer ns/param | gemm fwd/bwd ms | attention fwd/bwd "
              "ms | elementwise fwd/bwd ms |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (int64_t tp : o.tps) {
    StepTableEntry e = measure_entry(be, o, tp);
    const auto& p = e.parts;
    std::printf("| %lld | %.3f | %.3f | %.3f | %.3f | %.3f / %.3f | %.3f / %.3f | %.3f / %.3f |\n",
                static_cast<long long>(tp), e.layers_fwd_us / 1e3, e.layers_bwd_us / 1e3, e.head_us / 1e3,
                e.optimizer_ns_per_param, p["gemm_fwd_us"].get<double>() / 1e3, p["gemm_bwd_us"].get<double>() / 1e3,
                p["attention_fwd_us"].get<double>() / 1e3, p["attention_bwd_us"].get<double>() / 1e3,
                p["elementwise_fwd_us"].get<double>() / 1e3, p["elementwise_bwd_us"].get<double>() / 1e3);
    std::fflush(stdout);
    t.entries.push_back(std::move(e));
  }
  std::ofstream f(o.output_file);
  PRIMUS_CHECK(f.good(), "bench step: cannot write '{}'", o.output_file);
  f << to_json(t).dump(2) << "\n";
  std::printf("runtime (CUDA context, cuBLAS, cuDNN): %.2f GiB\nwrote %s (primus projection --bench-table %s)\n",
              t.runtime_bytes / 1073741824.0, o.output_file.c_str(), o.output_file.c_str());
  return 0;
}

#endif

}  // namespace primus::safe

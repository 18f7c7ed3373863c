// `primus bench gemm|gemm-dense|attention|ops|moe|step`: GPU benchmarks (src/safe/gpu_bench.h);
// `primus bench generate`: KV-cache generation throughput (src/infer/generate_bench.h).
#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "config/config.h"
#include "config/describe.h"
#include "core/error.h"
#include "core/strings.h"
#include "infer/generate_bench.h"
#include "safe/gpu_bench.h"
#include "safe/model_shapes.h"
#include "safe/step_table.h"

namespace primus::cli {

namespace {

void add_shape_flags(CLI::App& app, safe::ShapeFlags& f) {
  app.add_option("--model-config,--shape", f.model,
                 "model: llama-tiny | llama3.2-1B | llama3.2-3B (the PyTorch peer's shapes), a zoo name "
                 "(configs/models/megatron/<name>.yaml) or a model yaml path");
  app.add_option("--layers", f.layers, "number of layers (overrides the model)");
  app.add_option("--hidden", f.hidden, "hidden size");
  app.add_option("--heads", f.heads, "attention heads");
  app.add_option("--kv-heads", f.kv_heads, "key/value heads (GQA groups)");
  app.add_option("--head-dim", f.head_dim, "head dim (default hidden/heads)");
  app.add_option("--ffn", f.ffn, "FFN hidden size");
  app.add_option("--vocab", f.vocab, "vocabulary (padded)");
}

// --seq and --mbs of the benchmarks that time one micro-batch shape.
void add_batch_flags(CLI::App& app, int64_t& seq, int64_t& mbs) {
  app.add_option("--seq", seq, "sequence length")->capture_default_str();
  app.add_option("--mbs", mbs, "micro-batch size")->capture_default_str();
}

// How much of cuBLASLt's algorithm list the GEMM benchmarks time.
void add_candidate_flags(CLI::App& app, bool& no_best, int& candidates) {
  app.add_flag("--no-best", no_best, "skip timing every cuBLASLt candidate");
  app.add_option("--candidates", candidates, "cuBLASLt candidates to time")->capture_default_str();
}

DType parse_dtype(const std::string& s) {
  if (s == "bf16") return DType::BF16;
  if (s == "fp16") return DType::F16;
  if (s == "fp32") return DType::F32;
  ::primus::fail("--dtype {}: expected bf16, fp16 or fp32", s);
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  CLI::App app{"GPU benchmarks: GEMM (single shapes or a model's training GEMMs, vs the best cuBLASLt "
               "algorithm), attention forward+backward, and the fused memory-bound ops vs their HBM floor",
               "bench"};
  app.require_subcommand(1);
  app.fallthrough();  // --output, --iters, ... also after the subcommand
  std::string output = "md", output_file;
  int warmup = 5, iters = 20;
  app.add_option("--output", output, "md | csv | jsonl")->capture_default_str();
  app.add_option("--output-file", output_file, "also write the table to this file");
  app.add_option("--warmup", warmup, "untimed iterations")->capture_default_str();
  app.add_option("--iters", iters, "timed iterations (median reported)")->capture_default_str();

  // gemm
  auto* gemm = app.add_subcommand("gemm", "one GEMM: out (M,N) = op(a) (M,K) @ op(b) (K,N)");
  int64_t m = 4096, n = 4096, k = 4096;
  std::string dtype = "bf16", trans = "NT", out_dtype;
  bool accumulate = false, no_best = false;
  int candidates = 32;
  gemm->add_option("--m", m, "rows of out")->capture_default_str();
  gemm->add_option("--n", n, "columns of out")->capture_default_str();
  gemm->add_option("--k", k, "reduction size")->capture_default_str();
  gemm->add_option("--dtype", dtype, "input dtype: bf16 | fp16 | fp32")->capture_default_str();
  gemm->add_option("--out-dtype", out_dtype, "output dtype (default: the input dtype; fp32 for grad accumulation)");
  gemm->add_option("--trans", trans,
                   "transposes of a and b, row-major: N or T each (NT = x @ w^T, a linear layer's forward)")
      ->capture_default_str();
  gemm->add_flag("--accumulate", accumulate, "beta = 1 (read and add to out)");
  add_candidate_flags(*gemm, no_best, candidates);

  // gemm-dense
  auto* dense = app.add_subcommand("gemm-dense", "the training GEMMs of a dense Llama-like model");
  safe::ShapeFlags dense_flags;
  int64_t seq = 2048, mbs = 1;
  add_shape_flags(*dense, dense_flags);
  add_batch_flags(*dense, seq, mbs);
  add_candidate_flags(*dense, no_best, candidates);

  // attention
  auto* attn = app.add_subcommand("attention", "flash attention forward+backward over model shapes and micro-batches");
  safe::ShapeFlags attn_flags;
  std::vector<int64_t> mbs_list;
  int64_t attn_seq = 0;
  bool all_configs = false, non_causal = false;
  add_shape_flags(*attn, attn_flags);
  attn->add_option("--seq", attn_seq, "sequence length (default: 2048; 1024 for llama-tiny)");
  attn->add_option("--mbs", mbs_list, "micro-batch sizes (default 1 2 4 8)")->delimiter(',');
  attn->add_flag("--all-configs", all_configs, "time every flash tiling variant");
  attn->add_flag("--non-causal", non_causal, "full (non-causal) attention");
  std::string attn_backend = "all";
  attn->add_option("--attention-backend", attn_backend,
                   "all: every kernel; or one, as the experiment key attention_backend names it: auto (cuDNN fused "
                   "SDPA, flash fallback), fused (cuDNN only), flash, unfused / local (the plain kernel)")
      ->check(CLI::IsMember({"all", "auto", "fused", "flash", "unfused", "local"}))
      ->capture_default_str();
  int64_t v_head_dim = 0;
  attn->add_option("--v-head-dim", v_head_dim,
                   "value head dim when it differs from the query/key one (MLA: --head-dim 192 --v-head-dim 128; "
                   "default: --head-dim)");
  int64_t doc_len = 0;
  attn->add_option("--doc-len", doc_len,
                   "packed sequences: split each row into documents of this many tokens and mask attention to "
                   "each document (segments; flash only)");

  // ops
  auto* opsb = app.add_subcommand("ops", "fused memory-bound ops (RMSNorm, RoPE, SwiGLU, CE, AdamW, ...) vs HBM floor");
  safe::ShapeFlags ops_flags;
  int64_t ops_seq = 2048, ops_mbs = 8;
  add_shape_flags(*opsb, ops_flags);
  add_batch_flags(*opsb, ops_seq, ops_mbs);

  // moe
  auto* moeb = app.add_subcommand("moe", "the experts' grouped GEMMs of an MoE layer vs one dense GEMM of the same FLOPs");
  safe::ShapeFlags moe_flags;
  int64_t moe_seq = 2048, moe_mbs = 4;
  moeb->add_option("--model", moe_flags.model,
                   "MoE model: mixtral-mini | deepseek-moe-mini (the PyTorch MoE peer's shapes), a zoo name or a model "
                   "yaml")
      ->capture_default_str();
  add_batch_flags(*moeb, moe_seq, moe_mbs);

  // step
  auto* stepb = app.add_subcommand("step", "the step table of an experiment (one micro-batch's kernels and the "
                                   "optimizer per tensor-parallel size) for primus projection --bench-table");
  std::string step_config, step_out;
  std::vector<std::string> step_sets;
  std::vector<int64_t> step_tps;
  stepb->add_option("--config", step_config, "the experiment YAML")->required();
  stepb->add_option("--set", step_sets, "override a key, key=value (repeatable)")->allow_extra_args(false);
  stepb->add_option("--tp", step_tps, "tensor-parallel sizes to measure (default: 1 2 4 8 where they divide the "
                    "heads and query groups)")->delimiter(',');
  stepb->add_option("--out", step_out, "the JSON table to write")->required();

  // generate
  auto* genb = app.add_subcommand("generate",
                                  "KV-cache generation (infer::generate) of a model shape with random weights: tokens/s, "
                                  "ms per decode step and its memory roofline, one JSON line per batch size (the global "
                                  "--warmup counts as at most one warm-up generation)");
  infer::GenerateBenchOptions gen;
  gen.shape = "1b";
  gen.new_tokens = 256;
  std::string gen_batches = "16,64", gen_device = "cuda";
  bool gen_no_graphs = false;
  genb->add_option("--shape", gen.shape, "tiny | 1b (Llama-3.2-1B)")->capture_default_str();
  genb->add_option("--batch", gen_batches, "comma-separated batch sizes")->capture_default_str();
  genb->add_option("--prompt-len", gen.prompt_len, "prompt tokens per sequence")->capture_default_str();
  genb->add_option("--new-tokens", gen.new_tokens, "new tokens per sequence")->capture_default_str();
  genb->add_option("--rounds", gen.rounds, "measured generations per batch size (best reported)")->capture_default_str();
  genb->add_option("--vocab", gen.vocab, "vocabulary rows")->capture_default_str();
  genb->add_option("--device", gen_device, "cuda | cpu")->capture_default_str();
  genb->add_option("--temperature", gen.sampling.temperature, "0 = greedy")->capture_default_str();
  genb->add_option("--top-k", gen.sampling.top_k, "0 = off")->capture_default_str();
  genb->add_option("--top-p", gen.sampling.top_p, "1 = off")->capture_default_str();
  genb->add_flag("--host-sampling", gen.host_sampling, "copy the logits to the host and sample there every step");
  genb->add_flag("--no-cuda-graphs", gen_no_graphs, "launch every op of every decode step (no graph replay)");
  genb->add_option("--hbm-gbps", gen.hbm_gbps, "memory bandwidth for the roofline, GB/s (H100 SXM: 3350)")
      ->capture_default_str();

  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (genb->parsed()) {
    PRIMUS_CHECK(gen_device == "cuda" || gen_device == "cpu", "--device {}: expected cuda or cpu", gen_device);
    gen.device = gen_device == "cuda" ? Device::CUDA : Device::CPU;
    gen.cuda_graphs = !gen_no_graphs;
    gen.warmup = std::min(warmup, 1);
    gen.batches.clear();
    for (const std::string& b : split(gen_batches, ',')) gen.batches.push_back(std::stoll(b));
    infer::run_generate_bench(gen, [](const nlohmann::json& j) {
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    });
    return 0;
  }
  if (stepb->parsed()) {
    config::LoadOptions lo;
    lo.sets = step_sets;
    lo.world_size = 0;  // the experiment's own layout; the table is per tp
    const config::Config cfg = config::load_experiment(step_config, lo);
    safe::StepBenchOptions o;
    o.model = config::model_config(cfg);
    o.setup = config::training_setup(cfg);
    o.tps = step_tps;
    if (o.tps.empty())
      for (int64_t tp = 1; tp <= 8; tp *= 2)
        if (o.model.num_attention_heads % tp == 0 && o.model.query_groups() % tp == 0) o.tps.push_back(tp);
    for (int64_t tp : o.tps) (void)safe::tp_local_model(o.model, tp);  // a tp that does not divide: named error
    o.warmup = std::min(warmup, 5);
    o.iters = std::min(iters, 10);
    o.output_file = step_out;
    return safe::run_step_bench(o);
  }
  const safe::TableFormat format = safe::parse_table_format(output);
  // gemm and gemm-dense: the problems to time, with the flags both take.
  auto gemm_bench = [&](std::vector<safe::GemmProblem> problems) {
    safe::GemmBenchOptions o;
    o.problems = std::move(problems);
    o.compare_best = !no_best;
    o.candidates = candidates;
    o.warmup = warmup;
    o.iters = iters;
    o.format = format;
    o.output_file = output_file;
    return safe::run_gemm_bench(o);
  };

  if (gemm->parsed()) {
    PRIMUS_CHECK(trans.size() == 2 && (trans[0] == 'N' || trans[0] == 'T') && (trans[1] == 'N' || trans[1] == 'T'),
                 "--trans {}: expected two letters of N/T (e.g. NT)", trans);
    safe::GemmProblem p;
    p.label = fmt::format("gemm {}", trans);
    p.m = m;
    p.n = n;
    p.k = k;
    p.ta = trans[0] == 'T';
    p.tb = trans[1] == 'T';
    p.in = parse_dtype(dtype);
    p.out = out_dtype.empty() ? p.in : parse_dtype(out_dtype);
    p.accumulate = accumulate;
    return gemm_bench({p});
  }
  if (dense->parsed()) {
    const safe::DenseShape s = safe::shape_from_flags(dense_flags, "llama3.2-1B");
    std::printf("# %s: %lld layers, hidden %lld, %lld/%lld heads, ffn %lld, vocab %lld; %lld tokens per micro-batch\n\n",
                s.name.c_str(), (long long)s.layers, (long long)s.hidden, (long long)s.heads, (long long)s.kv_heads,
                (long long)s.ffn, (long long)s.vocab, (long long)(seq * mbs));
    return gemm_bench(safe::training_gemms(s, seq * mbs));
  }
  if (attn->parsed()) {
    safe::AttentionBenchOptions o;
    std::vector<std::pair<safe::DenseShape, int64_t>> models;
    if (attn_flags.model.empty() && !attn_flags.hidden) {
      // The two reference shapes.
      models = {{*safe::builtin_shape("llama3.2-1B"), 2048}, {*safe::builtin_shape("llama-tiny"), 1024}};
    } else {
      const safe::DenseShape s = safe::shape_from_flags(attn_flags, "llama3.2-1B");
      models = {{s, attn_seq > 0 ? attn_seq : 2048}};
    }
    if (mbs_list.empty()) mbs_list = {1, 2, 4, 8};
    for (const auto& [s, T] : models) {
      for (int64_t b : mbs_list) {
        safe::AttentionShape a;
        a.label = s.name;
        a.batch = b;
        a.seq = attn_seq > 0 ? attn_seq : T;
        a.heads = s.heads;
        a.kv_heads = s.kv_heads;
        a.head_dim = s.head_dim;
        a.v_head_dim = v_head_dim;
        a.causal = !non_causal;
        a.doc_len = doc_len;
        o.shapes.push_back(a);
      }
    }
    o.all_configs = all_configs;
    o.backend = attn_backend;
    o.warmup = std::min(warmup, 5);
    o.iters = iters;
    o.format = format;
    o.output_file = output_file;
    return safe::run_attention_bench(o);
  }
  if (moeb->parsed()) {
    safe::MoeBenchOptions o;
    o.model = safe::resolve_model(moe_flags.model.empty() ? "mixtral-mini" : moe_flags.model);
    o.tokens = moe_seq * moe_mbs;
    o.warmup = std::min(warmup, 5);
    o.iters = iters;
    o.format = format;
    o.output_file = output_file;
    return safe::run_moe_bench(o);
  }
  safe::OpsBenchOptions o;
  o.shape = safe::shape_from_flags(ops_flags, "llama3.2-1B");
  o.seq = ops_seq;
  o.tokens = ops_seq * ops_mbs;
  o.warmup = std::min(warmup, 5);
  o.iters = iters;
  o.format = format;
  o.output_file = output_file;
  return safe::run_ops_bench(o);
}

}  // namespace primus::cli

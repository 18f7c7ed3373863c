#include "config/describe.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/strings.h"
#include "model/decoder_spec.h"

namespace primus::config {

namespace fs = std::filesystem;

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string display_path(const std::string& path) {
  std::error_code ec;
  const fs::path p = fs::path(path);
  if (!p.is_absolute()) return p.lexically_normal().string();
  const fs::path rel = p.lexically_normal().lexically_relative(fs::current_path(ec));
  if (ec || rel.empty() || starts_with(rel.string(), "..")) return path;
  return rel.string();
}

namespace {

std::string source_text(const Source& s) {
  return s.line > 0 ? fmt::format("{}:{}", display_path(s.file), s.line) : s.file;
}

std::string gib(double bytes) {
  const double g = bytes / (1024.0 * 1024.0 * 1024.0);
  return g >= 100 ? fmt::format("{:.0f} GiB", g) : g >= 10 ? fmt::format("{:.1f} GiB", g) : fmt::format("{:.2f} GiB", g);
}

std::string recompute_text(const TrainingSetup& t) {
  switch (t.recompute) {
    case Recompute::kNone: return "no recompute";
    case Recompute::kSelective: return "selective recompute";
    case Recompute::kFullUniform: return fmt::format("full recompute, uniform chunks of {}", t.recompute_num_layers);
    case Recompute::kFullBlock: return fmt::format("full recompute of {} layers per stage", t.recompute_num_layers);
  }
  return "";
}

}  // namespace

std::string describe_schema(const std::string& group) {
  std::string out;
  bool any = false;
  for (const std::string& g : schema().groups()) {
    if (!group.empty() && g != group) continue;
    any = true;
    out += fmt::format("[{}]\n", g);
    for (const OptionSpec& o : schema().options()) {
      if (o.group != g) continue;
      std::string type = o.type_name();
      if (!o.range_text().empty()) type += " " + o.range_text();
      out += fmt::format("  {:<38} {:<28} default {}\n", o.key, type, format_value(o.default_value));
      out += fmt::format("  {:<38} {}\n", "", o.doc);
    }
    out += "\n";
  }
  if (!any) {
    std::string msg = fmt::format("no config group '{}'{}; groups:", group, suggest(group, schema().groups()));
    for (const auto& g : schema().groups()) msg += fmt::format(" '{}'", g);
    throw primus::Error(msg);
  }
  return out;
}

std::string describe_schema_markdown() {
  std::string out;
  for (const std::string& g : schema().groups()) {
    out += fmt::format("### {}\n\n| key | type | default | doc |\n|---|---|---|---|\n", g);
    for (const OptionSpec& o : schema().options()) {
      if (o.group != g) continue;
      std::string type = o.type_name();
      if (!o.range_text().empty()) type += ", " + o.range_text();
      std::string doc = o.doc;
      for (auto& c : doc)
        if (c == '|') c = '/';
      for (auto& c : type)
        if (c == '|') c = '/';
      out += fmt::format("| `{}` | {} | `{}` | {} |\n", o.key, type, format_value(o.default_value), doc);
    }
    out += "\n";
  }
  return out;
}

std::string describe_config(const Config& cfg) {
  std::string out;
  out += fmt::format("experiment  {}\n", display_path(cfg.experiment_path));
  out += fmt::format("  work_group {}, user_name {}, exp_name {}, workspace {}\n", cfg.work_group, cfg.user_name,
                     cfg.exp_name, cfg.workspace);
  out += fmt::format("  module     {} ({}): {}\n", cfg.module_kind, cfg.framework, display_path(cfg.module_config_path));
  out += fmt::format("  model      {}: {}\n", cfg.model_name, display_path(cfg.model_config_path));
  out += fmt::format("  world size {} = tensor {} x pipeline {} x context {} x data {} (expert {})\n\n", cfg.world_size,
                     cfg.i("tensor_model_parallel_size"), cfg.i("pipeline_model_parallel_size"),
                     cfg.i("context_parallel_size"), cfg.data_parallel_size, cfg.i("expert_model_parallel_size"));
  for (const std::string& g : schema().groups()) {
    out += fmt::format("[{}]\n", g);
    for (const OptionSpec& o : schema().options()) {
      if (o.group != g) continue;
      out += fmt::format("  {:<38} {:<30} {}\n", o.key, format_value(cfg.value(o.key)), source_text(cfg.source(o.key)));
    }
    out += "\n";
  }
  return out;
}

ParallelLayout parallel_layout(const Config& cfg) {
  ParallelLayout l;
  l.tp = cfg.i("tensor_model_parallel_size");
  l.pp = cfg.i("pipeline_model_parallel_size");
  l.cp = cfg.i("context_parallel_size");
  l.ep = cfg.i("expert_model_parallel_size");
  l.etp = cfg.has("expert_tensor_parallel_size") ? cfg.i("expert_tensor_parallel_size") : l.tp;
  l.dp = cfg.data_parallel_size;
  l.sequence_parallel = cfg.b("sequence_parallel") && l.tp > 1;
  l.first_stage_layers = cfg.has("decoder_first_pipeline_num_layers") ? cfg.i("decoder_first_pipeline_num_layers") : 0;
  l.last_stage_layers = cfg.has("decoder_last_pipeline_num_layers") ? cfg.i("decoder_last_pipeline_num_layers") : 0;
  if (cfg.has("num_layers_per_virtual_pipeline_stage") && cfg.has("num_layers"))
    l.virtual_stages = std::max<int64_t>(
        1, cfg.i("num_layers") / l.pp / cfg.i("num_layers_per_virtual_pipeline_stage"));
  return l;
}

// Elements of the LoRA adapters peft: lora adds to the model (decoder_spec's with_lora).
int64_t lora_adapter_count(const ModelConfig& m, const Config& cfg) {
  LoraSpec lora;
  lora.rank = cfg.i("lora_dim");
  lora.alpha = cfg.f("lora_alpha");
  if (cfg.has("lora_target_modules")) lora.targets = cfg.list("lora_target_modules");
  int64_t n = 0;
  for (const LayerSpec& layer : decoder_layers(m))
    for (const ParamSpec& p : with_lora(m, layer_params(m, layer), lora))
      if (p.role == ParamRole::Adapter) n += p.numel();
  return n;
}

TrainingSetup training_setup(const Config& cfg) {
  TrainingSetup t;
  t.seq_length = cfg.i("seq_length");
  t.micro_batch_size = cfg.i("micro_batch_size");
  t.global_batch_size = cfg.has("global_batch_size") ? cfg.i("global_batch_size")
                                                     : t.micro_batch_size * cfg.data_parallel_size;
  t.precision = cfg.b("bf16") ? Precision::kBf16 : cfg.b("fp16") ? Precision::kFp16 : Precision::kFp32;
  t.distributed_optimizer = cfg.b("use_distributed_optimizer");
  const auto g = cfg.opt_s("recompute_granularity");
  if (g == "selective") t.recompute = Recompute::kSelective;
  if (g == "full")
    t.recompute = cfg.opt_s("recompute_method") == "block" ? Recompute::kFullBlock : Recompute::kFullUniform;
  t.recompute_num_layers = cfg.has("recompute_num_layers") ? cfg.i("recompute_num_layers") : 0;
  t.cross_entropy_fusion = cfg.b("cross_entropy_loss_fusion");
  t.logits_chunk_mb = cfg.i("logits_chunk_mb");
  t.grad_reduce_in_bf16 = cfg.b("grad_reduce_in_bf16");
  t.fp8 = cfg.has("fp8");
  if (cfg.b("use_precision_aware_optimizer")) {
    t.exp_avg_bf16 = cfg.s("exp_avg_dtype") == "bf16";
    t.exp_avg_sq_bf16 = cfg.s("exp_avg_sq_dtype") == "bf16";
    t.master_remainders = cfg.b("store_param_remainders");
  }
  if (cfg.s("peft") == "lora") {
    const ModelConfig m = model_config(cfg);
    const int64_t adapters = lora_adapter_count(m, cfg);
    t.trainable_fraction = static_cast<double>(adapters) / static_cast<double>(count_parameters(m).total + adapters);
  }
  return t;
}

std::string describe_model(const Config& cfg, double device_memory_gib) {
  const ModelConfig m = model_config(cfg);
  const ParamCounts c = count_parameters(m);
  std::string out;
  out += fmt::format("model {}\n", m.name);
  out += fmt::format("  parameters          {} ({})", with_commas(c.total), format_count(c.total));
  if (m.padded_vocab_size != m.vocab_size)
    out += fmt::format("  [vocabulary {} padded to {} for tensor parallelism]", m.vocab_size, m.padded_vocab_size);
  out += "\n";
  out += fmt::format("    embedding {}, output layer {}, attention {}, dense MLP {}, norms {}\n", with_commas(c.embedding),
                     c.output_layer ? with_commas(c.output_layer) : std::string("tied"), with_commas(c.attention),
                     with_commas(c.dense_mlp), with_commas(c.layer_norms + c.final_norm));
  if (m.num_experts > 0) {
    out += fmt::format("    MoE: routed experts {}, shared experts {}, routers {}\n", with_commas(c.moe_experts),
                       with_commas(c.moe_shared_experts), with_commas(c.moe_router));
    out += fmt::format("  activated per token {} ({}: top-{} of {} experts)\n", with_commas(c.activated),
                       format_count(c.activated), m.moe_router_topk, m.num_experts);
  }
  if (m.mtp_num_layers > 0)
    out += fmt::format("  MTP modules         {} ({}), not in the count above; they share the embedding and "
                       "output layer\n",
                       with_commas(c.mtp), format_count(c.mtp));

  const int64_t seq = cfg.i("seq_length");
  const FlopsPerToken f = training_flops_per_token(m, seq);
  out += fmt::format("  FLOPs per token     {:.4g} (training, PaLM: 6 x N_matmul {} + 6 x layers {} x seq {} x heads {} "
                     "x (d_qk + d_v); = 6N + 12 x L x h x s for standard attention)\n",
                     f.total(), format_count(c.matmul + c.mtp_matmul), m.num_layers + m.mtp_num_layers, seq,
                     m.num_attention_heads);
  const TrainingSetup t = training_setup(cfg);
  if (cfg.s("peft") == "lora") {
    const int64_t adapters = lora_adapter_count(m, cfg);
    out += fmt::format("  LoRA adapters       {} ({}, {:.2f}% of the model: only they have gradients and optimizer "
                       "states; rank {}, alpha {})\n",
                       with_commas(adapters), format_count(adapters),
                       100.0 * static_cast<double>(adapters) / static_cast<double>(c.total + adapters),
                       cfg.i("lora_dim"), cfg.f("lora_alpha"));
  }
  const double tokens_per_step = static_cast<double>(t.global_batch_size) * static_cast<double>(seq);
  out += fmt::format("  FLOPs per iteration {:.4g} (global_batch_size {} x seq_length {} tokens)\n",
                     f.total() * tokens_per_step, t.global_batch_size, seq);

  const ParallelLayout l = parallel_layout(cfg);
  const MemoryEstimate e = estimate_memory(m, l, t);
  const char* precision = t.precision == Precision::kBf16 ? "bf16 mixed precision"
                          : t.precision == Precision::kFp16 ? "fp16 mixed precision" : "fp32";
  const int64_t stage_layers = stage_layer_counts(m.num_layers, l)[static_cast<size_t>(e.stage)];
  out += fmt::format("memory per GPU (estimate for pipeline stage {} of {}, {} layers; tp {}, pp {}, cp {}, dp {}, "
                     "ep {}{}):\n",
                     e.stage, l.pp, stage_layers, l.tp, l.pp, l.cp, l.dp, l.ep,
                     l.sequence_parallel ? ", sequence parallel" : "");
  out += fmt::format("  {} parameters on this GPU ({} of them routed-expert)\n", with_commas(e.params),
                     with_commas(e.expert_params));
  out += fmt::format("  weights {}, gradients {}, optimizer {} ({}{})\n", gib(e.weight_bytes), gib(e.grad_bytes),
                     gib(e.optimizer_bytes), precision, t.distributed_optimizer ? ", distributed optimizer" : "");
  out += fmt::format("  activations {} (micro_batch_size {} x seq_length {}, {} micro-batch{} in flight, {})\n",
                     gib(e.activation_bytes), t.micro_batch_size, seq, e.microbatches_in_flight,
                     e.microbatches_in_flight == 1 ? "" : "es", recompute_text(t));
  out += fmt::format("  total {} (not counted: CUDA context, workspaces, fragmentation, communication buffers)\n",
                     gib(e.total_bytes()));
  if (device_memory_gib > 0) {
    const double need = static_cast<double>(e.total_bytes()) / static_cast<double>(1ull << 30);
    const char* remedies = "spread the model over more ranks (expert_model_parallel_size, "
                           "pipeline_model_parallel_size, tensor_model_parallel_size), shard the optimizer "
                           "(use_distributed_optimizer) or recompute activations (recompute_granularity: full)";
    switch (memory_fit(need, device_memory_gib)) {
      case MemoryFit::kFits:
        out += fmt::format("  fits in {:g} GiB of device memory ({:.0f}% of it)\n", device_memory_gib,
                           100.0 * need / device_memory_gib);
        break;
      case MemoryFit::kTight:
        out += fmt::format("  WARNING: tight: {} is {:.1f}% of {:g} GiB of device memory (above {:.0f}%), too little "
                           "headroom for what the estimate does not count; {}\n",
                           gib(static_cast<double>(e.total_bytes())), 100.0 * need / device_memory_gib,
                           device_memory_gib, 100.0 * kTightMemoryFraction, remedies);
        break;
      case MemoryFit::kDoesNotFit:
        out += fmt::format("  WARNING: does not fit: {:.1f} GiB > {:g} GiB of device memory; {}\n", need,
                           device_memory_gib, remedies);
        break;
    }
  }
  return out;
}

MemoryFit memory_fit(double need_gib, double device_gib) {
  if (need_gib > device_gib) return MemoryFit::kDoesNotFit;
  if (need_gib > kTightMemoryFraction * device_gib) return MemoryFit::kTight;
  return MemoryFit::kFits;
}

double memory_estimate_gib(const Config& cfg) {
  const MemoryEstimate e = estimate_memory(model_config(cfg), parallel_layout(cfg), training_setup(cfg));
  return static_cast<double>(e.total_bytes()) / static_cast<double>(1ull << 30);
}

}  // namespace primus::config

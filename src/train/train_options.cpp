#include "train/train_options.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "infer/kv_cache.h"
#include "model/model_stats.h"
#include "train/logging.h"

namespace primus::train {

namespace {

std::string opt_path(const config::Config& cfg, const char* key) { return cfg.opt_s(key).value_or(""); }

std::optional<int64_t> opt_int(const config::Config& cfg, const char* key) {
  if (!cfg.has(key)) return std::nullopt;
  return cfg.i(key);
}

// <workspace>/<work_group>/<user_name>/<exp_name>: where Primus users find a run's files.
std::string experiment_dir(const config::Config& cfg) {
  return (std::filesystem::path(cfg.workspace) / cfg.work_group / cfg.user_name / cfg.exp_name).string();
}

}  // namespace

const char* attention_impl_description(AttentionImpl a) {
  switch (a) {
    case AttentionImpl::CudnnWithFlashFallback: return "cuDNN fused SDPA, flash fallback";
    case AttentionImpl::Cudnn: return "cuDNN fused SDPA only";
    case AttentionImpl::Flash: return "the flash kernel only";
    case AttentionImpl::Plain: return "the plain (unfused) kernel";
  }
  return "?";
}

AttentionImpl attention_kernel(const std::string& backend, bool enable_primus_turbo, bool use_turbo_attention,
                               const std::string& where) {
  const bool turbo = enable_primus_turbo && use_turbo_attention;
  if (backend == "auto") return turbo ? AttentionImpl::CudnnWithFlashFallback : AttentionImpl::Plain;
  if (backend == "fused" || backend == "flash") {
    if (!turbo)
      throw Error(fmt::format(
          "attention_backend = {} ({}) picks a Primus-Turbo attention kernel ({}), but Turbo attention is off "
          "(enable_primus_turbo = {}, use_turbo_attention = {}), which asks for the plain kernel: set "
          "enable_primus_turbo: true and use_turbo_attention: true, or attention_backend: auto",
          backend, where, backend == "fused" ? "cuDNN fused SDPA" : "flash", enable_primus_turbo,
          use_turbo_attention));
    return backend == "fused" ? AttentionImpl::Cudnn : AttentionImpl::Flash;
  }
  if (backend == "unfused" || backend == "local") {
    if (turbo)
      throw Error(fmt::format(
          "attention_backend = {} ({}) picks the plain (unfused) attention kernel, but enable_primus_turbo and "
          "use_turbo_attention are both true, which ask for the Turbo kernels (cuDNN fused SDPA, flash fallback): "
          "set use_turbo_attention: false, or attention_backend: auto (or fused / flash)",
          backend, where));
    return AttentionImpl::Plain;
  }
  throw Error(fmt::format("attention_backend = {} ({}) has no kernel here: expected auto, fused, flash, unfused or "
                          "local",
                          backend, where));
}

namespace {

// Megatron's precision-aware optimizer keys into AdamWConfig. Without
// use_precision_aware_optimizer every dtype key must keep its fp32 default (Megatron asserts
// the same); dtypes this engine does not hold are refused by name.
void read_precision_aware_optimizer(const config::Config& cfg, TrainOptions& o) {
  const bool aware = cfg.b("use_precision_aware_optimizer");
  for (const char* key : {"exp_avg_dtype", "exp_avg_sq_dtype", "main_params_dtype", "main_grads_dtype"}) {
    const std::string v = cfg.s(key);
    if (v == "fp32") continue;
    if (!aware)
      throw Error(fmt::format("{} = {} ({}) takes effect only with use_precision_aware_optimizer: true; set it, or "
                              "remove {}", key, v, cfg.source(key).str(), key));
    if (std::string_view(key) == "main_grads_dtype")
      throw Error(fmt::format("main_grads_dtype = bf16 ({}) is not built: the optimizer reads fp32 gradients, or "
                              "bf16 ones for the projections with grad_reduce_in_bf16: true; remove main_grads_dtype",
                              cfg.source(key).str()));
    if (std::string_view(key) == "main_params_dtype")
      throw Error(fmt::format("main_params_dtype = {} ({}) is not built: master weights are fp32 (with bf16 weights "
                              "held as remainders, store_param_remainders); remove main_params_dtype",
                              v, cfg.source(key).str()));
    if (v != "bf16")
      throw Error(fmt::format("{} = {} ({}) is not built: Adam's moments are held in fp32 or bf16; set {}: bf16 or "
                              "fp32", key, v, cfg.source(key).str(), key));
  }
  if (!aware) return;
  o.adam.exp_avg_dtype = cfg.s("exp_avg_dtype") == "bf16" ? DType::BF16 : DType::F32;
  o.adam.exp_avg_sq_dtype = cfg.s("exp_avg_sq_dtype") == "bf16" ? DType::BF16 : DType::F32;
  o.adam.store_param_remainders = cfg.b("store_param_remainders");
}

}  // namespace

TrainOptions train_options(const config::Config& cfg, bool cuda_visible) {
  TrainOptions o;
  o.exp_name = cfg.exp_name;
  o.log_dir = experiment_log_dir(cfg.workspace, cfg.work_group, cfg.user_name, cfg.exp_name);
  o.stderr_sink_level = cfg.s("stderr_sink_level");

  // ---- device and precision ----
  const std::string device = cfg.s("device");
  if (device == "cuda" && !cuda_visible)
    throw Error(fmt::format("device: cuda ({}) but no GPU is visible to this process{}; use device: cpu or auto",
                            cfg.source("device").str(),
                            " (a CPU-only build, no GPU, or CUDA_VISIBLE_DEVICES hides every GPU)"));
  o.device = (device == "cuda" || (device == "auto" && cuda_visible)) ? Device::CUDA : Device::CPU;
  const bool bf16 = cfg.b("bf16"), fp16 = cfg.b("fp16");
  if (o.device == Device::CUDA) {
    o.precision = bf16 ? Precision::Bf16 : fp16 ? Precision::Fp16 : Precision::Fp32;
  } else {
    o.precision = Precision::Fp32;
    o.precision_downgraded = bf16 || fp16;
  }
  // FP8 GEMMs of the layers' projections (ops/fp8.h, model/fp8_training.h).
  if (cfg.has("fp8")) {
    const std::string at = cfg.source("fp8").str();
    if (fp16)
      throw Error(fmt::format("fp8 = {} ({}) with fp16: true: FP8 training runs with bf16 (the non-FP8 parts and the "
                              "GEMM outputs); set bf16: true instead of fp16",
                              cfg.s("fp8"), at));
    if (o.device == Device::CUDA && o.precision != Precision::Bf16)
      throw Error(fmt::format("fp8 = {} ({}) on CUDA needs bf16: true (the FP8 casts read bf16 tensors)",
                              cfg.s("fp8"), at));
    ops::Fp8Options f;
    f.format = cfg.s("fp8") == "e4m3" ? ops::Fp8Format::E4M3 : ops::Fp8Format::Hybrid;
    const std::string recipe = cfg.s("fp8_recipe");
    if (recipe == "blockwise")
      throw Error(fmt::format("fp8_recipe = blockwise ({}): block-wise FP8 scaling is not built in Primus; use "
                              "delayed (amax history) or tensorwise (current scaling)",
                              cfg.source("fp8_recipe").str()));
    f.recipe = recipe == "tensorwise" ? ops::Fp8Recipe::Tensorwise : ops::Fp8Recipe::Delayed;
    f.margin = static_cast<int>(cfg.i("fp8_margin"));
    f.amax_history_len = static_cast<int>(cfg.i("fp8_amax_history_len"));
    f.amax_max = cfg.s("fp8_amax_compute_algo") == "max";
    if (f.amax_history_len > 1024)
      throw Error(fmt::format("fp8_amax_history_len = {} ({}) is larger than 1024 (Transformer Engine's default is "
                              "1024; Megatron's examples use 1 to 1024)",
                              f.amax_history_len, cfg.source("fp8_amax_history_len").str()));
    o.fp8 = f;
  } else {
    for (const char* k : {"fp8_recipe", "fp8_margin", "fp8_amax_history_len", "fp8_amax_compute_algo"})
      if (cfg.source(k).file != config::kSchemaDefault)
        throw Error(fmt::format("{} ({}) configures FP8 scaling, but fp8 is not set: set fp8: hybrid (or e4m3) to "
                                "train with FP8 GEMMs, or remove it",
                                k, cfg.source(k).str()));
  }
  if (cfg.has("loss_scale")) o.loss_scale.static_scale = cfg.f("loss_scale");
  o.loss_scale.initial_scale = cfg.f("initial_loss_scale");
  o.loss_scale.min_scale = cfg.f("min_loss_scale");
  o.loss_scale.window = static_cast<int64_t>(cfg.f("loss_scale_window"));
  o.loss_scale.hysteresis = cfg.i("hysteresis");

  // ---- model ----
  o.model = config::model_config(cfg);
  o.seed = static_cast<uint64_t>(cfg.i("seed"));
  o.recompute_granularity = cfg.opt_s("recompute_granularity").value_or("");
  if (o.recompute_granularity == "full" && cfg.opt_s("recompute_method").value_or("") == "block")
    o.recompute_num_layers = cfg.i("recompute_num_layers");
  o.seq_length = cfg.i("seq_length");
  o.flops_per_token = training_flops_per_token(o.model, o.seq_length).total();

  // ---- mixture of experts: how the layer runs (the math is in the model config) ----
  if (o.model.num_experts > 0) {
    auto refuse = [&](const char* key, const std::string& why) {
      throw Error(fmt::format("{} = {} ({}): {}", key, config::format_value(cfg.value(key)), cfg.source(key).str(), why));
    };
    if (cfg.s("moe_token_dispatcher_type") == "flex")
      refuse("moe_token_dispatcher_type", "the flex dispatcher (DeepEP) is not built; use alltoall or allgather");
    if (!cfg.b("moe_permute_fusion"))
      refuse("moe_permute_fusion", "Primus permutes tokens with its fused kernels only; set it to true");
    if (cfg.b("moe_shared_expert_overlap"))
      refuse("moe_shared_expert_overlap",
             "overlapping the shared experts with the expert-parallel token exchange is not built; set it to false");
    if (cfg.opt_s("moe_router_dtype").value_or("fp32") != "fp32")
      refuse("moe_router_dtype", "the router computes in fp32; set fp32 or leave it null");
    o.moe_grouped_gemm = cfg.b("moe_grouped_gemm");
    o.moe_token_dispatcher = cfg.s("moe_token_dispatcher_type") == "alltoall" ? parallel::TokenDispatcher::AllToAll
                                                                               : parallel::TokenDispatcher::AllGather;
    // Experts are split over the dense tensor-parallel ranks (Megatron's default); another split
    // would need a second expert grid.
    if (cfg.has("expert_tensor_parallel_size") &&
        cfg.i("expert_tensor_parallel_size") != cfg.i("tensor_model_parallel_size"))
      refuse("expert_tensor_parallel_size",
             fmt::format("the experts are split over the tensor-parallel ranks (expert_tensor_parallel_size = "
                         "tensor_model_parallel_size = {}); another expert tensor-parallel size is not built, leave "
                         "it null",
                         cfg.i("tensor_model_parallel_size")));
  }

  // ---- layout ----
  o.tensor_parallel = static_cast<int>(cfg.i("tensor_model_parallel_size"));
  o.pipeline_parallel = static_cast<int>(cfg.i("pipeline_model_parallel_size"));
  o.context_parallel = static_cast<int>(cfg.i("context_parallel_size"));
  o.expert_parallel = static_cast<int>(cfg.i("expert_model_parallel_size"));
  o.sequence_parallel = cfg.b("sequence_parallel") && o.tensor_parallel > 1;
  if (cfg.has("num_layers_per_virtual_pipeline_stage"))
    o.num_layers_per_virtual_pipeline_stage = cfg.i("num_layers_per_virtual_pipeline_stage");
  if (cfg.has("decoder_first_pipeline_num_layers"))
    o.decoder_first_pipeline_num_layers = cfg.i("decoder_first_pipeline_num_layers");
  if (cfg.has("decoder_last_pipeline_num_layers"))
    o.decoder_last_pipeline_num_layers = cfg.i("decoder_last_pipeline_num_layers");
  o.enable_primus_turbo = cfg.b("enable_primus_turbo");
  o.use_turbo_attention = cfg.b("use_turbo_attention");
  o.cross_entropy_loss_fusion = cfg.b("cross_entropy_loss_fusion");
  o.cross_entropy_fusion_impl = cfg.s("cross_entropy_fusion_impl");
  // ---- kernels: attention, logits chunks ----
  o.attention_backend = cfg.s("attention_backend");
  // The CPU path has one attention kernel, the fp32 reference (an unfused one): cuDNN and flash
  // cannot mean anything there.
  if (o.device == Device::CPU && (o.attention_backend == "fused" || o.attention_backend == "flash"))
    throw Error(fmt::format("attention_backend = {} ({}) picks a CUDA attention kernel, but this run is on the CPU, "
                            "whose one attention kernel is the fp32 reference: use attention_backend: auto (or "
                            "unfused), or device: cuda",
                            o.attention_backend, cfg.source("attention_backend").str()));
  o.attention = attention_kernel(o.attention_backend, o.enable_primus_turbo, o.use_turbo_attention,
                                 cfg.source("attention_backend").str());
  o.cudnn_attention_padding_workaround = cfg.s("cudnn_attention_padding_workaround");
  o.cudnn_attention_mask_index_int32 = cfg.s("cudnn_attention_mask_index") == "int32";
  o.logits_chunk_mb = cfg.i("logits_chunk_mb");
  o.distributed_timeout_minutes = cfg.i("distributed_timeout_minutes");
  o.use_distributed_optimizer = cfg.b("use_distributed_optimizer");
  o.overlap_grad_reduce = cfg.b("overlap_grad_reduce");
  if (cfg.b("grad_reduce_in_bf16")) {
    if (o.precision != Precision::Bf16)
      throw Error(fmt::format("grad_reduce_in_bf16 ({}) holds gradients in bf16, which needs a bf16 run on CUDA; "
                              "this run computes in {}: remove it, or set bf16: true on a GPU",
                              cfg.source("grad_reduce_in_bf16").str(),
                              o.device == Device::CPU ? "fp32 on the CPU" : o.precision == Precision::Fp16 ? "fp16" : "fp32"));
    o.grad_reduce_in_bf16 = true;
  }
  o.overlap_param_gather = cfg.b("overlap_param_gather");
  if (cfg.has("ddp_bucket_size")) {
    o.ddp_bucket_size = cfg.i("ddp_bucket_size");
    if (o.ddp_bucket_size < 1)
      throw Error(fmt::format("ddp_bucket_size = {} must be >= 1 (elements per gradient bucket; Megatron's "
                              "default is 40000000)", o.ddp_bucket_size));
  }

  // ---- batch and run length ----
  o.micro_batch_size = cfg.i("micro_batch_size");
  o.global_batch_size = cfg.i("global_batch_size");
  if (cfg.has("rampup_batch_size"))
    throw Error(fmt::format("rampup_batch_size ({}) is not supported by the Primus loop yet; remove it "
                            "(train at the full global_batch_size from the start)",
                            cfg.source("rampup_batch_size").str()));
  if (cfg.has("train_iters")) {
    o.train_iters = cfg.i("train_iters");
  } else if (cfg.has("train_samples")) {
    o.train_iters = (cfg.i("train_samples") + o.global_batch_size - 1) / o.global_batch_size;
  } else {
    throw Error("neither train_iters nor train_samples is set; set one of them in the experiment's overrides");
  }
  o.eval_interval = cfg.i("eval_interval");
  o.eval_iters = cfg.i("eval_iters");
  o.exit_interval = opt_int(cfg, "exit_interval");
  o.exit_duration_in_mins = opt_int(cfg, "exit_duration_in_mins");

  // ---- post-training ----
  o.posttrain = cfg.module_kind == "post_trainer";
  auto refuse_post = [&](const char* key) {
    throw Error(fmt::format("{} = {} ({}) is a post-training key, but this experiment's module is `{}`: put the run "
                            "under `modules: post_trainer:` (primus train posttrain) or remove the key",
                            key, config::format_value(cfg.value(key)), cfg.source(key).str(), cfg.module_kind));
  };
  o.chat_template = opt_path(cfg, "chat_template");
  o.completion_only_loss = cfg.b("completion_only_loss");
  o.packing = cfg.b("packing");
  o.dpo = cfg.b("dpo");
  if (!o.posttrain) {
    if (cfg.has("chat_template")) refuse_post("chat_template");
    if (o.packing) refuse_post("packing");
    if (o.dpo) refuse_post("dpo");
    if (!o.completion_only_loss) refuse_post("completion_only_loss");
  }
  if (cfg.s("peft") == "lora") {
    o.lora.rank = cfg.i("lora_dim");
    o.lora.alpha = cfg.f("lora_alpha");
    if (cfg.has("lora_target_modules")) o.lora.targets = cfg.list("lora_target_modules");
    o.lora.dropout = cfg.f("lora_dropout");
    if (o.fp8)
      throw Error(fmt::format("fp8 = {} ({}) with peft: lora ({}): FP8 training of LoRA adapters is not built; "
                              "remove fp8 (LoRA trains in bf16)",
                              cfg.s("fp8"), cfg.source("fp8").str(), cfg.source("peft").str()));
    if (!(o.lora.dropout >= 0.0 && o.lora.dropout < 1.0))
      throw Error(fmt::format("lora_dropout = {} ({}) must be in [0, 1)", o.lora.dropout,
                              cfg.source("lora_dropout").str()));
    const auto targets = [&](const char* m) {
      return std::find(o.lora.targets.begin(), o.lora.targets.end(), m) != o.lora.targets.end();
    };
    if (o.lora.dropout > 0.0 && o.model.num_experts > 0 && (targets("linear_fc1") || targets("linear_fc2")))
      throw Error(fmt::format("lora_dropout = {} ({}) on an MoE model with linear_fc1 / linear_fc2 in "
                              "lora_target_modules: dropout on the routed experts' adapters is not built yet (their "
                              "rows are permuted tokens); set lora_dropout: 0, or target the attention only",
                              o.lora.dropout, cfg.source("lora_dropout").str()));
  } else {
    for (const char* k : {"lora_target_modules"})
      if (cfg.has(k))
        throw Error(fmt::format("{} ({}) is set but peft is none: set peft: lora, or remove it", k,
                                cfg.source(k).str()));
    if (cfg.f("lora_dropout") != 0.0)
      throw Error(fmt::format("lora_dropout = {} ({}) is set but peft is none: set peft: lora, or remove it",
                              cfg.f("lora_dropout"), cfg.source("lora_dropout").str()));
  }
  o.dpo_options.beta = cfg.f("dpo_beta");
  o.dpo_options.loss = parse_dpo_loss_type(cfg.s("dpo_loss_type"));
  o.dpo_options.label_smoothing = cfg.f("dpo_label_smoothing");
  o.pretrained_checkpoint = opt_path(cfg, "pretrained_checkpoint");
  // GRPO (docs/RL.md): its keys do something only with grpo: true; set without it they are refused.
  o.grpo = cfg.b("grpo");
  {
    static const char* const kGrpoKeys[] = {
        "num_generations", "max_prompt_length", "max_completion_length", "temperature", "top_p", "top_k",
        "stop_strings", "num_iterations", "grpo_beta", "grpo_epsilon", "grpo_epsilon_high", "grpo_loss_type",
        "scale_rewards", "reward_funcs", "reward_weights", "reward_answer_key", "reward_answer_regex",
        "reward_format_regex", "overlong_buffer_length", "reward_command", "generation_kv_cache_memory"};
    if (!o.grpo)
      for (const char* k : kGrpoKeys)
        if (cfg.source(k).file != config::kSchemaDefault && !cfg.value(k).is_null())
          throw Error(fmt::format("{} ({}) is a GRPO key but grpo is false: set grpo: true (under modules: "
                                  "post_trainer) or remove it",
                                  k, cfg.source(k).str()));
  }
  if (o.grpo) {
    if (!o.posttrain) refuse_post("grpo");
    if (o.dpo)
      throw Error(fmt::format("grpo: true and dpo: true ({}): a run is one or the other", cfg.source("dpo").str()));
    if (o.lora.dropout > 0.0)
      throw Error(fmt::format("lora_dropout = {} ({}) with grpo: true: GRPO's rollout rows (several completions of "
                              "one prompt) carry no per-row sample key for the dropout masks yet; set lora_dropout: "
                              "0", o.lora.dropout, cfg.source("lora_dropout").str()));
    rl::GrpoOptions& g = o.grpo_options;
    g.num_generations = cfg.i("num_generations");
    g.max_prompt_length = cfg.i("max_prompt_length");
    g.max_completion_length = cfg.i("max_completion_length");
    g.sampling.temperature = static_cast<float>(cfg.f("temperature"));
    g.sampling.top_p = static_cast<float>(cfg.f("top_p"));
    g.sampling.top_k = cfg.i("top_k");
    g.sampling.seed = o.seed;
    g.stop_strings = cfg.list("stop_strings");
    g.num_iterations = cfg.i("num_iterations");
    g.loss.beta = cfg.f("grpo_beta");
    g.loss.epsilon_low = cfg.f("grpo_epsilon");
    g.loss.epsilon_high = cfg.has("grpo_epsilon_high") ? cfg.f("grpo_epsilon_high") : g.loss.epsilon_low;
    g.loss.loss_type = rl::parse_grpo_loss_type(cfg.s("grpo_loss_type"));
    g.loss.max_completion_length = g.max_completion_length;
    g.scale_rewards = rl::parse_reward_scaling(cfg.s("scale_rewards"));
    if (cfg.has("reward_funcs")) g.rewards.funcs = cfg.list("reward_funcs");
    g.rewards.weights = cfg.numbers("reward_weights");
    g.rewards.answer_key = cfg.s("reward_answer_key");
    g.rewards.answer_regex = opt_path(cfg, "reward_answer_regex");
    g.rewards.format_regex = opt_path(cfg, "reward_format_regex");
    g.rewards.overlong_buffer_length = cfg.i("overlong_buffer_length");
    g.rewards.command = opt_path(cfg, "reward_command");
    g.rewards.max_completion_length = g.max_completion_length;
    if (cfg.has("generation_kv_cache_memory"))
      g.generation_kv_cache_memory = infer::parse_memory_size(
          opt_path(cfg, "generation_kv_cache_memory"),
          fmt::format("generation_kv_cache_memory ({})", cfg.source("generation_kv_cache_memory").str()));
    const int64_t mu = g.num_iterations;
    for (const char* k : {"save_interval", "exit_interval"})
      if (cfg.has(k) && cfg.i(k) % mu != 0)
        throw Error(fmt::format("{} = {} ({}) is not a multiple of num_iterations = {}: a GRPO checkpoint lands "
                                "between two rounds of rollouts (a round is generated once and trained on "
                                "num_iterations times)",
                                k, cfg.i(k), cfg.source(k).str(), mu));
  }

  // ---- data ----
  o.data.data_path = cfg.list("data_path");
  o.data.train_data_path = cfg.list("train_data_path");
  o.data.valid_data_path = cfg.list("valid_data_path");
  o.data.test_data_path = cfg.list("test_data_path");
  o.data.split = cfg.s("split");
  o.data.data_cache_path = opt_path(cfg, "data_cache_path");
  o.data.seq_length = o.seq_length;
  o.data.seed = o.seed;
  o.data.mock_data = cfg.b("mock_data");
  o.data.vocab_size = o.model.vocab_size;
  o.data.eod_mask_loss = cfg.b("eod_mask_loss");
  o.data.reset_position_ids = cfg.b("reset_position_ids");
  o.data.reset_attention_mask = cfg.b("reset_attention_mask");
  o.tokenizer_type = cfg.opt_s("tokenizer_type").value_or("");
  o.tokenizer_model = opt_path(cfg, "tokenizer_model");

  // ---- optimizer and schedules ----
  o.adam.beta1 = static_cast<float>(cfg.f("adam_beta1"));
  o.adam.beta2 = static_cast<float>(cfg.f("adam_beta2"));
  o.adam.eps = static_cast<float>(cfg.f("adam_eps"));
  o.adam.clip_grad = static_cast<float>(cfg.f("clip_grad"));
  read_precision_aware_optimizer(cfg, o);
  MegatronScheduleArgs& s = o.schedule;
  s.lr = cfg.f("lr");
  s.min_lr = cfg.f("min_lr");
  s.lr_warmup_init = cfg.f("lr_warmup_init");
  s.lr_decay_style = cfg.s("lr_decay_style");
  s.global_batch_size = o.global_batch_size;
  if (cfg.has("train_iters")) s.train_iters = cfg.i("train_iters");
  else s.train_samples = cfg.i("train_samples");
  s.lr_decay_iters = opt_int(cfg, "lr_decay_iters");
  s.lr_decay_samples = opt_int(cfg, "lr_decay_samples");
  s.lr_warmup_iters = cfg.i("lr_warmup_iters");
  s.lr_warmup_samples = cfg.i("lr_warmup_samples");
  if (cfg.has("lr_warmup_fraction")) s.lr_warmup_fraction = cfg.f("lr_warmup_fraction");
  s.lr_wsd_decay_style = cfg.s("lr_wsd_decay_style");
  s.lr_wsd_decay_iters = opt_int(cfg, "lr_wsd_decay_iters");
  s.lr_wsd_decay_samples = opt_int(cfg, "lr_wsd_decay_samples");
  s.weight_decay = cfg.f("weight_decay");
  if (cfg.has("start_weight_decay")) s.start_weight_decay = cfg.f("start_weight_decay");
  if (cfg.has("end_weight_decay")) s.end_weight_decay = cfg.f("end_weight_decay");
  s.weight_decay_incr_style = cfg.s("weight_decay_incr_style");

  // ---- checkpoints ----
  o.save = opt_path(cfg, "save");
  o.load = opt_path(cfg, "load");
  o.save_interval = opt_int(cfg, "save_interval");
  o.auto_continue_train = cfg.b("auto_continue_train");
  o.finetune = cfg.b("finetune");
  o.no_load_optim = cfg.b("no_load_optim");
  o.no_load_rng = cfg.b("no_load_rng");
  o.no_save_optim = cfg.b("no_save_optim");
  o.no_save_rng = cfg.b("no_save_rng");
  o.disable_last_saving = cfg.b("disable_last_saving");
  o.async_save = cfg.b("async_save");

  // ---- logging ----
  o.log_interval = cfg.i("log_interval");
  o.log_params_norm = cfg.b("log_params_norm");
  o.log_num_zeros_in_grad = cfg.b("log_num_zeros_in_grad");
  o.log_avg_skip_iterations = cfg.i("log_avg_skip_iterations");
  o.log_avg_reset_interval = cfg.i("log_avg_reset_interval");
  const std::string run_dir = experiment_dir(cfg);
  if (!cfg.b("disable_tensorboard"))
    o.tensorboard_dir = cfg.opt_s("tensorboard_dir").value_or((std::filesystem::path(run_dir) / "tensorboard").string());
  o.metrics_jsonl_path =
      ((o.tensorboard_dir.empty() ? std::filesystem::path(run_dir) : std::filesystem::path(o.tensorboard_dir)) /
       "metrics.jsonl")
          .string();

  o.wandb_requested = cfg.has("wandb_project") && !cfg.b("disable_wandb");
  o.timing_log_level = cfg.i("timing_log_level");
  if (cfg.b("profile")) {
    if (o.device != Device::CUDA)
      throw Error(fmt::format("profile: true ({}) opens a CUDA profiler's capture window; this run is on the CPU "
                              "(profile it with perf), so remove profile or use device: cuda",
                              cfg.source("profile").str()));
    o.profile = true;
    o.profile_step_start = cfg.i("profile_step_start");
    o.profile_step_end = cfg.i("profile_step_end");
    for (double r : cfg.numbers("profile_ranks")) o.profile_ranks.push_back(static_cast<int64_t>(r));
    if (o.profile_ranks.empty()) o.profile_ranks = {0};
  }

  // ---- fault tolerance ----
  o.nan_guard_max_consecutive = cfg.i("nan_guard_max_consecutive");
  o.watchdog_minutes = cfg.i("watchdog_minutes");

  o.config_json = cfg.to_json();
  return o;
}

}  // namespace primus::train

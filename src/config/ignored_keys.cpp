// The table of keys a run ignores (ignored_keys.h). Each condition mirrors where the engine reads
// the key: train/train_options.cpp (the loop's options), train/trainer.cpp (data, checkpoints,
// kernels), model/ (the architecture through model_config), optim/lr_schedule.cpp.
//
// Left out on purpose, though the run ignores them there: the tokenizer keys under mock_data (the
// model zoo names each model's tokenizer), moe_token_dispatcher_type at expert_model_parallel_size
// 1 and the data-parallel keys (use_distributed_optimizer, overlap_*, ddp_bucket_size) at one
// data-parallel rank (the layout is often set at launch, and a dry run assumes the smallest world),
// finetune without load (post_trainer.yaml sets it; pretrained_checkpoint loads weights only anyway).
#include "config/ignored_keys.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "core/strings.h"

namespace primus::config {

namespace {

// ---- conditions --------------------------------------------------------------------------------

bool never(const Config&) { return false; }

// Model.
bool moe(const Config& c) { return c.has("num_experts"); }
bool mla(const Config& c) { return c.b("multi_latent_attention"); }
bool yarn(const Config& c) { return mla(c) && c.f("rotary_scaling_factor") > 1.0; }
bool llama31_rope_scaling(const Config& c) { return c.b("use_rope_scaling"); }
bool rope_rescaled(const Config& c) { return yarn(c) || (!mla(c) && llama31_rope_scaling(c)); }
bool mtp(const Config& c) { return c.has("mtp_num_layers") && c.i("mtp_num_layers") > 0; }
bool balancing_loss(const Config& c) { return c.s("moe_router_load_balancing_type") != "none"; }
bool aux_loss_weighted(const Config& c) { return c.f("moe_aux_loss_coeff") > 0; }
bool expert_bias(const Config& c) { return c.b("moe_router_enable_expert_bias"); }
bool capacity(const Config& c) { return c.has("moe_expert_capacity_factor"); }

// Device and precision. `device: auto` may find a GPU: only an explicit cpu rules the GPU out.
bool may_run_on_gpu(const Config& c) { return c.s("device") != "cpu"; }
bool bf16_precision_aware(const Config& c) { return c.b("use_precision_aware_optimizer") && c.b("bf16"); }
bool fp16(const Config& c) { return c.b("fp16"); }
bool turbo_enabled(const Config& c) { return c.b("enable_primus_turbo"); }
bool turbo_attention(const Config& c) { return c.b("use_turbo_attention"); }
// cuDNN's fused SDPA runs only under Turbo attention with attention_backend auto or fused
// (train/train_options.h attention_kernel).
bool cudnn_attention(const Config& c) {
  const std::string backend = c.s("attention_backend");
  return turbo_enabled(c) && turbo_attention(c) && (backend == "auto" || backend == "fused");
}

// Parallelism and recompute.
bool tensor_parallel(const Config& c) { return c.i("tensor_model_parallel_size") > 1; }
bool full_recompute(const Config& c) { return c.opt_s("recompute_granularity") == "full"; }

// Learning rate and weight decay.
bool decays(const Config& c) { return c.s("lr_decay_style") != "constant"; }
bool wsd(const Config& c) { return c.s("lr_decay_style") == "WSD"; }
bool warms_up(const Config& c) {
  return c.i("lr_warmup_iters") > 0 || c.i("lr_warmup_samples") > 0 ||
         (c.has("lr_warmup_fraction") && c.f("lr_warmup_fraction") > 0);
}
bool weight_decay_ramps(const Config& c) { return c.s("weight_decay_incr_style") != "constant"; }
bool weight_decay_not_replaced(const Config& c) {
  return !(c.has("start_weight_decay") && c.has("end_weight_decay"));
}

// Data (train/trainer.cpp setup_data): pretraining reads .bin/.idx prefixes (none with
// mock_data), post-training reads chat JSONL, GRPO prompts (data_path or train_data_path only).
bool posttrain(const Config& c) { return c.module_kind == "post_trainer"; }
bool grpo(const Config& c) { return c.b("grpo"); }
bool not_grpo(const Config& c) { return !grpo(c); }
bool dpo(const Config& c) { return c.b("dpo"); }
bool pretrain(const Config& c) { return !posttrain(c); }
bool reads_data_files(const Config& c) { return posttrain(c) || !c.b("mock_data"); }
// The per-split lists replace data_path (pretraining: any of the three; SFT/DPO: train or
// valid, test being refused; GRPO: train_data_path).
bool per_split_paths(const Config& c) {
  if (!posttrain(c)) return c.has("train_data_path") || c.has("valid_data_path") || c.has("test_data_path");
  if (grpo(c)) return c.has("train_data_path");
  return c.has("train_data_path") || c.has("valid_data_path");
}
bool reads_data_path(const Config& c) { return reads_data_files(c) && !per_split_paths(c); }
bool splits_data(const Config& c) { return pretrain(c) ? !per_split_paths(c) : !grpo(c) && !per_split_paths(c); }
bool caches_data(const Config& c) { return pretrain(c) || !grpo(c); }
bool evaluates(const Config& c) { return c.i("eval_iters") > 0; }

// Post-training.
bool lora(const Config& c) { return c.s("peft") == "lora"; }
bool dpo_smoothed_loss(const Config& c) {
  const std::string t = c.s("dpo_loss_type");
  return t == "sigmoid" || t == "robust";
}
bool grpo_reward(const Config& c, const char* name) {
  const std::vector<std::string> funcs =
      c.has("reward_funcs") ? c.list("reward_funcs") : std::vector<std::string>{"accuracy"};
  return std::find(funcs.begin(), funcs.end(), name) != funcs.end();
}
// Without grpo these keys are refused (train_options), not ignored: only GRPO runs are judged here.
bool accuracy_reward(const Config& c) { return !grpo(c) || grpo_reward(c, "accuracy"); }
bool format_reward(const Config& c) { return !grpo(c) || grpo_reward(c, "format"); }
bool overlong_reward(const Config& c) { return !grpo(c) || grpo_reward(c, "overlong"); }
bool command_reward(const Config& c) { return !grpo(c) || grpo_reward(c, "command"); }

// Checkpoints (trainer.cpp restore / save).
bool saves(const Config& c) { return c.has("save"); }
bool may_resume(const Config& c) { return c.has("load") || (c.b("auto_continue_train") && saves(c)); }
bool loads_or_saves(const Config& c) { return c.has("load") || saves(c); }
bool tensorboard(const Config& c) { return !c.b("disable_tensorboard"); }
bool profiles(const Config& c) { return c.b("profile"); }

// ---- the table -----------------------------------------------------------------------------------

constexpr const char* kDense = "num_experts is unset (a dense model: no router, no experts)";
constexpr const char* kNoMla = "multi_latent_attention is false (these shape multi-latent attention only)";
constexpr const char* kCpu = "device is cpu, whose path trains in fp32 with its own kernels";
constexpr const char* kNoCudnnAttention =
    "attention does not run cuDNN: that takes enable_primus_turbo and use_turbo_attention with attention_backend "
    "auto or fused";
constexpr const char* kNoWandb =
    "Weights & Biases logging is not built (TensorBoard events and metrics.jsonl hold the same scalars)";

const std::vector<IgnoredKeyRule> kRules = {
    // model
    {"mscale", mla, "multi_latent_attention is false (YaRN is built for MLA; Llama 3.1 scaling is use_rope_scaling)"},
    {"mscale", yarn, "rotary_scaling_factor is 1: YaRN is off"},
    {"mscale_all_dim", mla, "multi_latent_attention is false (YaRN is built for MLA)"},
    {"mscale_all_dim", yarn, "rotary_scaling_factor is 1: YaRN is off"},
    {"beta_fast", mla, "multi_latent_attention is false (YaRN is built for MLA)"},
    {"beta_fast", yarn, "rotary_scaling_factor is 1: YaRN is off"},
    {"beta_slow", mla, "multi_latent_attention is false (YaRN is built for MLA)"},
    {"beta_slow", yarn, "rotary_scaling_factor is 1: YaRN is off"},
    {"rope_scaling_factor", llama31_rope_scaling, "use_rope_scaling is false"},
    {"rope_low_freq_factor", llama31_rope_scaling, "use_rope_scaling is false"},
    {"rope_high_freq_factor", llama31_rope_scaling, "use_rope_scaling is false"},
    {"original_max_position_embeddings", rope_rescaled,
     "RoPE is not rescaled (neither use_rope_scaling nor YaRN: rotary_scaling_factor > 1 with multi-latent attention)"},
    // mixture of experts
    {"moe_router_topk", moe, kDense},
    {"moe_ffn_hidden_size", moe, kDense},
    {"moe_shared_expert_intermediate_size", moe, kDense},
    {"moe_layer_freq", moe, kDense},
    {"moe_first_k_dense_replace", moe, kDense},
    {"moe_router_score_function", moe, kDense},
    {"moe_router_pre_softmax", moe, kDense},
    {"moe_router_topk_scaling_factor", moe, kDense},
    {"moe_router_num_groups", moe, kDense},
    {"moe_router_group_topk", moe, kDense},
    {"moe_router_group_score", moe, kDense},
    {"moe_router_enable_expert_bias", moe, kDense},
    {"moe_router_bias_update_rate", moe, kDense},
    {"moe_router_bias_update_rate", expert_bias, "moe_router_enable_expert_bias is false"},
    {"moe_router_load_balancing_type", moe, kDense},
    {"moe_router_load_balancing_type", aux_loss_weighted, "moe_aux_loss_coeff is 0: no load-balancing loss"},
    {"moe_aux_loss_coeff", moe, kDense},
    {"moe_aux_loss_coeff", balancing_loss, "moe_router_load_balancing_type is none"},
    {"moe_z_loss_coeff", moe, kDense},
    {"moe_router_dtype", moe, kDense},
    {"moe_expert_capacity_factor", moe, kDense},
    {"moe_token_drop_policy", moe, kDense},
    {"moe_token_drop_policy", capacity, "moe_expert_capacity_factor is unset: no token is dropped"},
    {"moe_pad_expert_input_to_capacity", moe, kDense},
    {"moe_grouped_gemm", moe, kDense},
    {"moe_grouped_gemm", may_run_on_gpu, "device is cpu (a grouped launch is a CUDA kernel choice)"},
    {"moe_token_dispatcher_type", moe, kDense},
    {"moe_permute_fusion", moe, kDense},
    {"moe_shared_expert_overlap", moe, kDense},
    // multi-latent attention, multi-token prediction
    {"q_lora_rank", mla, kNoMla},
    {"kv_lora_rank", mla, kNoMla},
    {"qk_head_dim", mla, kNoMla},
    {"qk_pos_emb_head_dim", mla, kNoMla},
    {"v_head_dim", mla, kNoMla},
    {"mtp_loss_scaling_factor", mtp, "mtp_num_layers is unset or 0: no multi-token-prediction loss"},
    // training
    {"eval_interval", evaluates, "eval_iters is 0: no validation"},
    // data
    {"data_path", reads_data_files, "mock_data is true: no data file is read"},
    {"data_path", reads_data_path, "the per-split lists (train_data_path ...) are read instead"},
    {"split", splits_data, "the per-split lists (train_data_path ...) are read whole instead of data_path"},
    {"train_data_path", reads_data_files, "mock_data is true: no data file is read"},
    {"valid_data_path", reads_data_files, "mock_data is true: no data file is read"},
    {"valid_data_path", evaluates, "eval_iters is 0: no validation"},
    {"test_data_path", reads_data_files, "mock_data is true: no data file is read"},
    {"test_data_path", evaluates, "eval_iters is 0: no test evaluation"},
    {"data_cache_path", caches_data, "GRPO tokenizes its prompts at each start (no cache)"},
    {"eod_mask_loss", pretrain, "post-training masks the loss by completion_only_loss, not by end-of-document"},
    {"reset_position_ids", pretrain, "post-training data restarts positions per conversation when packing"},
    {"reset_attention_mask", pretrain, "post-training data keeps attention inside each conversation when packing"},
    {"num_workers", never, "the engine has no data-loader worker processes"},
    {"dataloader_type", never, "the sampler is always Megatron's single pass (indices past the end wrap around)"},
    // learning rate
    {"min_lr", decays, "lr_decay_style is constant"},
    {"lr_decay_iters", decays, "lr_decay_style is constant"},
    {"lr_decay_samples", decays, "lr_decay_style is constant"},
    {"lr_warmup_init", warms_up, "there is no warm-up (lr_warmup_iters, lr_warmup_samples, lr_warmup_fraction)"},
    {"lr_wsd_decay_style", wsd, "lr_decay_style is not WSD"},
    {"lr_wsd_decay_iters", wsd, "lr_decay_style is not WSD"},
    {"lr_wsd_decay_samples", wsd, "lr_decay_style is not WSD"},
    {"use_checkpoint_opt_param_scheduler", never,
     "the schedule always comes from this config (a checkpoint gives only the consumed samples)"},
    // optimizer
    {"weight_decay", weight_decay_not_replaced, "start_weight_decay and end_weight_decay are both set and replace it"},
    {"start_weight_decay", weight_decay_ramps, "weight_decay_incr_style is constant"},
    {"store_param_remainders", bf16_precision_aware,
     "only bf16 weights under use_precision_aware_optimizer hold their fp32 masters as remainders"},
    // mixed precision
    {"bf16", may_run_on_gpu, kCpu},
    {"fp16", may_run_on_gpu, kCpu},
    {"loss_scale", fp16, "fp16 is false: only fp16 scales the loss"},
    {"loss_scale", may_run_on_gpu, kCpu},
    {"initial_loss_scale", fp16, "fp16 is false: only fp16 scales the loss"},
    {"initial_loss_scale", may_run_on_gpu, kCpu},
    {"min_loss_scale", fp16, "fp16 is false: only fp16 scales the loss"},
    {"min_loss_scale", may_run_on_gpu, kCpu},
    {"loss_scale_window", fp16, "fp16 is false: only fp16 scales the loss"},
    {"loss_scale_window", may_run_on_gpu, kCpu},
    {"hysteresis", fp16, "fp16 is false: only fp16 scales the loss"},
    {"hysteresis", may_run_on_gpu, kCpu},
    // parallelism
    {"expert_tensor_parallel_size", moe, kDense},
    {"sequence_parallel", tensor_parallel, "tensor_model_parallel_size is 1"},
    {"gradient_accumulation_fusion", never, "weight gradients always accumulate into the fp32 grads"},
    // recompute
    {"recompute_num_layers", full_recompute, "recompute_granularity is not full"},
    // checkpointing
    {"save_interval", saves, "save is unset: no checkpoint is written"},
    {"no_save_optim", saves, "save is unset: no checkpoint is written"},
    {"no_save_rng", saves, "save is unset: no checkpoint is written"},
    {"disable_last_saving", saves, "save is unset: no checkpoint is written"},
    {"async_save", saves, "save is unset: no checkpoint is written"},
    {"no_load_optim", may_resume, "no checkpoint is resumed (load is unset, and auto_continue_train has no save)"},
    {"no_load_rng", may_resume, "no checkpoint is resumed (load is unset, and auto_continue_train has no save)"},
    {"auto_continue_train", loads_or_saves, "save and load are unset"},
    {"ckpt_format", never, "checkpoints are always Primus's safetensors layout (docs/CHECKPOINTS.md)"},
    // logging
    {"log_timers_to_tensorboard", never, "no timers are written to TensorBoard"},
    {"tensorboard_log_interval", never, "TensorBoard gets a point at every log_interval"},
    {"tensorboard_dir", tensorboard, "disable_tensorboard is true"},
    {"wandb_project", never, kNoWandb},
    {"wandb_exp_name", never, kNoWandb},
    {"wandb_save_dir", never, kNoWandb},
    {"disable_wandb", never, kNoWandb},
    // primus turbo
    {"enable_primus_turbo", may_run_on_gpu, kCpu},
    {"enable_primus_turbo", turbo_attention,
     "use_turbo_attention is false, and attention is the one kernel it switches"},
    {"use_turbo_attention", may_run_on_gpu, kCpu},
    {"use_turbo_attention", turbo_enabled, "enable_primus_turbo is false"},
    {"use_turbo_gemm", never, "linear layers always run cuBLASLt GEMMs"},
    {"use_turbo_grouped_gemm", never, "moe_grouped_gemm chooses the experts' grouped GEMM"},
    {"use_turbo_grouped_mlp", never, "moe_grouped_gemm chooses the experts' grouped GEMM"},
    {"use_turbo_deepep", never, "DeepEP is not built; moe_token_dispatcher_type chooses the token exchange"},
    {"cross_entropy_fusion_impl", never, "there is one fused cross-entropy, switched by cross_entropy_loss_fusion"},
    {"attention_backend", may_run_on_gpu, kCpu},
    {"cudnn_attention_padding_workaround", may_run_on_gpu, kCpu},
    {"cudnn_attention_padding_workaround", cudnn_attention, kNoCudnnAttention},
    {"cudnn_attention_mask_index", may_run_on_gpu, kCpu},
    {"cudnn_attention_mask_index", cudnn_attention, kNoCudnnAttention},
    // post-training
    {"completion_only_loss", not_grpo, "GRPO's loss is on the sampled completions"},
    {"packing", not_grpo, "GRPO's rows are rollouts, not packed conversations"},
    {"lora_dim", lora, "peft is none"},
    {"lora_alpha", lora, "peft is none"},
    {"dpo_beta", dpo, "dpo is false"},
    {"dpo_loss_type", dpo, "dpo is false"},
    {"dpo_label_smoothing", dpo, "dpo is false"},
    {"dpo_label_smoothing", dpo_smoothed_loss, "dpo_loss_type hinge and ipo take no label smoothing"},
    {"reward_answer_key", accuracy_reward, "reward_funcs has no accuracy"},
    {"reward_answer_regex", accuracy_reward, "reward_funcs has no accuracy"},
    {"reward_format_regex", format_reward, "reward_funcs has no format"},
    {"overlong_buffer_length", overlong_reward, "reward_funcs has no overlong"},
    {"reward_command", command_reward, "reward_funcs has no command"},
    // profiling
    {"profile_step_start", profiles, "profile is false"},
    {"profile_step_end", profiles, "profile is false"},
    {"profile_ranks", profiles, "profile is false"},
};

// Set, as the user sees it: a value other than the schema's default that validate() did not derive.
bool set_to_non_default(const Config& cfg, const std::string& key) {
  if (starts_with(cfg.source(key).file, "derived")) return false;
  return cfg.value(key) != cfg.spec(key).default_value;
}

}  // namespace

const std::vector<IgnoredKeyRule>& ignored_key_rules() { return kRules; }

std::string IgnoredKey::message() const {
  return fmt::format("{} = {} ({}) has no effect in this run: {}", key, value, source, why);
}

std::vector<IgnoredKey> ignored_keys(const Config& cfg) {
  std::vector<IgnoredKey> out;
  std::set<std::string> named;
  for (const IgnoredKeyRule& r : kRules) {
    if (named.count(r.key) || !set_to_non_default(cfg, r.key) || r.matters(cfg)) continue;
    named.insert(r.key);
    out.push_back({r.key, format_value(cfg.value(r.key)), cfg.source(r.key).str(), r.why});
  }
  return out;
}

}  // namespace primus::config

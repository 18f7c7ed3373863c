// What the training loop reads from the experiment config, as one typed struct.
//
// The loop never looks keys up itself: train_options() reads every key it honours (Megatron's
// names) once, after config::validate(), so a key the loop uses is visible here in one place
// and the Trainer can be driven from tests without YAML.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "config/config.h"
#include "core/tensor.h"
#include "data/data_config.h"
#include "model/decoder_spec.h"
#include "model/model_config.h"
#include "ops/fp8.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "parallel/expert_parallel.h"
#include "rl/grpo_options.h"
#include "train/dpo_loss.h"

namespace primus::train {

enum class Precision { Fp32, Bf16, Fp16 };

// The CUDA attention kernels (ops/cuda/cuda_backend.h AttentionKernel) as train_options() resolves
// attention_backend with the Turbo switches:
//   CudnnWithFlashFallback  cuDNN fused SDPA, else flash, else the plain kernel (Turbo attention, auto)
//   Cudnn                   cuDNN fused SDPA only; a shape it refuses is an error (fused)
//   Flash                   the flash kernel; a shape it lacks is an error (flash)
//   Plain                   the plain unfused kernel (Turbo attention off; unfused, local)
enum class AttentionImpl { CudnnWithFlashFallback, Cudnn, Flash, Plain };
const char* attention_impl_description(AttentionImpl a);

// attention_backend (auto | fused | flash | unfused | local) with the Turbo switches -> the kernel.
// Turbo attention (enable_primus_turbo and use_turbo_attention) allows the Turbo kernels: auto =
// cuDNN with flash fallback, fused = cuDNN only, flash = flash only; off, the plain kernel: auto,
// unfused, local. A combination outside these (unfused with Turbo attention on, fused or flash with
// it off) is refused naming the keys, never resolved by one key silently winning. `where` says
// where attention_backend was set.
AttentionImpl attention_kernel(const std::string& attention_backend, bool enable_primus_turbo, bool use_turbo_attention,
                               const std::string& where);

struct LossScaleOptions {
  std::optional<double> static_scale;  // loss_scale: a fixed scale (no dynamic adjustment)
  double initial_scale = 4294967296.0; // initial_loss_scale (2^32)
  double min_scale = 1.0;              // min_loss_scale
  int64_t window = 1000;               // loss_scale_window: clean iterations before doubling
  int64_t hysteresis = 2;              // overflows tolerated before halving
};

struct TrainOptions {
  // Run identity and where files go.
  std::string exp_name, log_dir;          // log_dir: <workspace>/<group>/<user>/<exp>/logs
  std::string stderr_sink_level = "INFO";

  // Device and precision. device_auto: CUDA when a GPU is visible.
  Device device = Device::CPU;
  Precision precision = Precision::Fp32;
  bool precision_downgraded = false;  // bf16/fp16 asked for, but the CPU path computes in fp32
  LossScaleOptions loss_scale;
  // fp8 / fp8_recipe / fp8_margin / fp8_amax_history_len / fp8_amax_compute_algo: the layers'
  // projections run their GEMMs in FP8 (ops/fp8.h); unset: none.
  std::optional<ops::Fp8Options> fp8;

  // Model.
  ModelConfig model;
  uint64_t seed = 1234;
  std::string recompute_granularity;  // "", "selective", "full" (parse_recompute_granularity)
  int64_t recompute_num_layers = 0;   // with full + block: only the first N layers
  double flops_per_token = 0;         // training FLOPs per token (model_stats.h), for TFLOP/s and MFU

  // Parallel layout (the loop runs data x tensor (+sequence) parallelism; pp/cp/ep must be 1).
  int tensor_parallel = 1, pipeline_parallel = 1, context_parallel = 1, expert_parallel = 1;
  bool sequence_parallel = false;
  int64_t num_layers_per_virtual_pipeline_stage = 0;  // 0: no interleaving
  int64_t decoder_first_pipeline_num_layers = 0;      // uneven pipeline split; 0: an even share
  int64_t decoder_last_pipeline_num_layers = 0;
  // Primus-Turbo switches (docs/TRAINING.md "Kernels"): turbo attention off -> the plain
  // (unfused) attention kernel; cross-entropy fusion off -> loss and gradient in two passes.
  bool enable_primus_turbo = false, use_turbo_attention = false, cross_entropy_loss_fusion = false;
  std::string cross_entropy_fusion_impl = "native";
  // The CUDA attention kernel: attention_backend (Megatron's key) read together with the Turbo
  // switches (attention_kernel()); the CPU path has one kernel and ignores it.
  std::string attention_backend = "auto";
  AttentionImpl attention = AttentionImpl::Plain;
  // cuDNN attention's two workarounds (cudnn_attention_padding_workaround: auto | on | off;
  // cudnn_attention_mask_index: int32 | float).
  std::string cudnn_attention_padding_workaround = "auto";
  bool cudnn_attention_mask_index_int32 = true;
  // MiB of logits the output layer materialises at once (logits_chunk_mb).
  int64_t logits_chunk_mb = 2048;
  // Any single communication wait longer than this aborts the job (distributed_timeout_minutes).
  int64_t distributed_timeout_minutes = 10;
  // MoE models: the experts' GEMMs as one grouped launch (moe_grouped_gemm) or one per expert.
  bool moe_grouped_gemm = false;
  // How routed rows reach the expert-parallel ranks (moe_token_dispatcher_type).
  parallel::TokenDispatcher moe_token_dispatcher = parallel::TokenDispatcher::AllGather;
  // Data parallel (train/data_parallel_optimizer.h).
  bool use_distributed_optimizer = false, overlap_grad_reduce = false, overlap_param_gather = false;
  bool grad_reduce_in_bf16 = false;  // the projections' gradients in bf16 (DecoderOptions::linear_grad_dtype)
  int64_t ddp_bucket_size = 40'000'000;  // elements per gradient bucket (Megatron's default)

  // Batch and run length. train_iters is always set (derived from train_samples when
  // the run is sample-based: ceil(train_samples / global_batch_size)).
  int64_t micro_batch_size = 1, global_batch_size = 1, seq_length = 0;
  int64_t train_iters = 0;
  int64_t eval_interval = 1000, eval_iters = 0;
  std::optional<int64_t> exit_interval, exit_duration_in_mins;

  // Data.
  data::DataConfig data;
  std::string tokenizer_type, tokenizer_model;

  // Optimizer and schedules.
  AdamWConfig adam;
  MegatronScheduleArgs schedule;

  // Checkpoints.
  std::string save, load;  // empty: none
  std::optional<int64_t> save_interval;
  bool auto_continue_train = false, finetune = false;
  bool no_load_optim = false, no_load_rng = false, no_save_optim = false, no_save_rng = false;
  bool disable_last_saving = false, async_save = false;

  // Logging.
  int64_t log_interval = 100;
  bool log_params_norm = false, log_num_zeros_in_grad = false;
  int64_t log_avg_skip_iterations = 2, log_avg_reset_interval = 50;
  std::string tensorboard_dir;  // empty: no TensorBoard
  std::string metrics_jsonl_path;
  bool wandb_requested = false;  // wandb_project set and disable_wandb false: said to be unavailable
  int64_t timing_log_level = 0;  // 1: log each phase of every step (synchronising at its end)

  // Profiling (core/trace.h): the ranks in profile_ranks open the profiler's capture window over
  // iterations [profile_step_start, profile_step_end).
  bool profile = false;
  int64_t profile_step_start = 0, profile_step_end = 0;
  std::vector<int64_t> profile_ranks;  // {0} unless set

  // Fault tolerance.
  int64_t nan_guard_max_consecutive = 5;
  int64_t watchdog_minutes = 30;

  // Post-training (docs/POSTTRAIN.md): a post_trainer module reads chat JSONL (data_path, ...)
  // instead of .bin/.idx; LoRA adapts the model; DPO trains on preference pairs.
  bool posttrain = false;              // the experiment's module is post_trainer
  std::string chat_template;           // "" = the tokenizer's own; "none"; or a .jinja file
  bool completion_only_loss = true;
  bool packing = false;
  LoraSpec lora;                       // peft: lora (rank 0 = off)
  bool dpo = false;
  DpoOptions dpo_options;
  bool grpo = false;                   // GRPO on prompts (rl/grpo_objective.h)
  rl::GrpoOptions grpo_options;        // its sampling seed is `seed`
  std::string pretrained_checkpoint;   // weights that start the run when no checkpoint exists yet

  // The resolved config, saved into every checkpoint (config.json).
  nlohmann::json config_json;
};

// Reads the loop's options from a validated config. `cuda_visible` decides device: auto.
// Throws primus::Error naming the key for combinations the loop cannot run (e.g.
// device: cuda in a CPU-only build, fp16 on the CPU path is downgraded with a note).
TrainOptions train_options(const config::Config& cfg, bool cuda_visible);

}  // namespace primus::train

// Training options: run length, data, batch, learning-rate schedule, optimizer, precision,
// parallelism, recompute, checkpoints, logging, Primus-Turbo switches, fault tolerance.
// Defaults are Megatron-LM's argument defaults unless the doc says "Primus".
#include "config/schema_options.h"

namespace primus::config {

std::vector<OptionSpec> training_options() {
  OptionTable t;

  t.group("training");
  t.integer("seed", 1234, "seed of weight init, data order and dropout").non_negative();
  t.opt_integer("train_iters", "iterations to train (exactly one of train_iters, train_samples)").positive();
  t.opt_integer("train_samples", "samples (sequences) to train (exactly one of train_iters, train_samples)").positive();
  t.integer("micro_batch_size", 1, "sequences per forward/backward pass on one GPU").positive();
  t.opt_integer("global_batch_size", "sequences per optimizer step (null: micro_batch_size * data-parallel size)")
      .positive();
  t.numbers("rampup_batch_size", "batch-size ramp-up: start, increment, samples over which to reach the global size");
  t.integer("eval_interval", 1000, "iterations between validation runs").positive();
  t.integer("eval_iters", 100, "validation iterations per run (0: no validation)").non_negative();
  t.opt_integer("exit_interval", "exit after the iteration that is a multiple of this").positive();
  t.opt_integer("exit_duration_in_mins", "exit (after saving) once training ran this many minutes").positive();
  t.flag("exit_signal_handler", false, "on SIGTERM, save a checkpoint and exit");
  t.choice("device", "auto", {"auto", "cpu", "cuda"},
           "Primus: where to train: cuda (bf16/fp16 fast path), cpu (fp32 reference path), auto = cuda when a GPU is visible");

  t.group("data");
  t.strings("data_path",
            "dataset prefixes (.bin/.idx), optionally weighted: \"0.3 a 0.7 b\" or a list; split by `split`");
  t.text("split", "99,1,0", "train,valid,test proportions of data_path");
  t.strings("train_data_path", "dataset prefixes for training only (optionally weighted)");
  t.strings("valid_data_path", "dataset prefixes for validation only");
  t.strings("test_data_path", "dataset prefixes for testing only");
  t.opt_text("data_cache_path", "folder for the dataset index caches (null: no cache; the indices are built at each start)");
  t.flag("mock_data", false, "train on synthetic random tokens instead of data files");
  t.integer("seq_length", 4096, "tokens per training sequence").positive();
  t.opt_choice("tokenizer_type",
               {"HuggingFaceTokenizer", "Llama2Tokenizer", "Llama3Tokenizer", "MixtralTokenizer",
                "DeepSeekV2Tokenizer", "DeepSeekV3Tokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                "GPT2BPETokenizer", "TikTokenizer", "NullTokenizer"},
               "tokenizer family (the model-family names read the model's Hugging Face tokenizer.json; "
               "Llama3Tokenizer also Meta's tiktoken tokenizer.model)");
  t.opt_text("tokenizer_model", "tokenizer file: tokenizer.json (HuggingFace) or tokenizer.model (SentencePiece)");
  t.flag("eod_mask_loss", false, "no loss on end-of-document tokens");
  t.flag("reset_position_ids", false, "restart position ids after each end-of-document token");
  t.flag("reset_attention_mask", false, "no attention across end-of-document tokens");
  t.integer("num_workers", 2, "data-loader worker threads").non_negative();
  t.choice("dataloader_type", "single", {"single", "cyclic", "external"}, "sampler: single pass or cyclic");

  t.group("learning rate");
  t.real("lr", 1e-4, "peak learning rate").non_negative();
  t.real("min_lr", 0.0, "learning rate at the end of the decay").non_negative();
  t.choice("lr_decay_style", "linear", {"constant", "linear", "cosine", "inverse-square-root", "WSD"},
           "decay after warm-up");
  t.integer("lr_warmup_iters", 0, "iterations of linear warm-up from lr_warmup_init to lr").non_negative();
  t.opt_real("lr_warmup_fraction", "warm-up as a fraction of the decay iterations (instead of lr_warmup_iters)")
      .min(0)
      .max(1);
  t.integer("lr_warmup_samples", 0, "warm-up in samples (with train_samples)").non_negative();
  t.real("lr_warmup_init", 0.0, "learning rate at the start of warm-up").non_negative();
  t.opt_integer("lr_decay_iters", "iterations over which lr decays (null: train_iters)").positive();
  t.opt_integer("lr_decay_samples", "samples over which lr decays (null: train_samples)").positive();
  t.choice("lr_wsd_decay_style", "exponential", {"exponential", "linear", "cosine", "minus_sqrt"},
           "shape of the final decay of the WSD schedule");
  t.opt_integer("lr_wsd_decay_iters", "iterations of the final WSD decay").positive();
  t.opt_integer("lr_wsd_decay_samples", "samples of the final WSD decay").positive();
  t.flag("override_opt_param_scheduler", false, "on resume, take the schedule from this config, not the checkpoint");
  t.flag("use_checkpoint_opt_param_scheduler", false, "on resume, take the schedule from the checkpoint");

  t.group("optimizer");
  t.choice("optimizer", "adam", {"adam"}, "Adam with decoupled weight decay (AdamW)");
  t.real("weight_decay", 0.01, "decoupled weight decay (not applied to norms and biases)").non_negative();
  t.opt_real("start_weight_decay", "weight decay at the start of a weight-decay ramp (null: weight_decay)")
      .non_negative();
  t.opt_real("end_weight_decay", "weight decay at the end of the ramp (null: weight_decay)").non_negative();
  t.choice("weight_decay_incr_style", "constant", {"constant", "linear", "cosine"},
           "how weight decay goes from start_weight_decay to end_weight_decay over the run");
  t.real("adam_beta1", 0.9, "Adam first-moment decay").fraction();
  t.real("adam_beta2", 0.999, "Adam second-moment decay").fraction();
  t.real("adam_eps", 1e-8, "Adam epsilon").positive();
  t.real("clip_grad", 1.0, "clip the global gradient L2 norm to this (0: no clipping)").non_negative();

  t.group("mixed precision");
  t.flag("bf16", false, "bf16 weights and activations with fp32 master weights and gradients");
  t.flag("fp16", false, "fp16 weights and activations with loss scaling");
  t.opt_real("loss_scale", "static fp16 loss scale (null: dynamic)").positive();
  t.real("initial_loss_scale", 4294967296.0, "first dynamic loss scale").positive();
  t.real("min_loss_scale", 1.0, "smallest dynamic loss scale").positive();
  t.real("loss_scale_window", 1000.0, "iterations without overflow before the loss scale grows").positive();
  t.integer("hysteresis", 2, "overflows tolerated before the loss scale shrinks").positive();
  t.opt_choice("fp8", {"hybrid", "e4m3"}, "fp8 GEMMs: e4m3 everywhere, or hybrid (e4m3 forward, e5m2 gradients)");
  t.choice("fp8_recipe", "delayed", {"delayed", "tensorwise", "blockwise"}, "fp8 scaling recipe");
  t.integer("fp8_margin", 0, "fp8 scaling-factor margin (powers of two)").non_negative();
  t.integer("fp8_amax_history_len", 1, "amax history length of delayed scaling").positive();
  t.choice("fp8_amax_compute_algo", "most_recent", {"most_recent", "max"}, "amax from the history");

  t.group("parallelism");
  t.integer("tensor_model_parallel_size", 1, "tensor-parallel degree (splits heads and MLP columns)").positive();
  t.integer("pipeline_model_parallel_size", 1, "pipeline-parallel degree (splits layers)").positive();
  t.opt_integer("num_layers_per_virtual_pipeline_stage", "layers per virtual stage of the interleaved schedule")
      .positive();
  t.opt_integer("decoder_first_pipeline_num_layers",
                "layers on the first pipeline stage when they do not split evenly (null: an even share)")
      .positive();
  t.opt_integer("decoder_last_pipeline_num_layers",
                "layers on the last pipeline stage when they do not split evenly (null: an even share)")
      .positive();
  t.integer("context_parallel_size", 1, "context-parallel degree (splits the sequence)").positive();
  t.choice("cp_comm_type", "p2p", {"p2p"},
           "how context parallel exchanges K/V: p2p, the ring of send/recv (Megatron's default; its a2a, allgather "
           "and a2a+p2p are not built)");
  t.integer("expert_model_parallel_size", 1, "expert-parallel degree (splits the experts)").positive();
  t.opt_integer("expert_tensor_parallel_size", "tensor-parallel degree inside experts (null: tensor_model_parallel_size)")
      .positive();
  t.flag("sequence_parallel", false, "shard norms, dropout and residuals along the sequence across TP ranks");
  t.flag("use_distributed_optimizer", false, "shard fp32 master weights and Adam states across data-parallel ranks");
  t.flag("overlap_grad_reduce", false, "overlap the gradient reduce with the backward pass");
  t.flag("grad_reduce_in_bf16", false,
         "hold and reduce the projections' weight gradients (attention, MLP, experts) in bf16 instead of fp32: "
         "2 bytes per parameter less memory and traffic; each micro-batch's gradient is rounded to bf16 as "
         "PyTorch autocast's are, and micro-batches accumulate in bf16 (bf16 on CUDA only)");
  t.flag("overlap_param_gather", false, "overlap the parameter all-gather with the forward pass");
  // Megatron's precision-aware optimizer (its TE FusedAdam options).
  t.flag("use_precision_aware_optimizer", false,
         "hold Adam's state in the dtypes of exp_avg_dtype / exp_avg_sq_dtype / main_params_dtype and, for bf16 "
         "weights, the fp32 master as the weight plus a 16-bit remainder (store_param_remainders); the update is "
         "computed in fp32 either way");
  t.choice("exp_avg_dtype", "fp32", {"fp32", "bf16", "fp16", "fp8"},
           "dtype of Adam's first moment under use_precision_aware_optimizer (fp32 or bf16 here)");
  t.choice("exp_avg_sq_dtype", "fp32", {"fp32", "bf16", "fp16", "fp8"},
           "dtype of Adam's second moment under use_precision_aware_optimizer (fp32 or bf16 here)");
  t.choice("main_params_dtype", "fp32", {"fp32", "fp16"},
           "dtype of the master weights under use_precision_aware_optimizer (fp32 here)");
  t.choice("main_grads_dtype", "fp32", {"fp32", "bf16"},
           "dtype of the gradients the optimizer reads under use_precision_aware_optimizer (fp32 here; "
           "grad_reduce_in_bf16 holds the projections' gradients in bf16)");
  t.flag("store_param_remainders", true,
         "under use_precision_aware_optimizer with bf16 weights: hold each fp32 master as its bf16 weight plus "
         "the 16 low bits (2 bytes per parameter instead of 4, the same fp32 value bit for bit)");
  t.opt_integer("ddp_bucket_size", "elements per data-parallel gradient bucket (default 40M)");
  t.flag("gradient_accumulation_fusion", true, "accumulate weight gradients into fp32 main grads in the GEMM");
  t.integer("distributed_timeout_minutes", 10,
            "timeout of any single collective or point-to-point wait: past it the job is aborted with a message "
            "naming the operation and the communicator")
      .positive();

  t.group("recompute");
  t.opt_choice("recompute_granularity", {"selective", "full"},
               "activation recompute: selective (core attention) or full layers (null: none)");
  t.opt_choice("recompute_method", {"uniform", "block"},
               "full recompute: uniform chunks of recompute_num_layers, or the first recompute_num_layers per stage");
  t.opt_integer("recompute_num_layers", "layers per recompute chunk (uniform) or recomputed per stage (block)")
      .positive();

  t.group("checkpointing");
  t.opt_text("save", "folder to save checkpoints to (null: no checkpoints)");
  t.opt_text("load", "folder to load a checkpoint from (null: start from scratch)");
  t.opt_integer("save_interval", "iterations between checkpoints").positive();
  t.opt_text("pretrained_checkpoint", "checkpoint whose weights start a finetune");
  t.flag("auto_continue_train", false, "Primus: resume from the latest checkpoint under `save` when there is one");
  t.flag("finetune", false, "load only the weights: reset the iteration, optimizer and RNG");
  t.flag("no_load_optim", false, "do not load the optimizer state");
  t.flag("no_load_rng", false, "do not load the RNG state");
  t.flag("no_save_optim", false, "do not save the optimizer state");
  t.flag("no_save_rng", false, "do not save the RNG state");
  t.flag("disable_last_saving", false, "Primus: no checkpoint at the end of training");
  t.choice("ckpt_format", "torch_dist", {"torch", "torch_dist", "safetensors"}, "checkpoint format");
  t.flag("async_save", false, "write checkpoints in the background");

  t.group("logging");
  t.integer("log_interval", 100, "iterations between log lines").positive();
  t.flag("log_throughput", false, "log tokens/s and TFLOP/s per GPU");
  t.flag("log_num_zeros_in_grad", false, "log the number of zero gradient elements (a pass over every gradient)");
  t.flag("log_params_norm", false, "log the L2 norm of all parameters");
  t.flag("log_timers_to_tensorboard", false, "write timers to TensorBoard");
  t.opt_text("tensorboard_dir", "TensorBoard folder (null: <workspace>/<work_group>/<user_name>/<exp_name>/tensorboard)");
  t.integer("tensorboard_log_interval", 1, "iterations between TensorBoard writes").positive();
  t.flag("disable_tensorboard", false, "Primus: write no TensorBoard events");
  t.opt_text("wandb_project", "Weights & Biases project");
  t.opt_text("wandb_exp_name", "Weights & Biases run name (null: exp_name)");
  t.opt_text("wandb_save_dir", "Weights & Biases local folder");
  t.flag("disable_wandb", true, "Primus: no Weights & Biases logging");
  t.choice("stderr_sink_level", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"}, "Primus: lowest level printed to stderr");
  t.integer("log_avg_skip_iterations", 2, "Primus: first iterations left out of the running averages (warm-up)")
      .non_negative();
  t.integer("log_avg_reset_interval", 50, "Primus: iterations after which the running averages restart").positive();

  t.group("primus turbo");
  t.flag("enable_primus_turbo", false, "Primus: use the Primus-Turbo fused kernels where switched on below");
  t.flag("use_turbo_attention", false, "Primus: Turbo flash attention");
  t.flag("use_turbo_gemm", false, "Primus: Turbo (tuned cuBLASLt) GEMMs for linear layers");
  t.flag("use_turbo_grouped_gemm", false, "Primus: Turbo grouped GEMM for MoE experts");
  t.flag("use_turbo_grouped_mlp", false, "Primus: older name of use_turbo_grouped_gemm (either one switches it on)");
  t.flag("use_turbo_deepep", false, "Primus: DeepEP-style fused MoE token dispatch");
  t.choice("cross_entropy_fusion_impl", "native", {"native", "te"}, "fused cross-entropy implementation");
  t.flag("cross_entropy_loss_fusion", false, "fuse the output-layer softmax and cross-entropy (no fp32 logits copy)");
  t.choice("attention_backend", "auto", {"auto", "fused", "flash", "unfused", "local"},
           "CUDA attention kernel: auto = the best the Turbo switches allow (enable_primus_turbo + "
           "use_turbo_attention: cuDNN fused SDPA with flash fallback; off: the plain kernel); with Turbo attention "
           "on, fused = cuDNN only (a shape it refuses is an error), flash = the flash kernel; with it off, "
           "unfused/local = the plain kernel (docs/TRAINING.md); the CPU path takes auto, unfused or local");
  t.integer("logits_chunk_mb", 2048,
            "Primus: MiB of logits the output layer materialises at once (chunks of 1024 to 4096 rows; fewer rows "
            "when a chunk would exceed this)")
      .positive();
  t.choice("cudnn_attention_padding_workaround", "auto", {"auto", "on", "off"},
           "Primus: cuDNN attention backward with an explicit full-length padding mask and GEMM size overrides "
           "(cuDNN <= 9.15 needs it when the sequence length % 128 != 0, as the cuDNN frontend does): auto = exactly then");
  t.choice("cudnn_attention_mask_index", "int32", {"int32", "float"},
           "Primus: data type of the row/column indices of cuDNN attention's causal mask (int32, as the current "
           "cuDNN frontend does; float, as older frontends did)");

  t.group("fault tolerance");
  t.integer("nan_guard_max_consecutive", 5,
            "Primus: skip steps with a non-finite loss or grad norm; stop after this many in a row (0: off)")
      .non_negative();
  t.integer("watchdog_minutes", 30, "Primus: abort with a report when no iteration finishes for this long (0: off)")
      .non_negative();

  t.group("post-training");
  t.opt_text("chat_template",
             "Primus: chat data's template: null = the tokenizer's own (tokenizer_config.json beside tokenizer_model), "
             "a .jinja file, or none (prompt + completion as plain text)");
  t.flag("completion_only_loss", true,
         "post-training: loss only on assistant turns / completions (false: on every token but padding)");
  t.flag("packing", false, "post-training: pack several conversations into each sequence (first-fit decreasing; "
         "attention and positions restart per conversation)");
  t.choice("peft", "none", {"none", "lora"}, "parameter-efficient fine-tuning: lora trains low-rank adapters only");
  t.integer("lora_dim", 16, "LoRA rank r").positive();
  t.real("lora_alpha", 32.0, "LoRA scaling numerator: adapters scale by lora_alpha / lora_dim").positive();
  t.real("lora_dropout", 0.0,
         "LoRA dropout probability on the adapters' input in training (PEFT's lora_dropout: y = W x + "
         "(alpha/r) B A dropout(x), kept values scaled by 1/(1-p)); seeded masks, the same under any data-parallel "
         "split and on resume; not with grpo").fraction();
  t.strings("lora_target_modules",
            "linears LoRA adapts (null: linear_qkv, linear_proj, linear_fc1, linear_fc2)");
  t.flag("dpo", false, "post-training: direct preference optimisation on prompt/chosen/rejected data");
  t.real("dpo_beta", 0.1, "DPO's beta (KL strength)").positive();
  t.choice("dpo_loss_type", "sigmoid", {"sigmoid", "hinge", "ipo", "robust"}, "DPO loss (TRL's formulas)");
  t.real("dpo_label_smoothing", 0.0, "DPO label smoothing epsilon (sigmoid: cDPO, robust)").min(0).max(0.5, true);
  t.flag("grpo", false, "post-training: GRPO reinforcement learning on prompts with reward functions (docs/RL.md)");
  t.integer("num_generations", 8, "GRPO: completions sampled per prompt (the group)").at_least(2);
  t.integer("max_prompt_length", 512, "GRPO: longest prompt in tokens (a longer one is an error)").positive();
  t.integer("max_completion_length", 256, "GRPO: most new tokens per completion").positive();
  t.real("temperature", 1.0, "GRPO: sampling temperature of the rollouts").positive();
  t.real("top_p", 1.0, "GRPO: nucleus sampling of the rollouts (1 = off)").positive().max(1);
  t.integer("top_k", 0, "GRPO: top-k sampling of the rollouts (0 = off)").non_negative();
  t.strings("stop_strings", "GRPO: texts that end a completion (besides the tokenizer's end tokens)");
  t.integer("num_iterations", 1, "GRPO: optimizer steps per generation of rollouts (mu)").positive();
  t.real("grpo_beta", 0.0, "GRPO: weight of the k3 KL to the reference model (0: no reference model)").non_negative();
  t.real("grpo_epsilon", 0.2, "GRPO: lower clip of the ratio (1 - epsilon)").positive().max(1, true);
  t.opt_real("grpo_epsilon_high", "GRPO: upper clip of the ratio (1 + epsilon_high); null = grpo_epsilon (DAPO: 0.28)")
      .positive();
  t.choice("grpo_loss_type", "dapo", {"grpo", "dapo", "dr_grpo"}, "GRPO: loss aggregation (TRL's loss_type)");
  t.choice("scale_rewards", "group", {"group", "batch", "none"}, "GRPO: advantages divided by the std of the group, "
           "of the batch, or not at all");
  t.strings("reward_funcs", "GRPO: reward functions (accuracy, format, overlong, command); null = accuracy");
  t.numbers("reward_weights", "GRPO: weight of each reward function (null = 1 each)");
  t.text("reward_answer_key", "answer", "GRPO accuracy reward: the prompt line's key holding the answer");
  t.opt_text("reward_answer_regex", "GRPO accuracy reward: regex whose first group extracts the answer from the "
             "completion (null = the whole completion)");
  t.opt_text("reward_format_regex", "GRPO format reward: regex the completion must contain");
  t.integer("overlong_buffer_length", 0, "GRPO overlong reward: DAPO's soft punishment buffer, in tokens")
      .non_negative();
  t.opt_text("reward_command", "GRPO command reward: a process scoring completions over JSON lines (docs/RL.md)");
  t.opt_text("generation_kv_cache_memory",
             "GRPO: memory of the rollouts' KV cache, e.g. 4GiB or 512MiB, allocated once and reused every round; "
             "as many completions decode together as their slots fit (continuous batching). null = one slot per "
             "completion of the rank's round");

  t.group("profiling");
  t.flag("profile", false,
         "CUDA: cudaProfilerStart at profile_step_start and cudaProfilerStop at profile_step_end, for a profiler "
         "whose capture is tied to the profiler API (nsys --capture-range=cudaProfilerApi, ncu --profile-from-start "
         "off); NVTX ranges name the blocks (docs/PERFORMANCE.md)");
  t.integer("profile_step_start", 10, "first profiled iteration").non_negative();
  t.integer("profile_step_end", 12, "iteration after the last profiled one").non_negative();
  t.numbers("profile_ranks", "ranks that open the profiler's capture window (null: rank 0)");
  t.integer("timing_log_level", 0,
            "0: the iteration time only; 1: also each phase of the step (data, forward-backward, grad reduce, "
            "optimizer), the device synchronised at each phase's end (costs a little throughput)")
      .non_negative();

  return t.take();
}

}  // namespace primus::config

#include "train/trainer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/trace.h"
#include "data/gpt_dataset.h"
#include "data/sft/sft_dataset.h"
#include "data/sft/stop_tokens.h"
#include "data/tokenizer/tokenizer.h"
#include "model/decoder.h"
#include "model/decoder_spec.h"
#include "model/lora_weights.h"
#include "model/logits_chunk.h"
#include "parallel/gather_to_root.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "ops/cpu/openblas_kernels.h"
#include "ops/ops.h"
#include "parallel/communicator.h"
#include "parallel/context_parallel.h"
#include "parallel/launch_info.h"
#include "parallel/parallel_dims.h"
#include "parallel/process_groups.h"
#include "parallel/tensor_parallel.h"
#include "parallel/world.h"
#include "rl/grpo_objective.h"
#include "checkpoint/checkpoint.h"
#include "train/data_parallel_optimizer.h"
#include "train/dpo_objective.h"
#include "train/logging.h"
#include "train/loss_scaler.h"
#include "metrics/metrics.h"
#include "train/metrics_reporter.h"
#include "pipeline/pipelined_model.h"
#include "train/signals.h"
#include "train/watchdog.h"

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime_api.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/moe.h"
#endif

namespace primus::train {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Bf16: return "bf16 (fp32 master weights and gradients)";
    case Precision::Fp16: return "fp16 (fp32 master weights, loss scaling)";
    case Precision::Fp32: return "fp32";
  }
  return "?";
}

DType param_dtype(Precision p) {
  switch (p) {
    case Precision::Bf16: return DType::BF16;
    case Precision::Fp16: return DType::F16;
    case Precision::Fp32: return DType::F32;
  }
  return DType::F32;
}

// Loss of one pass over some micro-batches, before the data-parallel reduction.
struct LossSums {
  double loss = 0, tokens = 0;
  std::vector<double> mtp_loss, mtp_tokens;  // per multi-token-prediction depth
};

// Everything one run owns, built in the order the dependencies need.
class Run {
 public:
  Run(const TrainOptions& o, const TrainerHooks& hooks);
  TrainResult train();

 private:
  void setup_data();
  void setup_posttrain_data(const data::DataConfig& dc);
  void restore();
  LossSums train_step(float loss_weight_numerator, std::vector<data::Batch>& batches);
  // Token-mean loss of `iterations` global batches from `loader`, over all ranks, as the named
  // values the reports show ("lm loss"; DPO: "dpo loss" and the rewards first). The first one is
  // the run's validation loss.
  std::vector<std::pair<std::string, double>> evaluate(data::BatchLoader& loader, int64_t iterations);
  void save(int64_t iteration);
  // The optimizer's live state as NamedTensors carrying their parameter's shard spec.
  std::vector<std::unique_ptr<NamedTensor>> optimizer_state_views() const;
  void log_header();
  // Where a non-finite value first shows up, in the model's forward order: the first
  // weight that is not finite, else the first gradient. "" when everything is finite.
  std::string first_non_finite();
  // Memory numbers for TensorBoard/JSONL (Megatron-style tag names).
  std::vector<std::pair<std::string, double>> memory_scalars() const;
  // After each step of an MoE model: the MoE layers' statistics summed over the ranks, the
  // expert-bias update, and what the log reports (averages over the MoE layers).
  struct MoeReport {
    double load_balancing_loss = 0, z_loss = 0;  // per layer and micro-batch, averaged
    double expert_load = 0;                      // max over layers of (most tokens on an expert / mean)
    std::vector<std::pair<std::string, double>> per_layer;  // TensorBoard / JSONL
  };
  std::optional<MoeReport> finish_moe_step();
  // What a checkpoint holds of the model: the parameters, then the buffers.
  std::vector<NamedTensor*> checkpoint_tensors() const {
    std::vector<NamedTensor*> all = params_;
    all.insert(all.end(), buffers_.begin(), buffers_.end());
    return all;
  }

  // First, so that a SIGTERM during set-up (data indexing, checkpoint loading) already
  // becomes "stop after the first iteration and save" instead of killing the process.
  StopSignals signals_;
  Clock::time_point started_ = Clock::now();  // before the device context: set-up time counts it
  const TrainOptions& o_;
  const TrainerHooks& hooks_;
  parallel::LaunchInfo launch_;
  Logger logger_;
  std::unique_ptr<parallel::Communicator> world_;
  std::unique_ptr<parallel::ProcessGroups> groups_;
  parallel::Communicator* dp_ = nullptr;  // where gradients and the model's loss sums are summed (dp x cp)
  // Where quantities of whole micro-batches are summed (the data's token counts, DPO's
  // statistics): dp, as every cp rank of a dp rank holds the same rows (PipelinedModel cuts them).
  parallel::Communicator* batch_dp_ = nullptr;
  int dp_rank_ = 0, dp_size_ = 1, tp_size_ = 1, pp_size_ = 1, ep_size_ = 1;
  ops::Context ctx_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  data::DatasetSplits datasets_;
  std::unique_ptr<pipeline::PipelinedModel> model_;
  // overlap_grad_reduce: how often each parameter's grad was completed this step (its
  // bucket may start reducing when that reaches the number of micro-batches), and the
  // params whose grads change after backward (tied-embedding sums, sequence-parallel
  // partial sums) that therefore wait for reduce_grads().
  std::unordered_map<const NamedTensor*, int64_t> grad_completions_;
  std::unordered_set<const NamedTensor*> no_early_reduce_;
  std::vector<NamedTensor*> params_;
  std::vector<NamedTensor*> buffers_;  // saved and loaded with the model, not optimised (the expert bias)
  std::unique_ptr<DataParallelOptimizer> optimizer_;
  std::unique_ptr<DpoObjective> dpo_;  // dpo: true
  std::unique_ptr<rl::GrpoObjective> grpo_;  // grpo: true
  std::vector<rl::RlPrompt> grpo_prompts_;   // until grpo_ takes them
  std::vector<int32_t> grpo_stop_ids_;
  std::unique_ptr<pipeline::PipelinedModel> reference_;  // grpo_beta > 0: the frozen reference model
  void setup_grpo();
  // GRPO's rollouts read the policy's whole weights: this rank's own tensors when it holds them
  // all (tp 1, ep 1); else the full tensors gathered over tp / ep (a collective of the group)
  // and copied onto the device, so every tensor-parallel rank samples the same rollouts.
  NamedTensorList rollout_weights();
  std::unique_ptr<LrSchedule> schedule_;
  LossScaler scaler_;
  int64_t num_micro_batches_ = 1;
  std::string setup_timing_;
  std::string data_summary_;  // post-training: examples, tokens, packing efficiency
  std::string kernels_;  // which kernels the switches picked, for the log header  // "world 0.1 s | data 0.2 s | ...": where set-up time went

  // Position of the run (restored on resume).
  int64_t iteration_ = 0;
  int64_t consumed_train_ = 0, consumed_valid_ = 0;
  int64_t tokens_consumed_ = 0;

  std::unique_ptr<checkpoint::CheckpointWriter> writer_;
  std::optional<int64_t> last_saved_;
};

ops::Context make_context(const TrainOptions& o, const parallel::LaunchInfo& launch) {
  if (o.device == Device::CPU) return ops::Context::cpu();
  return ops::Context::cuda(launch.local_rank);
}

Run::Run(const TrainOptions& o, const TrainerHooks& hooks)
    : o_(o),
      hooks_(hooks),
      launch_(parallel::detect_launch()),
      logger_(LoggerOptions{launch_.rank, launch_.world_size, o.stderr_sink_level, o.log_dir, true}),
      ctx_(make_context(o, launch_)) {
  PRIMUS_CHECK(o.context_parallel == 1 || !o.grpo,
               "context_parallel_size = {} with grpo: true is not supported (the rollouts' generation runs whole "
               "sequences on each rank); set context_parallel_size: 1", o.context_parallel);
  PRIMUS_CHECK(o.context_parallel == 1 ||
                   !(o.posttrain ? o.packing : o.data.reset_position_ids || o.data.reset_attention_mask),
               "context_parallel_size = {}: packed rows (reset_position_ids / reset_attention_mask, or post-training "
               "packing) are not supported with context parallelism; set {} or context_parallel_size: 1",
               o.context_parallel, o.posttrain ? "packing: false" : "reset_position_ids and reset_attention_mask false");
  parallel::WorldOptions wo;
  wo.device = o.device;
  wo.cuda_device = launch_.local_rank;
  wo.comm.timeout = std::chrono::minutes(o.distributed_timeout_minutes);
  auto lap = [this, t = Clock::now()](const char* what) mutable {
    setup_timing_ += fmt::format("{}{} {:.2f} s", setup_timing_.empty() ? "" : " | ", what, seconds_since(t));
    t = Clock::now();
  };
  world_ = parallel::create_world_communicator(launch_, wo);
  parallel::ParallelSizes sizes;
  sizes.tp = o.tensor_parallel;
  sizes.pp = o.pipeline_parallel;
  sizes.ep = o.expert_parallel;
  sizes.cp = o.context_parallel;
  const parallel::ParallelDims dims = parallel::ParallelDims::create(world_->size(), sizes);
  check_parallel_layout(o.model, dims,
                        {o.seq_length, o.sequence_parallel, o.num_layers_per_virtual_pipeline_stage,
                         o.global_batch_size, o.micro_batch_size, o.decoder_first_pipeline_num_layers,
                         o.decoder_last_pipeline_num_layers});
  groups_ = std::make_unique<parallel::ProcessGroups>(*world_, dims);
  // Context parallel: each cp rank has its share of every sequence, so the model's losses and the
  // gradients are summed over data x context parallel; the whole batches' counts over dp.
  dp_ = dims.cp() > 1 ? &groups_->dp_cp() : &groups_->dp();
  batch_dp_ = &groups_->dp();
  dp_rank_ = groups_->coords().dp;
  dp_size_ = dims.dp();
  tp_size_ = dims.tp();
  pp_size_ = dims.pp();
  ep_size_ = dims.ep();
  num_micro_batches_ = o.global_batch_size / (o.micro_batch_size * dp_size_);  // divides: check_parallel_layout
  if (o.precision == Precision::Fp16) scaler_ = LossScaler(o.loss_scale);

  lap("world and groups");
  setup_data();
  lap("data");

  DecoderOptions lo;
  lo.param_dtype = param_dtype(o.precision);
  lo.linear_grad_dtype = o.grad_reduce_in_bf16 ? DType::BF16 : DType::F32;
  lo.seed = o.seed;
  lo.fp8 = o.fp8;
  if (o.fp8 && o.device == Device::CUDA) {
    // Every FP8 GEMM has the micro-batch's token rows as a dimension (the weight gradient's inner one).
    const int64_t rows = o.micro_batch_size * o.seq_length / std::max(1, o.context_parallel);
    PRIMUS_CHECK(rows % 16 == 0,
                 "fp8: micro_batch_size {} x seq_length {} / context_parallel_size {} = {} token rows per "
                 "micro-batch, not a multiple of 16 (FP8 GEMMs need every dimension a multiple of 16); change "
                 "micro_batch_size or seq_length, or remove fp8",
                 o.micro_batch_size, o.seq_length, std::max(1, o.context_parallel), rows);
  }
  lo.recompute = parse_recompute_granularity(o.recompute_granularity);
  lo.recompute_num_layers = o.recompute_num_layers;
  lo.fused_cross_entropy = o.cross_entropy_loss_fusion;
  kernels_ = fmt::format("cross-entropy {}", o.cross_entropy_loss_fusion ? "fused (loss + gradient in one pass)"
                                                                          : "plain (cross_entropy_loss_fusion off)");
  if (o.device == Device::CPU && *ops::cpu::openblas_kernels() != '\0')
    kernels_ += fmt::format(" | CPU GEMM: OpenBLAS {} kernels", ops::cpu::openblas_kernels());
#ifdef PRIMUS_WITH_CUDA
  // The attention kernel train_options() resolved from attention_backend and the Turbo switches
  // (Turbo attention = cuDNN's fused SDPA with the Turbo flash kernels as fallback; off = the plain
  // kernel), and cuDNN attention's two workarounds.
  if (auto* cuda_backend = dynamic_cast<cuda::CudaBackend*>(&ctx_.backend())) {
    switch (o.attention) {
      case AttentionImpl::CudnnWithFlashFallback: cuda_backend->set_attention_kernel(cuda::AttentionKernel::Auto); break;
      case AttentionImpl::Cudnn: cuda_backend->set_attention_kernel(cuda::AttentionKernel::Cudnn); break;
      case AttentionImpl::Flash: cuda_backend->set_attention_kernel(cuda::AttentionKernel::Flash); break;
      case AttentionImpl::Plain: cuda_backend->set_attention_kernel(cuda::AttentionKernel::Simple); break;
    }
    using Padding = cuda::CudnnAttentionOptions::PaddingWorkaround;
    cuda::CudnnAttentionOptions cudnn;
    cudnn.padding_workaround = o.cudnn_attention_padding_workaround == "on"    ? Padding::On
                               : o.cudnn_attention_padding_workaround == "off" ? Padding::Off
                                                                                : Padding::Auto;
    cudnn.mask_index_int32 = o.cudnn_attention_mask_index_int32;
    cuda_backend->set_cudnn_attention_options(cudnn);
    kernels_ += fmt::format(" | attention: {} (attention_backend {}, Turbo attention {})",
                            attention_impl_description(o.attention), o.attention_backend,
                            o.enable_primus_turbo && o.use_turbo_attention ? "on" : "off");
    if (o.model.num_experts > 0) {
      cuda::set_grouped_gemm_impl(o.moe_grouped_gemm ? cuda::GroupedGemmImpl::Lanes : cuda::GroupedGemmImpl::Loop);
      kernels_ += o.moe_grouped_gemm
                      ? " | experts: grouped GEMM (cuBLASLt per expert, concurrent over 4 streams; moe_grouped_gemm)"
                      : " | experts: one cuBLASLt GEMM per expert in sequence (moe_grouped_gemm off)";
    }
  }
#endif
  if (tp_size_ > 1) lo.tensor_parallel = {&groups_->tp(), o.sequence_parallel};
  if (ep_size_ > 1) lo.expert_parallel = {&groups_->ep(), o.moe_token_dispatcher};
  if (dims.cp() > 1) lo.context_parallel = {&groups_->cp()};
  lo.lora = o.lora;
  // Logits are materialised a chunk of rows at a time (model/logits_chunk.h): 4096 rows, 1 GiB of
  // bf16 logits at a 128K vocabulary.
  lo.logits_chunk_rows = logits_chunk_rows(o.model.padded_vocab_size / tp_size_,
                                           static_cast<int64_t>(dtype_size(lo.param_dtype)), o.logits_chunk_mb);
  // overlap_grad_reduce: a parameter's bucket may start reducing once its grad is final,
  // i.e. after the last micro-batch's backward through it.
  if (o.overlap_grad_reduce)
    lo.grad_ready = [this](NamedTensor& p) {
      if (++grad_completions_[&p] == num_micro_batches_ && optimizer_ && !no_early_reduce_.count(&p))
        optimizer_->grad_ready(p);
    };
  // overlap_param_gather: the forward waits for a parameter's all-gather only when it first reads it.
  if (o.overlap_param_gather && o.use_distributed_optimizer)
    lo.param_needed = [this](const NamedTensor& p) {
      if (optimizer_) optimizer_->param_needed(p);
    };
  pipeline::PipelineOptions po;
  if (pp_size_ > 1) {
    po.pp = &groups_->pp();
    po.virtual_stages = o.num_layers_per_virtual_pipeline_stage > 0
                            ? static_cast<int>(o.model.num_layers / pp_size_ / o.num_layers_per_virtual_pipeline_stage)
                            : 1;
    po.split = {o.decoder_first_pipeline_num_layers, o.decoder_last_pipeline_num_layers};
  }
  PRIMUS_CHECK(po.virtual_stages == 1 || num_micro_batches_ % pp_size_ == 0,
               "the interleaved pipeline schedule (num_layers_per_virtual_pipeline_stage = {}) needs the number of "
               "micro-batches per step ({} = global_batch_size {} / (micro_batch_size {} x data-parallel size {})) to "
               "be a multiple of pipeline_model_parallel_size = {}; change global_batch_size or micro_batch_size",
               o.num_layers_per_virtual_pipeline_stage, num_micro_batches_, o.global_batch_size, o.micro_batch_size,
               dp_size_, pp_size_);
  model_ = std::make_unique<pipeline::PipelinedModel>(o.model, ctx_, lo, po);
  params_ = model_->parameters();
  buffers_ = model_->buffers();
  const std::vector<NamedTensor*> tied_copies = model_->tied_embedding_copies();
  for (NamedTensor* p : tied_copies) no_early_reduce_.insert(p);
  if (!tied_copies.empty() || (pp_size_ > 1 && o.model.last_stage_reads_embedding()))
    for (NamedTensor* p : params_)
      if (p->name == "embedding.word_embeddings.weight") no_early_reduce_.insert(p);
  for (const auto& chunk : model_->chunks())
    for (NamedTensor* p : chunk->sequence_parallel_partial_grads()) no_early_reduce_.insert(p);
  lap("model init");
  // Gradients (and, with the distributed optimizer, weights) move into flat bucketed buffers;
  // clipping sees the norm of the whole model, not of this rank's shards.
  DataParallelOptions dpo;
  dpo.overlap_grad_reduce = o.overlap_grad_reduce;
  dpo.distributed_optimizer = o.use_distributed_optimizer;
  dpo.overlap_param_gather = o.overlap_param_gather && o.use_distributed_optimizer;
  dpo.bucket_size_bytes = o.ddp_bucket_size * static_cast<int64_t>(sizeof(float));
  dpo.excluded_from_norm.assign(tied_copies.begin(), tied_copies.end());  // counted on the first stage
  parallel::Communicator* model_parallel = groups_->mp().size() > 1 ? &groups_->mp() : nullptr;
  // Expert parallel: the routed experts' grads are summed over the ranks holding the same experts.
  ExpertReduceGroups experts;
  if (ep_size_ > 1) experts = {&groups_->expert_dp(), &groups_->ep()};
  optimizer_ = std::make_unique<DataParallelOptimizer>(ctx_, params_, *dp_, model_parallel, groups_->coords().tp,
                                                       o.adam, dpo, experts);
  if (o.adam.exp_avg_dtype != DType::F32 || o.adam.exp_avg_sq_dtype != DType::F32 || o.adam.store_param_remainders)
    logger_.info("optimizer: AdamW, precision-aware: exp_avg {}, exp_avg_sq {}, fp32 masters{}; {:.2f} GB of state "
                 "on this rank",
                 dtype_name(o.adam.exp_avg_dtype), dtype_name(o.adam.exp_avg_sq_dtype),
                 o.adam.store_param_remainders && lo.param_dtype == DType::BF16
                     ? " held as the bf16 weights + 16-bit remainders (store_param_remainders)"
                     : "",
                 static_cast<double>(optimizer_->state_bytes()) / 1e9);
  schedule_ = std::make_unique<LrSchedule>(megatron_schedule(o.schedule));
  lap("optimizer");

  restore();
  lap("checkpoint load");
  if (o.dpo) {
    dpo_ = std::make_unique<DpoObjective>(o.dpo_options, o.global_batch_size);
    const std::string line = dpo_->prepare(*model_, *datasets_.train, datasets_.valid.get(), o.micro_batch_size, *batch_dp_,
                                           dp_rank_, dp_size_, o.save, launch_.rank == 0, iteration_ > 0);
    logger_.info("{}", line);
    lap("dpo reference");
  }
  if (o.grpo) {
    setup_grpo();
    lap("grpo");
  }
  if (!o.save.empty() && launch_.rank == 0)
    writer_ = std::make_unique<checkpoint::CheckpointWriter>(o.save, checkpoint::CheckpointWriterOptions{o.async_save, 0, {}});
}

void Run::setup_data() {
  data::DataConfig dc = o_.data;
  // Real data needs the tokenizer for its end-of-document id; mock data does not read it.
  if (!dc.mock_data && !o_.tokenizer_type.empty()) {
    tokenizer_ = data::make_tokenizer(o_.tokenizer_type, o_.tokenizer_model, o_.model.vocab_size);
    if (tokenizer_->vocab_size() > o_.model.padded_vocab_size) {
      const int64_t V = o_.model.vocab_size, P = o_.model.padded_vocab_size;
      // NullTokenizer's ids are 0..vocab_size-1 plus end-of-document = vocab_size: raising vocab_size
      // also raises the id it needs, so only the padding can make room.
      if (o_.tokenizer_type == "NullTokenizer") {
        // The smallest make_vocab_size_divisible_by whose padding leaves a row past vocab_size.
        int64_t k = 2;
        while ((V % (k * o_.tensor_parallel)) == 0) ++k;
        throw Error(fmt::format(
            "NullTokenizer with vocab_size {} uses id {} as end-of-document, so the model needs {} rows, but its "
            "vocabulary holds {} (vocab_size rounded up to a multiple of make_vocab_size_divisible_by x "
            "tensor_model_parallel_size, which here leaves no padding row; raising vocab_size raises the "
            "end-of-document id with it). Set make_vocab_size_divisible_by to a value k with vocab_size not a "
            "multiple of k x tensor_model_parallel_size (e.g. {}), as Megatron pads vocab_size + 1",
            V, V, V + 1, P, k));
      }
      throw Error(fmt::format("tokenizer {} has {} ids but the model's vocabulary holds {} (vocab_size {} padded); "
                              "set vocab_size >= {} in the model config",
                              o_.tokenizer_model, tokenizer_->vocab_size(), P, V, tokenizer_->vocab_size()));
    }
    dc.eod_token = std::max<int32_t>(0, tokenizer_->eod());
    dc.pad_token = tokenizer_->pad();
  }
  if (o_.posttrain) {
    setup_posttrain_data(dc);
    return;
  }
  const int64_t gbs = o_.global_batch_size;
  const int64_t train_samples = o_.train_iters * gbs;
  const int64_t evals = o_.eval_iters > 0 ? o_.train_iters / o_.eval_interval + 1 : 0;
  datasets_ = data::build_datasets(dc, train_samples, evals * o_.eval_iters * gbs, o_.eval_iters * gbs);
  if (!datasets_.train) throw Error("no training dataset was built: " + data::explain_empty_train_split(dc));
}

// Post-training: chat JSONL (data_path / train_data_path / valid_data_path) through the chat
// template into cached token files (data/sft/). Rank 0 tokenizes first and writes the cache;
// the other ranks then load it.
void Run::setup_posttrain_data(const data::DataConfig& dc) {
  PRIMUS_CHECK(tokenizer_ != nullptr, "post-training reads chat data and needs tokenizer_type and tokenizer_model "
               "(a HuggingFace tokenizer.json with its tokenizer_config.json for the chat template)");
  PRIMUS_CHECK(!dc.mock_data, "mock_data: post-training reads chat JSONL (data_path); remove mock_data");
  PRIMUS_CHECK(dc.test_data_path.empty(), "test_data_path: post-training has train and valid splits only (set "
               "train_data_path / valid_data_path, or data_path with split)");
  if (o_.grpo) {  // prompts, tokenized here (no cache: a prompt set is small)
    PRIMUS_CHECK(dc.valid_data_path.empty(), "valid_data_path: GRPO reads prompts only (data_path or "
                 "train_data_path); it has no validation split yet");
    PRIMUS_CHECK(o_.eval_iters == 0, "eval_iters = {}: GRPO has no validation pass yet (the rewards of every step "
                 "are logged); set eval_iters: 0", o_.eval_iters);
    const std::vector<std::string> paths = dc.train_data_path.empty() ? dc.data_path : dc.train_data_path;
    PRIMUS_CHECK(!paths.empty(), "GRPO needs prompts: set data_path (or train_data_path) to JSONL files of "
                 "{{\"prompt\": ...}} or {{\"messages\": [...]}} lines");
    const data::sft::ChatTemplateSource tmpl =
        data::sft::load_chat_template(o_.chat_template, o_.tokenizer_model, *tokenizer_);
    grpo_prompts_ = rl::load_prompts(paths, *tokenizer_, tmpl, o_.grpo_options.max_prompt_length);
    grpo_stop_ids_ = data::sft::stop_token_ids(*tokenizer_, tmpl.tmpl.get());
    data_summary_ = fmt::format("GRPO: {} prompts from {} file(s), chat template {}; {} prompts x {} completions per "
                                "round; stop ids {}",
                                grpo_prompts_.size(), paths.size(), tmpl.name,
                                o_.global_batch_size / o_.grpo_options.num_generations,
                                o_.grpo_options.num_generations, fmt::join(grpo_stop_ids_, ", "));
    return;
  }
  data::sft::SftDataOptions so;
  so.data_paths = dc.data_path;
  so.train_paths = dc.train_data_path;
  so.valid_paths = dc.valid_data_path;
  so.split = dc.split;
  so.seq_length = o_.seq_length;
  so.seed = o_.seed;
  so.packing = o_.packing;
  so.loss_mode = o_.completion_only_loss ? data::sft::LossMode::kAssistantOnly : data::sft::LossMode::kAll;
  so.chat_template = o_.chat_template;
  so.cache_dir = dc.data_cache_path;
  so.preference = o_.dpo;
  PRIMUS_CHECK(!(o_.dpo && o_.packing), "packing: true with dpo: true: preference pairs are not packed (each "
               "chosen / rejected sequence is its own row); set packing: false");
  data::sft::SftDatasets ds;
  if (launch_.rank == 0) ds = data::sft::build_sft_datasets(so, *tokenizer_, o_.tokenizer_model);
  world_->barrier();
  if (launch_.rank != 0) ds = data::sft::build_sft_datasets(so, *tokenizer_, o_.tokenizer_model);
  for (const std::string& w : ds.warnings)
    if (launch_.rank == 0) logger_.warn("{}", w);
  datasets_.train = ds.train;
  datasets_.valid = ds.valid;
  data_summary_ = ds.summary();
  PRIMUS_CHECK(datasets_.train && datasets_.train->size() > 0, "post-training: no training example was built ({})",
               data_summary_);
}

// GRPO: the objective with its prompts, and with grpo_beta > 0 the frozen reference model (the
// weights of pretrained_checkpoint, else the seeded initialisation the policy started from).
void Run::setup_grpo() {
  PRIMUS_CHECK(pp_size_ == 1,
               "grpo: true runs without pipeline parallelism so far (pipeline_model_parallel_size {}): the rollouts "
               "and the per-token loss need the whole model on each rank's stage; use tensor and data parallelism",
               pp_size_);
  rl::GrpoLayout layout;
  layout.global_batch = o_.global_batch_size;
  layout.micro_batch = o_.micro_batch_size;
  layout.seq_length = o_.seq_length;
  layout.dp_rank = dp_rank_;
  layout.dp_size = dp_size_;
  layout.seed = o_.seed;
  if (o_.grpo_options.loss.beta != 0.0) {
    PRIMUS_CHECK(!o_.finetune || o_.load.empty() || !o_.pretrained_checkpoint.empty(),
                 "grpo_beta > 0 with finetune + load: the reference model's weights must stay the same when the run "
                 "resumes from its own checkpoints; give them as pretrained_checkpoint instead of load");
    DecoderOptions ro = model_->chunks().front()->options();
    ro.grad_ready = {};
    ro.param_needed = {};
    ro.lora = {};  // LoRA: the reference is the base model
    ro.fp8.reset();  // the frozen reference scores in bf16 (no FP8 scaling state to keep)
    reference_ = std::make_unique<pipeline::PipelinedModel>(o_.model, ctx_, ro, pipeline::PipelineOptions{});
    if (!o_.pretrained_checkpoint.empty()) {
      checkpoint::CheckpointReader reader(o_.pretrained_checkpoint);
      NamedTensorList targets;
      for (NamedTensor* p : reference_->parameters()) targets.emplace_back(p->name, p->value);
      for (NamedTensor* p : reference_->buffers()) targets.emplace_back(p->name, p->value);
      checkpoint::load_tensors_into(reader.model_file(), targets, /*strict=*/true);
    }
    logger_.info("grpo_beta = {}: reference model = {}", o_.grpo_options.loss.beta,
                 o_.pretrained_checkpoint.empty() ? "the seeded initial weights" : o_.pretrained_checkpoint);
  }
  grpo_ = std::make_unique<rl::GrpoObjective>(o_.grpo_options, std::move(grpo_prompts_), *tokenizer_, grpo_stop_ids_,
                                              layout);
}

NamedTensorList Run::rollout_weights() {
  NamedTensorList out;
  const std::vector<NamedTensor*> held = checkpoint_tensors();
  if (tp_size_ == 1 && ep_size_ == 1) {
    for (NamedTensor* p : held) out.emplace_back(p->name, p->value);
  } else {
    NamedTensorList full = parallel::gather_full_tensors(held, tp_size_ > 1 ? &groups_->tp() : nullptr,
                                                         parallel::ParamField::Value,
                                                         ep_size_ > 1 ? &groups_->ep() : nullptr);
    for (auto& [name, t] : full) out.emplace_back(name, t.device() == ctx_.device() ? t : t.to(ctx_.device()));
  }
  // LoRA: the policy is the frozen base plus its adapters, merged for the rollouts.
  if (o_.lora.active()) out = merge_lora_adapters(ctx_, out, o_.lora.scaling());
  return out;
}

// Where to resume from, as Megatron and Primus decide it:
//   auto_continue_train and `save` holds a checkpoint -> resume from `save`;
//   else `load` (its tracker's iteration); finetune loads the weights only and starts at 0.
void Run::restore() {
  std::string dir = o_.load;
  bool from_save = false;
  if (o_.auto_continue_train && !o_.save.empty() && checkpoint::latest_iteration(o_.save)) {
    dir = o_.save;
    from_save = true;
  }
  auto holds_checkpoint = [](const std::string& d) {
    return !d.empty() && (checkpoint::latest_iteration(d) || fs::exists(fs::path(d) / "meta.json"));
  };
  // finetune: `load` gives the weights only; a run resumed from its own `save` continues exactly.
  bool weights_only = o_.finetune && !from_save;
  // pretrained_checkpoint starts a run that has no checkpoint of its own yet (Megatron's finetune
  // flow): the weights only.
  if (!holds_checkpoint(dir) && !o_.pretrained_checkpoint.empty()) {
    PRIMUS_CHECK(holds_checkpoint(o_.pretrained_checkpoint),
                 "pretrained_checkpoint: {} holds no checkpoint (no {} or meta.json); point it at a Primus checkpoint "
                 "(or a converted HF model: primus convert hf-to-primus)",
                 o_.pretrained_checkpoint, checkpoint::kTrackerFileName);
    dir = o_.pretrained_checkpoint;
    weights_only = true;
  }
  if (dir.empty()) return;
  if (!holds_checkpoint(dir)) {
    if (o_.auto_continue_train) {
      logger_.info("auto_continue_train: no checkpoint in {} yet; starting from iteration 0", dir);
      return;
    }
    throw Error(fmt::format("load: {} holds no checkpoint (no {}); point load at a save directory, or set "
                            "auto_continue_train: true to start fresh when none exists",
                            dir, checkpoint::kTrackerFileName));
  }
  checkpoint::CheckpointReader reader(dir);
  // Checkpoints hold full tensors: a tensor- or expert-parallel rank slices out its shard, so a
  // run may resume at another layout than the one that saved.
  std::vector<NamedTensor*> loaded = checkpoint_tensors();
  // FP8 scaling states are optional: from a checkpoint saved without fp8 they start fresh.
  const size_t fp8_fresh = std::erase_if(loaded, [&](const NamedTensor* p) {
    return p->name.ends_with(kFp8StateSuffix) && !reader.model_file().contains(p->name);
  });
  if (fp8_fresh > 0)
    logger_.info("{}: no FP8 scaling state for {} linears (saved without fp8): their scaling starts fresh",
                 reader.path(), fp8_fresh);
  // LoRA starting from a base model: the adapters are new (their init stays).
  if (weights_only && o_.lora.active())
    std::erase_if(loaded, [](const NamedTensor* p) {
      return p->name.find(".lora_A.") != std::string::npos || p->name.find(".lora_B.") != std::string::npos;
    });
  const bool sharded = tp_size_ > 1 || ep_size_ > 1;
  // Weights from a LoRA run's checkpoint: its adapters merged into their base (W + s B A), so a
  // full fine-tune (or a new LoRA) starts from the adapted model.
  const std::vector<std::string> adapted =
      weights_only ? lora_adapted_weights(reader.model_file()) : std::vector<std::string>{};
  if (!adapted.empty()) {
    const LoraConfig lora = lora_config_of(reader.config(), reader.path() + "/config.json");
    NamedTensorList full = reader.model_tensors();
    for (auto& [name, t] : full)
      if (std::find(adapted.begin(), adapted.end(), name) != adapted.end())
        t = merged_lora_weight(reader.model_file(), name, lora.scaling());
    parallel::load_full_tensors(ctx_, loaded, full);
    logger_.info("{}: merged the LoRA adapters of {} weights into them (lora_alpha / lora_dim = {})", reader.path(),
                 adapted.size(), lora.scaling());
  } else if (!sharded) {
    NamedTensorList targets;
    for (NamedTensor* p : loaded) targets.emplace_back(p->name, p->value);
    // A pipeline stage holds some of the file's tensors: every one of its own must be there.
    checkpoint::load_tensors_into(reader.model_file(), targets, /*strict=*/pp_size_ == 1);
  } else {
    parallel::load_full_tensors(ctx_, loaded, reader.model_tensors());
  }
  // The optimizer took its fp32 masters from the initial weights: make them the loaded ones
  // (the optimizer state, when loaded below, restores the exact fp32 masters instead).
  optimizer_->reset_masters_from_params();
  for (const auto& chunk : model_->chunks())
    if (chunk->fp8() != nullptr) chunk->fp8()->weights_changed();
  if (weights_only) {
    logger_.info("{}: loaded the weights of {} (iteration {}){}; starting at iteration 0 with a fresh optimizer",
                 o_.finetune && dir == o_.load ? "finetune" : "pretrained_checkpoint", reader.path(), reader.iteration(),
                 o_.lora.active() ? " into the frozen base model; LoRA adapters start fresh" : "");
    return;
  }
  iteration_ = reader.iteration();
  consumed_train_ = reader.consumed_train_samples();
  consumed_valid_ = reader.consumed_valid_samples();
  const nlohmann::json extra = reader.extra();
  tokens_consumed_ = extra.value("tokens_consumed", consumed_train_ * o_.seq_length);
  if (!o_.no_load_optim) {
    PRIMUS_CHECK(reader.parts().optimizer,
                 "checkpoint {} has no optimizer state (saved with no_save_optim); set no_load_optim: true to "
                 "resume with a fresh optimizer",
                 reader.path());
    if (!sharded) {
      optimizer_->load_state_tensors(reader.optimizer_tensors());
    } else {
      // Slice each full state tensor into a fresh tensor shaped like this rank's state,
      // then load them all through AdamW's checked path (which also restores the step).
      std::vector<std::unique_ptr<NamedTensor>> views = optimizer_state_views();
      std::vector<NamedTensor*> ptrs;
      for (auto& v : views) {
        v->value = Tensor::empty(v->value.shape(), v->value.dtype(), v->value.device());
        ptrs.push_back(v.get());
      }
      parallel::load_full_tensors(ctx_, ptrs, reader.optimizer_tensors());
      NamedTensorList state;
      for (auto& v : views) state.emplace_back(v->name, v->value);
      optimizer_->load_state_tensors(state);
    }
    // fp32 masters were restored; the model's low-precision copy must match them exactly.
    if (extra.contains("loss_scaler")) scaler_.load_state(extra.at("loss_scaler"));
  }
  if (!o_.no_load_rng && reader.parts().rng) {
    const nlohmann::json rng = reader.rng();
    if (rng.value("seed", int64_t(o_.seed)) != int64_t(o_.seed))
      logger_.warn("checkpoint {} was trained with seed {}, this run has seed {}; the data order follows the "
                   "consumed samples, so only newly built datasets differ",
                   reader.path(), rng.value("seed", int64_t(0)), o_.seed);
  }
  logger_.info("resumed from {} at iteration {} ({} samples consumed)", reader.path(), iteration_, consumed_train_);
}

LossSums Run::train_step(float loss_weight, std::vector<data::Batch>& batches) {
  grad_completions_.clear();
  // The MoE auxiliary losses are per micro-batch means: each weighs 1 / (micro-batches in the
  // global batch) of the objective (Megatron's MoEAuxLossAutoScaler scale), times the loss scale.
  const float aux_weight =
      static_cast<float>(scaler_.scale() / static_cast<double>(num_micro_batches_ * dp_size_));
  const DecoderModel::StepResult r =
      dpo_ ? model_->forward_backward(batches, loss_weight, aux_weight, &dpo_->hooks(batches, scaler_.scale()),
                                      iteration_)
      : grpo_ ? model_->forward_backward(batches, loss_weight, aux_weight, &grpo_->hooks(scaler_.scale()), iteration_)
              : model_->forward_backward(batches, loss_weight, aux_weight, nullptr, iteration_);
  // Sequence parallel: the replicated norm weights got partial grads on each tp rank.
  // LoRA under tp: the adapters' partial grads likewise (parallel/lora.h).
  if (tp_size_ > 1) model_->reduce_sequence_parallel_grads();
  // Tied embeddings across pipeline stages: the two copies' grads summed.
  model_->finish_grads();
  return {r.loss_sum, r.num_tokens, r.mtp_loss_sums, r.mtp_num_tokens};
}

std::vector<std::pair<std::string, double>> Run::evaluate(data::BatchLoader& loader, int64_t iterations) {
  optimizer_->finish_param_gather();
  LossSums sums;
  DpoStats dpo;
  for (int64_t it = 0; it < iterations; ++it) {
    std::vector<data::Batch> batches;
    for (int64_t m = 0; m < num_micro_batches_; ++m) batches.push_back(loader.next());
    const DecoderModel::StepResult r = model_->forward_only(batches);
    sums.loss += r.loss_sum;
    sums.tokens += r.num_tokens;
    if (dpo_) dpo += dpo_->evaluate(batches, r.row_loss_sums);
  }
  std::vector<std::pair<std::string, double>> out;
  if (dpo_) out = DpoObjective::report(dpo, *batch_dp_);
  out.emplace_back("lm loss", dp_->all_reduce_value(sums.loss) / std::max(1.0, dp_->all_reduce_value(sums.tokens)));
  return out;
}

std::vector<std::unique_ptr<NamedTensor>> Run::optimizer_state_views() const {
  std::vector<std::unique_ptr<NamedTensor>> views;
  for (auto& [name, t] : optimizer_->state_tensors()) {
    auto v = std::make_unique<NamedTensor>();
    v->name = name;
    v->value = t;
    // "<param>.exp_avg" / ".exp_avg_sq" / ".master" are sharded like <param>; "step" is replicated.
    const size_t dot = name.rfind('.');
    if (dot != std::string::npos)
      for (NamedTensor* p : params_)
        if (name.compare(0, dot, p->name) == 0 && p->name.size() == dot) {
          v->shard = p->shard;
          v->expert_parallel = p->expert_parallel;
          v->expert_shard = p->expert_shard;
        }
    views.push_back(std::move(v));
  }
  return views;
}

void Run::save(int64_t iteration) {
  const bool gathers =
      tp_size_ > 1 || pp_size_ > 1 || ep_size_ > 1 || (dp_size_ > 1 && o_.use_distributed_optimizer);
  if (gathers && launch_.rank == 0 && !o_.save.empty())  // a gather of a large model takes a while: say so
    logger_.info("saving checkpoint at iteration {} to {}: gathering the weights{} of {} ranks (tp {}, pp {}{}, dp {}) "
                 "onto rank 0, then writing",
                 iteration, o_.save, o_.no_save_optim ? "" : " and optimizer states", launch_.world_size, tp_size_,
                 pp_size_, ep_size_ > 1 ? fmt::format(", ep {}", ep_size_) : "", dp_size_);
  optimizer_->finish_param_gather();  // the new weights must be complete on every rank
  // Tensor- and expert-parallel shards are gathered into full tensors (a collective: every rank
  // takes part), so the checkpoint does not depend on the layout that wrote it.
  NamedTensorList model, optimizer;
  const std::vector<NamedTensor*> saved = checkpoint_tensors();
  if (tp_size_ == 1 && ep_size_ == 1) {
    for (NamedTensor* p : saved) model.emplace_back(p->name, p->value);
    if (!o_.no_save_optim) optimizer = optimizer_->state_tensors();
  } else {
    parallel::Communicator* tp = tp_size_ > 1 ? &groups_->tp() : nullptr;
    parallel::Communicator* ep = ep_size_ > 1 ? &groups_->ep() : nullptr;
    model = parallel::gather_full_tensors(saved, tp, parallel::ParamField::Value, ep);
    if (!o_.no_save_optim) {
      std::vector<std::unique_ptr<NamedTensor>> views = optimizer_state_views();
      std::vector<NamedTensor*> ptrs;
      for (auto& v : views) ptrs.push_back(v.get());
      optimizer = parallel::gather_full_tensors(ptrs, tp, parallel::ParamField::Value, ep);
    }
  }
  // Pipeline stages: every stage's tensors onto pp rank 0 (the writer is global rank 0), so
  // the checkpoint holds the whole model whatever the pipeline layout. "step" and the tied
  // embedding's copy come once.
  if (pp_size_ > 1) {
    model = parallel::gather_named_tensors_to_root(model, groups_->pp());
    if (!o_.no_save_optim) optimizer = parallel::gather_named_tensors_to_root(optimizer, groups_->pp());
  }
  if (writer_) {
    checkpoint::CheckpointContent c;
    c.iteration = iteration;
    c.consumed_train_samples = consumed_train_;
    c.consumed_valid_samples = consumed_valid_;
    c.model = std::move(model);
    if (!o_.no_save_optim) c.optimizer = std::move(optimizer);
    if (!o_.no_save_rng) c.rng = {{"seed", o_.seed}, {"generator", "philox counter-based (stateless)"}};
    c.config = o_.config_json;
    c.extra = {{"tokens_consumed", tokens_consumed_},
               {"loss_scaler", scaler_.state()},
               {"global_batch_size", o_.global_batch_size},
               {"seq_length", o_.seq_length},
               {"data_parallel_size", dp_size_},
               {"tensor_model_parallel_size", tp_size_},
               {"expert_model_parallel_size", ep_size_}};
    const auto t = Clock::now();
    writer_->save(c);
    if (!o_.async_save) {
      const auto r = writer_->last_result();
      logger_.info("saved checkpoint at iteration {} to {} ({:.1f} MB in {:.2f} s)", iteration,
                   r ? r->path : o_.save, r ? r->bytes / 1e6 : 0.0, seconds_since(t));
    } else {
      logger_.info("saving checkpoint at iteration {} to {} in the background (training waited {:.2f} s)",
                   iteration, o_.save, seconds_since(t));
    }
  }
  last_saved_ = iteration;
}

std::string Run::first_non_finite() {
  optimizer_->finish_param_gather();
  for (const bool grads : {false, true})
    for (NamedTensor* p : params_) {
      const double ss = ops::sum_of_squares(ctx_, {grads ? p->grad : p->value});
      if (!std::isfinite(ss))
        return fmt::format("first non-finite {}: {}", grads ? "gradient (forward order)" : "weight", p->name);
    }
  return "";
}

std::vector<std::pair<std::string, double>> Run::memory_scalars() const {
  std::vector<std::pair<std::string, double>> m;
  // The activation arena's high-water mark of the last micro-batch: what activations need.
  m.emplace_back("mem-activations-max-bytes", static_cast<double>(model_->activation_bytes_high_water()));
#ifdef PRIMUS_WITH_CUDA
  if (o_.device == Device::CUDA) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)  // device-wide: includes the CUDA context
      m.emplace_back("mem-reserved-bytes", static_cast<double>(total_b - free_b));
  }
#endif
  return m;
}

std::optional<Run::MoeReport> Run::finish_moe_step() {
  const ModelConfig& m = o_.model;
  if (m.num_experts <= 0) return std::nullopt;
  // Per layer: tokens per expert (E), load-balancing and z-loss sums, micro-batches, dropped
  // slots; zeros for the layers other pipeline ranks hold. Summed over the world: the data- and
  // context-parallel replicas of a layer add up; the tp ranks route the same tokens, so their
  // counts come tp-fold (the bias update reads only signs; the losses are per micro-batch means).
  // Layers num_layers.. are the multi-token-prediction modules' (their MoE counts too).
  const int64_t E = m.num_experts, width = E + 4, layers_total = m.num_layers + m.mtp_num_layers;
  std::vector<double> all(static_cast<size_t>(layers_total * width), 0.0);
  std::vector<MoeMlp*> held = model_->moe_layers();
  for (MoeMlp* layer : held) {
    const MoeStepStats& st = layer->stats();
    double* row = all.data() + layer->layer() * width;
    std::copy(st.tokens_per_expert.begin(), st.tokens_per_expert.end(), row);
    row[E] = st.load_balancing_loss;
    row[E + 1] = st.z_loss;
    row[E + 2] = static_cast<double>(st.micro_batches);
    row[E + 3] = st.dropped;
  }
  all = world_->all_reduce_values(std::move(all));
  // Aux-loss-free balancing: every rank applies the same update from the global counts.
  for (MoeMlp* layer : held) {
    const double* row = all.data() + layer->layer() * width;
    layer->update_expert_bias(ctx_, std::vector<double>(row, row + E));
    layer->stats().reset(E);
  }
  MoeReport r;
  int64_t layers = 0;
  for (int64_t l = 0; l < layers_total; ++l) {
    if (!m.is_moe_layer(l)) continue;
    const double* row = all.data() + l * width;
    const double micro = std::max(1.0, row[E + 2]);
    double total = 0, most = 0;
    for (int64_t e = 0; e < E; ++e) {
      total += row[e];
      most = std::max(most, row[e]);
    }
    const double load = total > 0 ? most / (total / static_cast<double>(E)) : 0.0;
    r.load_balancing_loss += row[E] / micro;
    r.z_loss += row[E + 1] / micro;
    r.expert_load = std::max(r.expert_load, load);
    const std::string tag = fmt::format("moe/layer_{}/", l);
    r.per_layer.emplace_back(tag + "load_balancing_loss", row[E] / micro);
    if (m.moe_z_loss_coeff > 0) r.per_layer.emplace_back(tag + "z_loss", row[E + 1] / micro);
    r.per_layer.emplace_back(tag + "expert_load_max_over_mean", load);
    if (m.moe_expert_capacity_factor > 0)
      r.per_layer.emplace_back(tag + "dropped_fraction", row[E + 3] / std::max(1.0, row[E + 3] + total));
    ++layers;
  }
  if (layers > 0) {
    r.load_balancing_loss /= static_cast<double>(layers);
    r.z_loss /= static_cast<double>(layers);
  }
  return r;
}

void Run::log_header() {
  const auto& m = o_.model;
  logger_.info("primus train: {} | device {} | {} | world {} (data parallel {}{}, tensor parallel {}{}, pipeline "
               "parallel {}{}{}{})",
               o_.exp_name, o_.device == Device::CUDA ? "cuda" : "cpu", precision_name(o_.precision),
               launch_.world_size, dp_size_, o_.use_distributed_optimizer ? " + distributed optimizer" : "", tp_size_,
               o_.sequence_parallel ? " + sequence parallel" : "", pp_size_,
               model_->virtual_stages() > 1 ? fmt::format(" x {} virtual stages", model_->virtual_stages()) : "",
               ep_size_ > 1 ? fmt::format(", expert parallel {} (expert data parallel {}, {} token dispatch)", ep_size_,
                                          groups_->dims().expert_dp(),
                                          o_.moe_token_dispatcher == parallel::TokenDispatcher::AllToAll ? "alltoall"
                                                                                                        : "allgather")
                            : "",
               groups_->dims().cp() > 1
                   ? fmt::format(", context parallel {} (ring attention, {} tokens of each sequence per rank)",
                                 groups_->dims().cp(), o_.seq_length / groups_->dims().cp())
                   : "");
  if (o_.decoder_first_pipeline_num_layers > 0 || o_.decoder_last_pipeline_num_layers > 0)
    logger_.info("pipeline stages hold {} layers (uneven split: decoder_first_pipeline_num_layers {}, "
                 "decoder_last_pipeline_num_layers {})",
                 fmt::join(parallel::pipeline_stage_layers(o_.model.num_layers, pp_size_,
                                                           {o_.decoder_first_pipeline_num_layers,
                                                            o_.decoder_last_pipeline_num_layers}),
                           " / "),
                 o_.decoder_first_pipeline_num_layers, o_.decoder_last_pipeline_num_layers);
  if (o_.precision_downgraded)
    logger_.warn("bf16/fp16 is set but this run is on the CPU, whose path computes in fp32 (device: cpu)");
  const int64_t whole = count_table_parameters(parameter_table(m));
  const int64_t held = model_->num_parameters();  // trained (under LoRA: the adapters)
  int64_t frozen = 0;                              // LoRA's frozen base
  if (o_.lora.active())
    for (const NamedTensor* b : buffers_) frozen += b->value.numel();
  const int64_t base_held = o_.lora.active() ? frozen : held;  // of the model table's parameters
  logger_.info("model: {} layers, hidden {}, {} heads ({} query groups), ffn {}, vocab {} (padded {}): {:.2f}M "
               "parameters{}",
               m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size,
               m.vocab_size, m.padded_vocab_size, whole / 1e6,
               base_held != whole
                   ? fmt::format(" ({:.2f}M of them on this rank: its tensor- and expert-parallel shards of "
                                 "its pipeline stage's layers)",
                                 base_held / 1e6)
                             : "");
  if (o_.lora.active()) {
    // What full fine-tuning would add per frozen parameter: its fp32 gradient, AdamW's two moments
    // and (bf16/fp16) the fp32 master copy, in the bytes this run's optimizer settings hold them.
    const bool remainder = o_.adam.store_param_remainders && o_.precision == Precision::Bf16;
    const double per_param = 4.0 + static_cast<double>(dtype_size(o_.adam.exp_avg_dtype)) +
                             static_cast<double>(dtype_size(o_.adam.exp_avg_sq_dtype)) +
                             (o_.precision == Precision::Fp32 ? 0.0 : remainder ? 2.0 : 4.0);
    logger_.info("LoRA: rank {}, alpha {} (scale {}){} on {}: {:.3f}M trainable adapter parameters on this rank "
                 "({:.2f}% of the {:.2f}M held); the frozen base has no gradients or optimizer state, "
                 "{:.2f} GB less than full fine-tuning on this rank",
                 o_.lora.rank, o_.lora.alpha, o_.lora.scaling(),
                 o_.lora.dropout > 0 ? fmt::format(", dropout {}", o_.lora.dropout) : std::string(),
                 fmt::join(o_.lora.targets, ", "), held / 1e6,
                 100.0 * static_cast<double>(held) / static_cast<double>(held + frozen), (held + frozen) / 1e6,
                 per_param * static_cast<double>(frozen) / 1e9);
  }
  if (o_.fp8) {
    const ops::Fp8Options& f = *o_.fp8;
    size_t linears = 0;
    for (const auto& chunk : model_->chunks())
      if (chunk->fp8() != nullptr) linears += chunk->fp8()->num_linears();
    logger_.info("fp8: {} ({} forward, {} gradients), {} scaling{}: {} linears on this rank run their GEMMs in FP8 "
                 "(attention qkv / proj, dense and shared-expert MLP fc1 / fc2); the embedding, output layer, "
                 "router{} stay bf16; weights, gradients and the optimizer are unchanged, plus 2 B per FP8 weight for "
                 "its cast copies",
                 f.format == ops::Fp8Format::Hybrid ? "hybrid" : "e4m3", "e4m3",
                 f.format == ops::Fp8Format::Hybrid ? "e5m2" : "e4m3",
                 f.recipe == ops::Fp8Recipe::Delayed ? "delayed" : "tensorwise (current)",
                 f.recipe == ops::Fp8Recipe::Delayed
                     ? fmt::format(" (amax history {}, {}, margin {})", f.amax_history_len,
                                   f.amax_max ? "max" : "most_recent", f.margin)
                     : fmt::format(" (margin {})", f.margin),
                 linears, m.num_experts > 0 ? " and the routed experts' grouped GEMMs" : "");
  }
  if (m.num_experts > 0) {
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < m.num_layers; ++l) moe_layers += m.is_moe_layer(l) ? 1 : 0;
    logger_.info("MoE: {} of {} layers, {} experts of ffn {}, top-{} ({} scores{}{}{}){}{}; {}; load balancing: {}{}{}",
                 moe_layers, m.num_layers, m.num_experts, m.moe_ffn_hidden_size, m.moe_router_topk,
                 m.moe_router_score_function, m.moe_router_pre_softmax ? ", pre-softmax" : "",
                 m.moe_router_num_groups > 0
                     ? fmt::format(", {} of {} groups", m.moe_router_group_topk, m.moe_router_num_groups)
                     : "",
                 m.moe_router_topk_scaling_factor != 1.0 ? fmt::format(", x{}", m.moe_router_topk_scaling_factor) : "",
                 m.moe_shared_expert_intermediate_size > 0
                     ? fmt::format(", shared experts of ffn {}", m.moe_shared_expert_intermediate_size)
                     : "",
                 m.moe_router_enable_expert_bias ? fmt::format(", expert bias (rate {})", m.moe_router_bias_update_rate) : "",
                 m.moe_expert_capacity_factor > 0
                     ? fmt::format("capacity factor {} (drop by {}{})", m.moe_expert_capacity_factor,
                                   m.moe_token_drop_policy, m.moe_pad_expert_input_to_capacity ? ", padded" : "")
                     : "dropless",
                 m.moe_aux_loss_coeff > 0 ? m.moe_router_load_balancing_type : "none",
                 m.moe_aux_loss_coeff > 0 ? fmt::format(" x {}", m.moe_aux_loss_coeff) : "",
                 m.moe_z_loss_coeff > 0 ? fmt::format(", z-loss x {}", m.moe_z_loss_coeff) : "");
  }
  logger_.info("batch: global {} = micro {} x {} micro-batches x {} data-parallel ranks, seq {}; {} iterations",
               o_.global_batch_size, o_.micro_batch_size, num_micro_batches_, dp_size_, o_.seq_length,
               o_.train_iters);
  if (!data_summary_.empty()) logger_.info("post-training data: {}", data_summary_);
  if (datasets_.train)
    logger_.info("data: train {} ({} samples){}{}", datasets_.train->name(), datasets_.train->size(),
               datasets_.valid ? fmt::format(", valid {} ({} samples)", datasets_.valid->name(),
                                             datasets_.valid->size())
                               : std::string(),
               o_.data.mock_data ? " [mock data]" : "");
  if (o_.wandb_requested)
    logger_.warn("wandb_project is set, but Primus has no Weights & Biases client (and this machine may have no "
                 "network): the same metrics are in TensorBoard and {}",
                 o_.metrics_jsonl_path);
  logger_.info("set-up: {:.2f} s since start ({})", seconds_since(started_), setup_timing_);
  logger_.info("kernels: {}", kernels_);
  logger_.info("logs: {} | metrics: {}{}", o_.log_dir, o_.metrics_jsonl_path,
               o_.tensorboard_dir.empty() ? "" : " | tensorboard: " + o_.tensorboard_dir);
}

TrainResult Run::train() {
  TrainResult result;
  result.start_iteration = iteration_;
  log_header();

  std::unique_ptr<TrainingReporter> reporter;
  if (launch_.rank == 0)
    reporter = std::make_unique<TrainingReporter>(logger_, ReporterOptions{o_.tensorboard_dir, o_.metrics_jsonl_path});
  metrics::MetricsOptions mo;
  mo.train_iters = o_.train_iters;
  mo.log_avg_skip_iterations = o_.log_avg_skip_iterations;
  mo.log_avg_reset_interval = o_.log_avg_reset_interval;
  mo.world_size = launch_.world_size;
  mo.tokens_consumed_at_start = tokens_consumed_;
#ifdef PRIMUS_WITH_CUDA
  if (o_.device == Device::CUDA) {
    const auto devices = cuda::list_devices();
    if (launch_.local_rank < static_cast<int>(devices.size()))
      mo.peak_tflops_per_gpu = devices[launch_.local_rank].peak_bf16_tflops;
  }
#endif
  metrics::MetricsAccumulator metrics(mo);

  std::unique_ptr<Watchdog> watchdog;
  if (o_.watchdog_minutes > 0) {
    WatchdogOptions wo;
    wo.timeout = std::chrono::minutes(o_.watchdog_minutes);
    wo.sink = [this](const std::string& report) { logger_.error("{}", report); };
    watchdog = std::make_unique<Watchdog>(wo);
    watchdog->name_thread("main");
  }

  std::unique_ptr<data::BatchLoader> train_loader;  // none for GRPO, whose batches are its rollouts
  if (datasets_.train)
    train_loader =
        std::make_unique<data::BatchLoader>(*datasets_.train, o_.micro_batch_size, dp_rank_, dp_size_, consumed_train_);
  std::unique_ptr<data::BatchLoader> valid_loader;
  if (datasets_.valid)
    valid_loader =
        std::make_unique<data::BatchLoader>(*datasets_.valid, o_.micro_batch_size, dp_rank_, dp_size_, consumed_valid_);
  auto run_validation = [&](int64_t iteration) {
    if (!valid_loader || o_.eval_iters == 0) return;
    const auto losses = evaluate(*valid_loader, o_.eval_iters);
    consumed_valid_ += o_.eval_iters * o_.global_batch_size;
    result.last_validation_loss = losses.front().second;
    if (reporter)
      reporter->report_evaluation(iteration, "validation", fmt::format("iteration {}", iteration), losses);
  };

  int64_t bad_streak = 0;
  std::string stop_reason;
  // timing_log_level 1: synchronise after each phase of a step and log where the wall time went
  // (the extra synchronisations cost a little throughput).
  const bool step_timing = o_.timing_log_level >= 1;
  // profile: this rank opens the profiler's capture window over [start, end) (core/trace.h).
  const bool profiling = o_.profile && std::find(o_.profile_ranks.begin(), o_.profile_ranks.end(),
                                                 static_cast<int64_t>(launch_.rank)) != o_.profile_ranks.end();
  bool capturing = false;
  auto set_capture = [&](bool on) {
    if (!profiling || on == capturing) return;
    ctx_.synchronize();  // the window holds exactly the steps inside it
    if (on) {
      trace::capture_start();
      logger_.info("profile: capture window opened at iteration {} (closes at {})", iteration_, o_.profile_step_end);
    } else {
      trace::capture_stop();
      logger_.info("profile: capture window closed at iteration {}", iteration_);
    }
    capturing = on;
  };
  std::vector<std::pair<const char*, double>> phases;
  Clock::time_point phase_start;
  auto phase_done = [&](const char* name) {
    if (!step_timing) return;
    ctx_.synchronize();
    const auto now = Clock::now();
    phases.emplace_back(name, std::chrono::duration<double, std::milli>(now - phase_start).count());
    phase_start = now;
  };
  while (iteration_ < o_.train_iters) {
    set_capture(iteration_ >= o_.profile_step_start && iteration_ < o_.profile_step_end);
    const trace::Range step_range("step");
    const auto t0 = Clock::now();
    phase_start = t0;
    phases.clear();
    // ---- one iteration ----
    std::vector<data::Batch> batches;
    batches.reserve(static_cast<size_t>(num_micro_batches_));
    if (grpo_) {
      optimizer_->finish_param_gather();  // the rollouts sample from the current weights
      std::optional<Watchdog::Phase> phase;
      if (watchdog) phase.emplace(*watchdog, "GRPO rollouts");
      batches = grpo_->batches(iteration_, o_.model, [this] { return rollout_weights(); }, reference_.get(), ctx_, *dp_);
    } else {
      for (int64_t m = 0; m < num_micro_batches_; ++m) batches.push_back(train_loader->next());
    }
    phase_done("data");
    double local_tokens = 0, local_real = 0;
    for (const data::Batch& b : batches) {
      const float* mask = b.loss_mask.data<float>();
      for (int64_t i = 0; i < b.loss_mask.numel(); ++i) local_tokens += mask[i];
      if (o_.posttrain) {  // positions with a target: the rows' tokens less padding (and each example's last)
        const int32_t* labels = b.labels.data<int32_t>();
        for (int64_t i = 0; i < b.labels.numel(); ++i) local_real += labels[i] >= 0 ? 1 : 0;
      }
    }
    const std::vector<double> counts = batch_dp_->all_reduce_values({local_tokens, local_real});
    const double global_tokens = counts[0];
    const double scale = scaler_.scale();
    // The model zeroes the grads it accumulates into and overwrites the rest (the linear
    // weights, most of the model) on the first micro-batch: no memset of every fp32 gradient.
    optimizer_->zero_grads(/*clear_values=*/false);
    model_->zero_grads_for_overwrite();
    phase_done("zero grads");
    LossSums sums;
    {
      std::optional<Watchdog::Phase> phase;
      if (watchdog) phase.emplace(*watchdog, "forward-backward");
      const trace::Range range("forward-backward");
      sums = train_step(static_cast<float>(scale / std::max(1.0, global_tokens)), batches);
    }
    phase_done("forward-backward");
    {
      std::optional<Watchdog::Phase> phase;
      if (watchdog && dp_size_ > 1) phase.emplace(*watchdog, "reduce grads over data parallel");
      optimizer_->reduce_grads();
    }
    phase_done("grad reduce");
    if (o_.overlap_grad_reduce && iteration_ == result.start_iteration)
      logger_.info("overlap_grad_reduce: {} of {} gradient buckets started reducing during the backward pass",
                   optimizer_->buckets_started_early(), optimizer_->num_buckets());
    if (o_.overlap_param_gather && o_.use_distributed_optimizer && iteration_ == result.start_iteration + 1)
      logger_.info("overlap_param_gather: {} of {} parameter bucket all-gathers were waited for inside the forward "
                   "pass, as it reached their weights (none in the optimizer step)",
                   optimizer_->param_buckets_waited_in_forward(), optimizer_->num_buckets());
    const double lm_loss = dp_->all_reduce_value(sums.loss) / std::max(1.0, global_tokens);
    // DPO / GRPO: the objective is the run's loss (NaN guard, log); the completions' lm loss is shown too.
    std::vector<std::pair<std::string, double>> objective_report;
    if (dpo_)  // the hooks ran on the last pipeline stage: the other stages hold zeros
      objective_report = DpoObjective::report(
          pp_size_ > 1 ? DpoObjective::sum_over(dpo_->step_stats(), groups_->pp()) : dpo_->step_stats(), *batch_dp_);
    if (grpo_) objective_report = grpo_->report(*dp_);
    const double loss = objective_report.empty() ? lm_loss : objective_report.front().second;
    const double lr = schedule_->lr(static_cast<double>(consumed_train_));
    const double wd = schedule_->weight_decay(static_cast<double>(consumed_train_));
    AdamW::StepInfo info;
    const bool loss_finite = std::isfinite(loss);
    if (loss_finite) {
      const trace::Range range("optimizer");
      info = optimizer_->step(lr, wd, static_cast<float>(1.0 / scale));
    } else {
      info.skipped = true;
      info.grad_norm = std::numeric_limits<double>::quiet_NaN();
    }
    // FP8: this step's amaxes agreed over the replicas of each linear, delayed scaling's new
    // scales, and the weights re-cast at their next use.
    for (const auto& chunk : model_->chunks())
      if (chunk->fp8() != nullptr) chunk->fp8()->end_step(ctx_, {&groups_->dp_cp(), &groups_->tp()});
    phase_done("optimizer");
    scaler_.update(info.skipped);
    // fp16 overflow with dynamic scaling is routine; anything else non-finite is a fault.
    const bool bad = !loss_finite || (info.skipped && !scaler_.dynamic());
    bad_streak = bad ? bad_streak + 1 : 0;

    ++iteration_;
    consumed_train_ += o_.global_batch_size;
    // Post-training counts real tokens (packing or padding leaves slots empty); DPO rows are pairs.
    const int64_t tokens = o_.posttrain ? static_cast<int64_t>(counts[1]) : o_.global_batch_size * o_.seq_length;
    tokens_consumed_ += tokens;
    if (o_.device == Device::CUDA) ctx_.synchronize();
    if (step_timing) {
      phase_done("rest");
      std::string line;
      for (const auto& [name, ms] : phases) line += fmt::format(" | {} {:.2f} ms", name, ms);
      logger_.info("step timing, iteration {}: total {:.2f} ms{}", iteration_, seconds_since(t0) * 1e3, line);
    }
    const bool log_now = iteration_ % o_.log_interval == 0 || iteration_ == o_.train_iters;

    metrics::IterationRecord rec;
    rec.iteration = iteration_;
    rec.elapsed_s = seconds_since(t0);
    rec.losses = objective_report;
    if (grpo_) {  // where the step's time went: sampling the rollouts vs training on them
      const double train_s =
          std::max(1e-9, seconds_since(t0) - grpo_->generation_seconds() - grpo_->reference_seconds());
      rec.losses.emplace_back("time/training_s", train_s);
      rec.losses.emplace_back("tokens_per_s/training", counts[1] / train_s);
    }
    rec.losses.emplace_back("lm loss", lm_loss);
    if (!sums.mtp_loss.empty()) {  // Megatron's "mtp_k loss": each depth's mean over its own loss tokens
      std::vector<double> both = sums.mtp_loss;
      both.insert(both.end(), sums.mtp_tokens.begin(), sums.mtp_tokens.end());
      both = dp_->all_reduce_values(std::move(both));
      const size_t D = sums.mtp_loss.size();
      for (size_t k = 0; k < D; ++k)
        rec.losses.emplace_back(fmt::format("mtp_{} loss", k + 1), both[k] / std::max(1.0, both[D + k]));
    }
    const std::optional<MoeReport> moe = finish_moe_step();
    if (moe) {
      if (o_.model.moe_aux_loss_coeff > 0 && o_.model.moe_router_load_balancing_type != "none")
        rec.losses.emplace_back(o_.model.moe_router_load_balancing_type == "seq_aux_loss" ? "seq_load_balancing_loss"
                                                                                           : "load_balancing_loss",
                                moe->load_balancing_loss);
      if (o_.model.moe_z_loss_coeff > 0) rec.losses.emplace_back("z_loss", moe->z_loss);
    }
    rec.skipped = info.skipped;
    rec.nan = !loss_finite || !std::isfinite(info.grad_norm);
    rec.learning_rate = lr;
    rec.loss_scale = scale;
    rec.grad_norm = info.grad_norm;
    if (log_now) {
      if (o_.log_num_zeros_in_grad) rec.num_zeros = static_cast<double>(optimizer_->count_zero_grads());
      if (o_.log_params_norm) {
        optimizer_->finish_param_gather();
        std::vector<Tensor> values;
        for (NamedTensor* p : params_) values.push_back(p->value);
        rec.params_norm = std::sqrt(ops::sum_of_squares(ctx_, values));
      }
    }
    rec.consumed_samples = consumed_train_;
    rec.global_batch_size = o_.global_batch_size;
    rec.tokens = tokens;
    rec.flops = o_.flops_per_token * static_cast<double>(tokens);
    metrics.add(rec);
    result.losses.push_back(loss_finite ? loss : std::numeric_limits<double>::quiet_NaN());
    result.grad_norms.push_back(info.grad_norm);
    if (log_now) {
      metrics::IntervalReport report = metrics.report();
      report.memory = memory_scalars();
      if (moe) {
        report.expert_load = moe->expert_load;
        report.moe_layers = moe->per_layer;
      }
      if (reporter) reporter->report_train(report);
    }
    if (watchdog) watchdog->heartbeat(iteration_);
    if (hooks_.after_iteration) {
      optimizer_->finish_param_gather();
      hooks_.after_iteration(iteration_, params_);
    }

    std::string where;
    if (bad) {
      where = first_non_finite();
      logger_.warn("iteration {}: {} (lm loss {}, grad norm {}); the step was skipped ({} in a row){}", iteration_,
                   loss_finite ? "non-finite gradients" : "non-finite loss", loss, info.grad_norm, bad_streak,
                   where.empty() ? "" : "; " + where);
    }
    if (o_.nan_guard_max_consecutive > 0 && bad_streak >= o_.nan_guard_max_consecutive) {
      if (writer_) writer_->wait();
      throw Error(fmt::format(
          "NaN guard: {} iterations in a row (up to iteration {}) had a non-finite loss or gradients{}; stopping "
          "without saving. The last good checkpoint{} is intact: lower lr, check the data, or raise "
          "nan_guard_max_consecutive",
          bad_streak, iteration_, where.empty() ? "" : " (" + where + ")",
          last_saved_ ? fmt::format(" (iteration {}, in {})", *last_saved_, o_.save) : std::string()));
    }

    // ---- evaluation, checkpoints, stopping ----
    if (o_.eval_iters > 0 && iteration_ % o_.eval_interval == 0 && iteration_ < o_.train_iters)
      run_validation(iteration_);
    bool saved = false;
    if (!o_.save.empty() && o_.save_interval && iteration_ % *o_.save_interval == 0) {
      save(iteration_);
      saved = true;
    }
    // Every rank must stop at the same iteration: agree on the flags with one all-reduce.
    double flags[3] = {signals_.stop_requested() ? 1.0 : 0.0, 0, 0};
    if (o_.exit_duration_in_mins && seconds_since(started_) / 60.0 > static_cast<double>(*o_.exit_duration_in_mins))
      flags[1] = 1;
    if (o_.exit_interval && iteration_ % *o_.exit_interval == 0) flags[2] = 1;
    const double any = world_->all_reduce_value(flags[0] + 2 * flags[1] + 4 * flags[2], parallel::ReduceOp::Max);
    // GRPO with num_iterations > 1 stops between rounds (a round's rollouts are not saved).
    if (any > 0 && (!grpo_ || grpo_->round_starts_at(iteration_))) {
      const int bits = static_cast<int>(any);
      stop_reason = (flags[0] > 0 || (bits & 1)) ? std::string(StopSignals::signal_name(signals_.signal_number()))
                    : (bits & 2)                  ? "exit_duration_in_mins"
                                                  : "exit_interval";
      if (!o_.save.empty() && !saved) save(iteration_);
      logger_.info("stopping at iteration {} ({}){}", iteration_, stop_reason,
                   o_.save.empty() ? "; no save directory is set, nothing was saved" : "");
      break;
    }
  }
  set_capture(false);  // a window reaching past the last iteration closes here

  if (stop_reason.empty()) {
    stop_reason = "train_iters";
    if (o_.eval_iters > 0) {
      if (valid_loader) run_validation(iteration_);
      if (datasets_.test) {
        data::BatchLoader test_loader(*datasets_.test, o_.micro_batch_size, dp_rank_, dp_size_, 0);
        const auto losses = evaluate(test_loader, o_.eval_iters);
        result.test_loss = losses.front().second;
        if (reporter) reporter->report_evaluation(iteration_, "test", "the end of training", losses);
      }
    }
    if (!o_.save.empty() && !o_.disable_last_saving && last_saved_ != iteration_ &&
        iteration_ > result.start_iteration)
      save(iteration_);
  }
  optimizer_->finish_param_gather();
  if (writer_) writer_->wait();
  result.iteration = iteration_;
  result.stop_reason = stop_reason;
  result.last_saved_iteration = last_saved_;
  logger_.info("done: iteration {} of {} ({}), {:.1f} s", iteration_, o_.train_iters, stop_reason,
               seconds_since(started_));
  return result;
}

}  // namespace

TrainResult train(const TrainOptions& options, const TrainerHooks& hooks) {
  try {
    Run run(options, hooks);
    return run.train();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("out of memory") == std::string::npos) throw;
    throw Error(fmt::format(
        "{}\nThe run does not fit in GPU memory. Knobs, cheapest first: micro_batch_size (now {}; the global batch "
        "stays the same through more micro-batches), recompute_granularity: selective or full (now '{}'), "
        "tensor_model_parallel_size (now {}) on more GPUs, a shorter seq_length (now {}). "
        "`primus train --config EXP.yaml --dry-run` prints the memory estimate per GPU for a setting.",
        what, options.micro_batch_size, options.recompute_granularity.empty() ? "none" : options.recompute_granularity,
        options.tensor_parallel, options.seq_length));
  }
}

}  // namespace primus::train

#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "core/rng.h"
#include "core/strings.h"
#include "core/trace.h"
#include "model/attention_gqa.h"
#include "model/attention_mla.h"
#include "model/mlp_dense.h"
#include "parallel/communicator.h"
#include "parallel/context_parallel.h"
#include "parallel/layers.h"
#include "parallel/parallel_dims.h"

namespace primus {

Recompute parse_recompute_granularity(std::string_view value) {
  if (value.empty() || value == "none" || value == "null") return Recompute::None;
  if (value == "selective") return Recompute::Selective;
  if (value == "full") return Recompute::Full;
  fail("recompute_granularity: '{}' is not one of null, selective, full{}", value,
       did_you_mean(value, {"selective", "full", "null"}));
}

namespace {

// N(0, std^2) from CounterRng(seed, stream) into a host fp32 tensor holding the shard
// `runs` of the full tensor: every element draws the value of its index in the FULL
// tensor, so a shard equals the slice of the single-rank init. Work is split over threads
// by element ranges (one run) or by runs; the result does not depend on the split.
void fill_normal_parallel(Tensor& host, const CounterRng& rng, float std, const std::vector<parallel::ShardRun>& runs) {
  const int64_t n = host.numel();
  const int64_t threads = n < (int64_t{1} << 16) ? 1 : std::max(1u, std::thread::hardware_concurrency());
  Tensor flat = host.view({n});
  auto fill_run = [&](const parallel::ShardRun& r, int64_t b, int64_t e) {  // elements [b, e) of run r
    Tensor part = flat.rows(r.local_offset + b, r.local_offset + e);
    rng.fill_normal(part, 0.f, std, static_cast<uint64_t>(r.full_offset + b));
  };
  std::vector<std::thread> pool;
  if (runs.size() == 1) {
    const int64_t chunk = (n + threads - 1) / threads;
    for (int64_t t = 0; t < threads; ++t) {
      const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
      pool.emplace_back([&, b, e] { fill_run(runs[0], b, e); });
    }
  } else {
    const auto count = static_cast<int64_t>(runs.size());
    const int64_t chunk = (count + threads - 1) / threads;
    for (int64_t t = 0; t < threads; ++t) {
      const int64_t b = std::min(count, t * chunk), e = std::min(count, b + chunk);
      pool.emplace_back([&, b, e] {
        for (int64_t i = b; i < e; ++i) fill_run(runs[static_cast<size_t>(i)], 0, runs[static_cast<size_t>(i)].numel);
      });
    }
  }
  for (auto& th : pool) th.join();
}

// The cp group must carry the model's tensors (what CP runs: parallel/context_parallel.h).
void validate_context_parallel(const parallel::ContextParallel& cp, Device device) {
  if (!cp.active()) return;
  PRIMUS_CHECK(cp.group->device() == device, "DecoderOptions.context_parallel: the cp group '{}' works on {} tensors "
               "but the model runs on {}", cp.group->name(), device_name(cp.group->device()), device_name(device));
}

// The tensor-parallel layout rules that the config must meet (all violations at once).
void validate_tensor_parallel(const ModelConfig& c, const parallel::TensorParallel& tp, Device device) {
  if (tp.group == nullptr) {
    PRIMUS_CHECK(!tp.sequence_parallel, "DecoderOptions.tensor_parallel: sequence_parallel needs a tensor-parallel "
                 "group (tensor_model_parallel_size > 1)");
    return;
  }
  PRIMUS_CHECK(tp.group->device() == device, "DecoderOptions.tensor_parallel: the tp group '{}' works on {} tensors but "
               "the model runs on {}", tp.group->name(), device_name(tp.group->device()), device_name(device));
  const int64_t P = tp.size();
  const parallel::LayoutValue ranks("tensor_model_parallel_size", P);
  std::string bad;
  auto need = [&](const char* key, int64_t value) {
    const std::string problem = parallel::split_problem({key, value}, ranks);
    if (!problem.empty()) bad += "\n  " + problem;
  };
  need("num_attention_heads", c.num_attention_heads);
  need("num_query_groups", c.num_query_groups);
  need("ffn_hidden_size", c.ffn_hidden_size);
  if (c.num_experts > 0) {
    need("moe_ffn_hidden_size", c.moe_ffn_hidden_size);
    need("moe_shared_expert_intermediate_size", c.moe_shared_expert_intermediate_size);
  }
  need("padded_vocab_size", c.padded_vocab_size);
  if (!bad.empty()) fail("model config '{}' does not split over {} tensor-parallel ranks:{}", c.name, P, bad);
}

// The expert-parallel layout rules (the start-up check, check_parallel_layout, says the same
// with the config's keys; this one guards direct users of DecoderModel).
void validate_expert_parallel(const ModelConfig& c, const parallel::ExpertParallel& ep,
                              const parallel::TensorParallel& tp, Device device) {
  if (!ep.active()) return;
  PRIMUS_CHECK(ep.group->device() == device, "DecoderOptions.expert_parallel: the ep group '{}' works on {} tensors "
               "but the model runs on {}", ep.group->name(), device_name(ep.group->device()), device_name(device));
  const parallel::LayoutValue ranks("expert_model_parallel_size", ep.size());
  for (const std::string& problem :
       {parallel::expert_parallel_problem(ranks, c.num_experts > 0),
        c.num_experts > 0 ? parallel::split_problem({"num_experts", c.num_experts}, ranks) : std::string(),
        parallel::expert_tensor_parallel_problem(ranks, {"tensor_model_parallel_size", tp.size()}, tp.sp())})
    PRIMUS_CHECK(problem.empty(), "model config '{}': {}", c.name, problem);
}

Tensor to_host(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

}  // namespace

// Host-side preparation of a micro-batch: targets with ignored tokens set to -1 (local to
// this rank's vocabulary slice under tensor parallel), the per-token loss weights, the token
// ids as the embedding reads them, and the device copies.
struct DecoderModel::Batch {
  int64_t B = 0, T = 0;
  parallel::EmbeddingTokens tokens;  // the stage holds the embedding
  Tensor targets, dloss;             // on the model's device: (N) int32, (N) fp32
  std::vector<float> mask;           // effective mask (0 where the label is ignored)
  double num_tokens = 0;

  // needs_tokens: the ids are looked up here (the stage holds the embedding).
  Batch(const Tensor& tokens_in, const Tensor* labels_in, const Tensor* mask_in, float loss_weight, int64_t vocab,
        Device device, const parallel::TensorParallel& tp, bool needs_tokens = true) {
    PRIMUS_CHECK(tokens_in.ndim() == 2 && tokens_in.dtype() == DType::I32,
                 "DecoderModel: tokens must be int32 [batch, seq], got {}", tokens_in.describe());
    B = tokens_in.size(0);
    T = tokens_in.size(1);
    const int64_t N = B * T;
    PRIMUS_CHECK(!tp.sp() || N % tp.size() == 0,
                 "DecoderModel: sequence parallel splits the {} x {} = {} token rows of a micro-batch over {} "
                 "tensor-parallel ranks, which does not divide; use a seq_length divisible by "
                 "tensor_model_parallel_size", B, T, N, tp.size());
    if (needs_tokens) tokens = parallel::EmbeddingTokens::make(tp, tokens_in, vocab, device);
    if (labels_in == nullptr) return;
    PRIMUS_CHECK(mask_in != nullptr, "DecoderModel: labels given without a loss_mask");
    PRIMUS_CHECK(labels_in->shape() == tokens_in.shape() && labels_in->dtype() == DType::I32,
                 "DecoderModel: labels must be int32 {} like tokens, got {}", shape_str(tokens_in.shape()),
                 labels_in->describe());
    PRIMUS_CHECK(mask_in->shape() == tokens_in.shape() && mask_in->dtype() == DType::F32,
                 "DecoderModel: loss_mask must be fp32 {} like tokens, got {}", shape_str(tokens_in.shape()),
                 mask_in->describe());
    const Tensor labels_h = to_host(*labels_in), mask_h = to_host(*mask_in);
    Tensor targets_h = Tensor::empty({N}, DType::I32), dloss_h = Tensor::empty({N}, DType::F32);
    mask.resize(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      const int32_t label = labels_h.data<int32_t>()[i];
      PRIMUS_CHECK(label < vocab, "DecoderModel: label {} at position {} is >= padded_vocab_size {}", label, i, vocab);
      const float m = label >= 0 ? mask_h.data<float>()[i] : 0.f;
      mask[static_cast<size_t>(i)] = m;
      targets_h.data<int32_t>()[i] = m != 0.f ? label : -1;
      dloss_h.data<float>()[i] = m * loss_weight;
      num_tokens += m;
    }
    targets_h = parallel::classifier_targets(tp, targets_h, vocab);
    targets = device == Device::CPU ? targets_h : targets_h.to(device);
    dloss = device == Device::CPU ? dloss_h : dloss_h.to(device);
  }

  // The sums below read the classifier's per-token losses once from the device (`l`, N fp32).
  double loss_sum(const std::vector<float>& l) const {
    double s = 0;
    for (size_t i = 0; i < l.size(); ++i) s += static_cast<double>(mask[i]) * l[i];
    return s;
  }
  // Per token: mask * loss.
  std::vector<float> masked_losses(std::vector<float> l) const {
    for (size_t i = 0; i < l.size(); ++i) l[i] = mask[i] != 0.f ? mask[i] * l[i] : 0.f;
    return l;
  }
  // Per row: sum of mask * loss over the row's T tokens.
  std::vector<double> row_loss_sums(const std::vector<float>& l) const {
    std::vector<double> s(static_cast<size_t>(B), 0.0);
    for (size_t i = 0; i < l.size(); ++i) s[i / static_cast<size_t>(T)] += static_cast<double>(mask[i]) * l[i];
    return s;
  }
  // dloss = mask * the token's weight (a non-linear objective's gradient weights).
  void set_token_weights(const std::vector<float>& w, Device device) {
    PRIMUS_CHECK(static_cast<int64_t>(w.size()) == B * T,
                 "DecoderModel: {} token loss weights for a micro-batch of {} x {} tokens", w.size(), B, T);
    Tensor h = Tensor::empty({B * T}, DType::F32);
    for (int64_t i = 0; i < B * T; ++i) h.data<float>()[i] = mask[static_cast<size_t>(i)] * w[static_cast<size_t>(i)];
    dloss = device == Device::CPU ? h : h.to(device);
  }
};

LossWeightsHook row_loss_weights(int64_t rows, RowLossWeights fn) {
  return [rows, fn = std::move(fn)](const std::vector<float>& token_losses) {
    const size_t B = static_cast<size_t>(rows);
    PRIMUS_CHECK(B > 0 && token_losses.size() % B == 0, "row_loss_weights: {} token losses for {} rows",
                 token_losses.size(), B);
    const size_t T = token_losses.size() / B;
    std::vector<double> sums(B, 0.0);
    for (size_t i = 0; i < token_losses.size(); ++i) sums[i / T] += static_cast<double>(token_losses[i]);
    const std::vector<float> w = fn(sums);
    PRIMUS_CHECK(w.size() == B, "row_loss_weights: {} row weights for {} rows", w.size(), B);
    std::vector<float> out(token_losses.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = w[i / T];
    return out;
  };
}

DecoderModel::StageState::StageState(Device device) : arena_(device) {}
DecoderModel::StageState::~StageState() = default;

DecoderModel::DecoderModel(const ModelConfig& config, ops::Context& ctx, const DecoderOptions& options)
    : config_(config), ctx_(ctx), options_(options), own_(std::make_unique<StageState>(ctx.device())) {
  check_buildable(config_);
  PipelineStage& stage = options_.stage;
  if (stage.num_layers < 0) stage.num_layers = config_.num_layers - stage.first_layer;
  PRIMUS_CHECK(stage.first_layer >= 0 && stage.num_layers >= 0 &&
                   stage.first_layer + stage.num_layers <= config_.num_layers,
               "DecoderOptions.stage: layers [{}, {}) are not within the model's num_layers = {} (first_layer = {}, "
               "num_layers = {})",
               stage.first_layer, stage.first_layer + stage.num_layers, config_.num_layers, stage.first_layer,
               stage.num_layers);
  if (config_.num_query_groups <= 0) config_.num_query_groups = config_.num_attention_heads;
  PRIMUS_CHECK(options_.logits_chunk_rows > 0, "DecoderOptions.logits_chunk_rows must be > 0, got {}",
               options_.logits_chunk_rows);
  PRIMUS_CHECK(options_.linear_grad_dtype == DType::F32 ||
                   (options_.linear_grad_dtype == DType::BF16 && options_.param_dtype == DType::BF16),
               "DecoderOptions.linear_grad_dtype {} needs bf16 parameters (param_dtype is {})",
               dtype_name(options_.linear_grad_dtype), dtype_name(options_.param_dtype));
  set_recompute(options_.recompute, options_.recompute_num_layers);
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  validate_tensor_parallel(config_, tp, ctx_.device());
  validate_context_parallel(options_.context_parallel, ctx_.device());
  const parallel::ExpertParallel& ep = options_.expert_parallel;
  validate_expert_parallel(config_, ep, tp, ctx_.device());

  // This stage's slice of the parameter table, as this rank's shards.
  auto make = [&](const ParamSpec& spec) {
    auto p = std::make_unique<NamedTensor>();
    p->shard = shard_of(spec, tp.rank(), tp.size(), ep.rank(), ep.size());
    p->expert_parallel = splits_experts(spec.split) && ep.active();
    p->expert_shard = expert_shard_of(spec, ep.rank(), ep.size());
    p->name = spec.name;
    const Shape shape = p->shard.local_shape();
    NamedTensor* made = p.get();
    if (spec.trainable()) {
      p->value = Tensor::empty(shape, options_.param_dtype, ctx_.device());
      p->grad = Tensor::zeros(shape, spec.projection() ? options_.linear_grad_dtype : DType::F32, ctx_.device());
      p->no_weight_decay = spec.no_weight_decay();
      params_.push_back(std::move(p));
    } else {  // a buffer, no grad: the expert bias (fp32) or a frozen weight (LoRA's base)
      p->value = Tensor::empty(shape, spec.frozen ? options_.param_dtype : DType::F32, ctx_.device());
      buffers_.push_back(std::move(p));
    }
    specs_.emplace_back(made, spec);
    return made;
  };
  const bool lora = options_.lora.active();
  auto frozen_if_lora = [lora](std::vector<ParamSpec> specs) {
    for (ParamSpec& s : specs) s.frozen = lora;
    return specs;
  };
  const std::vector<ParamSpec> embedding = frozen_if_lora(embedding_params(config_));
  if (stage.pre_process) embedding_ = make(embedding.front());
  for (int64_t l = stage.first_layer; l < stage.first_layer + stage.num_layers; ++l) {
    const LayerSpec layer = decoder_layer(config_, l);
    std::map<std::string, NamedTensor*> held;
    for (const ParamSpec& spec : with_lora(config_, layer_params(config_, layer), options_.lora))
      held[spec.name] = make(spec);
    auto lookup = [&](const std::string& name) {
      const auto it = held.find(name);
      PRIMUS_CHECK(it != held.end(), "DecoderModel: layer {} has no parameter '{}'", l, name);
      return it->second;
    };
    LoraBinding binding{[&](const std::string& name) -> NamedTensor* {
                          const auto it = held.find(name);
                          return it == held.end() ? nullptr : it->second;
                        },
                        options_.lora.scaling()};
    layers_.push_back(make_decoder_layer(config_, layer, lookup, tp.size(), lora ? &binding : nullptr));
  }
  if (stage.post_process) {
    const std::vector<ParamSpec> head = frozen_if_lora(head_params(config_));
    final_norm_ = make(head.at(0));
    if (head.size() > 1) output_ = make(head.at(1));
    // The last stage's copy of the embedding (tied output layer, or MTP's; same name, same init).
    if (!stage.pre_process && config_.last_stage_reads_embedding()) embedding_ = make(embedding.front());
    for (int64_t k = 0; k < config_.mtp_num_layers; ++k) {
      std::map<std::string, NamedTensor*> held;
      for (const ParamSpec& spec : mtp_params(config_, k)) held[spec.name] = make(spec);
      auto lookup = [&](const std::string& name) {
        const auto it = held.find(name);
        PRIMUS_CHECK(it != held.end(), "DecoderModel: MTP module {} has no parameter '{}'", k, name);
        return it->second;
      };
      mtp_.emplace_back(config_, k, lookup, tp.size());
    }
  }
  rotary_ = rotary_of(config_);
  if (options_.fp8) {
    PRIMUS_CHECK(!lora, "DecoderModel: FP8 training with LoRA is not supported (fp8 with peft: lora)");
    std::vector<NamedTensor*> linears;
    for (const auto& [p, spec] : specs_) {
      if (!fp8_linear_name(spec.name) || !p->grad.defined()) continue;
      if (ctx_.device() == Device::CUDA)
        PRIMUS_CHECK(p->value.size(0) % 16 == 0 && p->value.size(1) % 16 == 0,
                     "fp8: {} is {} on this rank; FP8 GEMMs need both dimensions a multiple of 16 (change the "
                     "model's sizes or the tensor-parallel size, or remove fp8)",
                     spec.name, shape_str(p->value.shape()));
      linears.push_back(p);
    }
    fp8_ = std::make_unique<Fp8Training>(*options_.fp8, linears, ctx_.device());
  }
  init_weights(options_.seed);
}

void DecoderModel::set_recompute(Recompute mode, int64_t num_layers) {
  PRIMUS_CHECK(num_layers >= 0 && num_layers <= config_.num_layers,
               "recompute_num_layers = {} must be in [0, num_layers = {}] (0 = all layers)", num_layers,
               config_.num_layers);
  options_.recompute = mode;
  options_.recompute_num_layers = num_layers;
}

void DecoderModel::require_whole_model(const char* what) const {
  PRIMUS_CHECK(pre_process() && post_process() && options_.stage.num_layers == config_.num_layers,
               "DecoderModel::{} needs the whole model, but this one is a pipeline stage (layers [{}, {}), "
               "pre_process {}, post_process {}); use stage_forward / stage_backward (train/pipelined_model.h)",
               what, options_.stage.first_layer, options_.stage.first_layer + options_.stage.num_layers,
               pre_process(), post_process());
}

Shape DecoderModel::stage_hidden_shape(const Tensor& tokens) const {
  PRIMUS_CHECK(tokens.ndim() == 2, "DecoderModel: tokens must be [batch, seq], got {}", tokens.describe());
  return {options_.tensor_parallel.residual_rows(tokens.size(0) * tokens.size(1)), config_.hidden_size};
}

Recompute DecoderModel::layer_mode(int64_t layer) const {
  if (options_.recompute != Recompute::Full) return options_.recompute;
  return options_.recompute_num_layers == 0 || layer < options_.recompute_num_layers ? Recompute::Full
                                                                                      : Recompute::None;
}

std::vector<NamedTensor*> DecoderModel::parameters() {
  std::vector<NamedTensor*> out;
  out.reserve(params_.size());
  for (auto& p : params_) out.push_back(p.get());
  return out;
}

std::vector<NamedTensor*> DecoderModel::buffers() {
  std::vector<NamedTensor*> out;
  for (auto& b : buffers_) out.push_back(b.get());
  if (fp8_)
    for (NamedTensor* s : fp8_->state_tensors()) out.push_back(s);
  return out;
}

std::vector<MoeMlp*> DecoderModel::moe_layers() {
  std::vector<MoeMlp*> out;
  for (DecoderLayer& layer : layers_)
    if (auto* moe = dynamic_cast<MoeMlp*>(&layer.mlp())) out.push_back(moe);
  for (MtpModule& m : mtp_)
    if (auto* moe = dynamic_cast<MoeMlp*>(&m.layer().mlp())) out.push_back(moe);
  return out;
}

DecoderModel::StepResult& DecoderModel::StepResult::operator+=(const StepResult& o) {
  loss_sum += o.loss_sum;
  num_tokens += o.num_tokens;
  row_loss_sums.insert(row_loss_sums.end(), o.row_loss_sums.begin(), o.row_loss_sums.end());
  token_losses.insert(token_losses.end(), o.token_losses.begin(), o.token_losses.end());
  if (mtp_loss_sums.size() < o.mtp_loss_sums.size()) {
    mtp_loss_sums.resize(o.mtp_loss_sums.size(), 0.0);
    mtp_num_tokens.resize(o.mtp_num_tokens.size(), 0.0);
  }
  for (size_t k = 0; k < o.mtp_loss_sums.size(); ++k) {
    mtp_loss_sums[k] += o.mtp_loss_sums[k];
    mtp_num_tokens[k] += o.mtp_num_tokens[k];
  }
  return *this;
}

NamedTensor& DecoderModel::parameter(const std::string& name) {
  std::vector<std::string> names;
  for (auto& p : params_) {
    if (p->name == name) return *p;
    names.push_back(p->name);
  }
  fail("model '{}' has no parameter '{}'{}", config_.name, name, did_you_mean(name, names));
}

std::vector<NamedTensor*> DecoderModel::sequence_parallel_partial_grads() {
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  std::vector<NamedTensor*> out;
  if (options_.lora.active()) {  // only adapters train: their own rule (parallel/lora.h)
    for (const DecoderLayer& layer : layers_) {
      if (const auto* gqa = dynamic_cast<const GqaAttention*>(&layer.attention()))
        for (NamedTensor* p : gqa->lora_partial_grads(tp)) out.push_back(p);
      if (const auto* mlp = dynamic_cast<const DenseMlp*>(&layer.mlp()))
        for (NamedTensor* p : mlp->lora_partial_grads(tp)) out.push_back(p);
      if (const auto* mla = dynamic_cast<const MlaAttention*>(&layer.attention()))
        for (NamedTensor* p : mla->lora_partial_grads(tp)) out.push_back(p);
      if (const auto* moe = dynamic_cast<const MoeMlp*>(&layer.mlp()))
        for (NamedTensor* p : moe->lora_partial_grads(tp)) out.push_back(p);
    }
    return out;
  }
  return parallel::sequence_parallel_partial_grads(tp, parameters());
}

void DecoderModel::reduce_sequence_parallel_grads() {
  for (NamedTensor* p : sequence_parallel_partial_grads())
    options_.tensor_parallel.group->all_reduce(p->grad, parallel::ReduceOp::Sum);
}

int64_t DecoderModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p->value.numel();
  return n;
}

void DecoderModel::init_weights(uint64_t seed) {
  const float std = static_cast<float>(config_.init_method_std);
  const float out_std = std / std::sqrt(2.f * static_cast<float>(config_.num_layers));
  for (auto& [param, spec] : specs_) {
    NamedTensor& p = *param;
    const ParamInit init = spec.init;
    if (init == ParamInit::Ones || init == ParamInit::Zeros) {
      ops::fill(ctx_, p.value, init == ParamInit::Ones ? 1.f : 0.f);
      continue;
    }
    const float sigma = init == ParamInit::ScaledNormal ? out_std
                        : init == ParamInit::LoraA
                            ? 1.f / std::sqrt(3.f * static_cast<float>(p.shard.full_shape.back()))
                            : std;
    if (p.value.device() != Device::CPU) {
      // Generated in place on the device (same values as the host path below): a 1B model
      // initialised on the host and copied over took ~8 s of start-up.
      std::vector<ops::Backend::NormalRun> runs;
      for (const parallel::ShardRun& r : parallel::shard_runs(p.shard, p.expert_shard))
        runs.push_back({r.local_offset, r.full_offset, r.numel});
      ops::fill_normal(ctx_, p.value, seed, stream_id(p.name), 0.f, sigma, runs);
      continue;
    }
    Tensor host = Tensor::empty(p.value.shape(), DType::F32);
    fill_normal_parallel(host, CounterRng(seed, stream_id(p.name)), sigma,
                         parallel::shard_runs(p.shard, p.expert_shard));
    p.value.copy_from(host);  // fp32 on the CPU
  }
}

void DecoderModel::zero_grads() {
  for (auto& p : params_) p->grad.zero_();
  overwrite_pending_ = false;
}

void DecoderModel::zero_grads_for_overwrite() {
  require_whole_model("zero_grads_for_overwrite");
  std::vector<const NamedTensor*> written;  // every element written by a beta = 0 GEMM
  for (const DecoderLayer& layer : layers_)
    for (const NamedTensor* p : layer.overwritten_grads()) written.push_back(p);
  for (const MtpModule& m : mtp_)
    for (const NamedTensor* p : m.overwritten_grads()) written.push_back(p);
  if (output_ != nullptr) written.push_back(output_);  // untied; a tied one also gets embedding grads
  for (auto& p : params_)
    if (std::find(written.begin(), written.end(), p.get()) == written.end()) p->grad.zero_();
  overwrite_pending_ = true;
}

NamedTensor& DecoderModel::output_weight() { return output_ != nullptr ? *output_ : *embedding_; }

TokenDims DecoderModel::dims_for(int64_t B, int64_t T) const {
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  return TokenDims{B, T, config_.hidden_size, tp.sp() ? tp.size() : 1};
}

LayerEnv DecoderModel::make_env(const TokenDims& d, Arena& arena) {
  if (!rope_cos_.defined() || rope_cos_.size(0) != d.T) {
    Tensor cos, sin;
    const parallel::ContextParallel& cp = options_.context_parallel;
    if (cp.active()) {
      // Context parallel: the T local columns are two chunks of a sequence of T * cp tokens; row t
      // of the tables is the row of local column t's real position.
      Tensor full_cos, full_sin;
      ops::rope_tables(full_cos, full_sin, d.T * cp.size(), rotary_.inv_freq, rotary_.table_scale);
      const std::vector<int64_t> pos = parallel::context_parallel_positions(d.T * cp.size(), cp.rank(), cp.size());
      const int64_t half = full_cos.size(1);
      cos = Tensor::empty({d.T, half}, DType::F32);
      sin = Tensor::empty({d.T, half}, DType::F32);
      for (int64_t t = 0; t < d.T; ++t)
        for (int64_t i = 0; i < half; ++i) {
          cos.data<float>()[t * half + i] = full_cos.data<float>()[pos[static_cast<size_t>(t)] * half + i];
          sin.data<float>()[t * half + i] = full_sin.data<float>()[pos[static_cast<size_t>(t)] * half + i];
        }
    } else {
      ops::rope_tables(cos, sin, d.T, rotary_.inv_freq, rotary_.table_scale);
    }
    rope_cos_ = cos.to(ctx_.device());
    rope_sin_ = sin.to(ctx_.device());
  }
  LayerEnv env{ctx_, arena, d, rope_cos_, rope_sin_, static_cast<float>(config_.norm_epsilon),
               options_.tensor_parallel, options_.expert_parallel};
  env.cp = options_.context_parallel;
  env.fp8 = fp8_.get();
  return env;
}

void DecoderModel::forward_layers(LayerEnv& env, std::vector<Tensor>& xs, std::vector<LayerActivations>& acts,
                                  bool keep_acts) {
  const TokenDims& d = env.dims;
  const auto L = static_cast<int64_t>(layers_.size());
  xs.resize(static_cast<size_t>(L + 1));
  acts.clear();
  acts.resize(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    for (const NamedTensor* t : layers_[l].params()) param_needed(t);
    xs[l + 1] = env.arena.alloc({d.residual_rows(), d.C}, options_.param_dtype);
    layers_[l].forward(env, xs[l], xs[l + 1], acts[l], keep_acts ? layer_mode(l) : Recompute::Full);
  }
}

void DecoderModel::classifier(const Batch& batch, const Tensor& hidden, Tensor& losses, Tensor* dhidden,
                              Arena& arena, bool may_overwrite) {
  NamedTensor& out = output_weight();
  parallel::ClassifierOptions co;
  co.chunk_rows = options_.logits_chunk_rows;
  co.fused_cross_entropy = options_.fused_cross_entropy;
  // The first chunk writes an untied output layer's grad when the step's grads were not zeroed.
  co.overwrite_weight_grad = may_overwrite && overwrite_pending_ && output_ != nullptr;
  parallel::output_layer_loss(ctx_, options_.tensor_parallel, arena, hidden, out.value,
                              dhidden != nullptr ? &out.grad : nullptr, batch.targets,
                              dhidden != nullptr ? &batch.dloss : nullptr, losses, dhidden, co);
}

void DecoderModel::set_packing(StageState& st, const MicroBatchExtras& extras, const TokenDims& d) {
  st.rope_cos_ = st.rope_sin_ = st.segments_ = Tensor();
  PRIMUS_CHECK((extras.positions == nullptr) == (extras.segments == nullptr),
               "DecoderModel: packed rows need both positions and segments");
  if (extras.positions == nullptr) return;
  PRIMUS_CHECK(!options_.context_parallel.active(), "model config '{}': packed rows (reset_position_ids / "
               "reset_attention_mask, post-training packing) are not supported with context_parallel_size = {}; turn "
               "packing off or set context_parallel_size: 1", config_.name, options_.context_parallel.size());
  const Shape bt{d.B, d.T};
  for (const Tensor* t : {extras.positions, extras.segments})
    PRIMUS_CHECK(t->shape() == bt && t->dtype() == DType::I32,
                 "DecoderModel: packed-row positions / segments must be int32 [{}, {}] like tokens, got {}", d.B, d.T,
                 t->describe());
  PRIMUS_CHECK(mtp_.empty(), "model config '{}': packed sequences with multi-token prediction are not supported "
               "(the MTP depths shift labels across documents); turn packing off", config_.name);
  Arena& arena = st.arena_;
  auto on_device = [&](const Tensor& t) {
    if (t.device() == ctx_.device()) return t;
    Tensor out = arena.alloc(t.shape(), t.dtype());
    out.copy_from(t);
    return out;
  };
  const Tensor positions = on_device(*extras.positions);
  st.segments_ = on_device(*extras.segments);
  // Positions are < T (a document lies inside its row): rows of the (T, R/2) tables.
  st.rope_cos_ = arena.alloc({d.N(), rope_cos_.size(1)}, DType::F32);
  st.rope_sin_ = arena.alloc({d.N(), rope_sin_.size(1)}, DType::F32);
  ops::rope_gather_tables(ctx_, st.rope_cos_, st.rope_sin_, rope_cos_, rope_sin_, positions.view({d.N()}));
}

void DecoderModel::use_packing(LayerEnv& env, const StageState& st) const {
  if (!st.segments_.defined()) return;
  env.rope_cos = st.rope_cos_;
  env.rope_sin = st.rope_sin_;
  env.segments = st.segments_;
}

Tensor DecoderModel::stage_forward(StageState& st, const Tensor& tokens, const Tensor* labels, const Tensor* loss_mask,
                                   const Tensor* input_hidden, float loss_weight, bool for_backward,
                                   float aux_loss_weight, const MicroBatchExtras& extras) {
  const bool pre = pre_process(), post = post_process();
  PRIMUS_CHECK(!post || (labels != nullptr && loss_mask != nullptr),
               "DecoderModel::stage_forward: the last pipeline stage computes the loss and needs labels and loss_mask");
  PRIMUS_CHECK(pre || input_hidden != nullptr,
               "DecoderModel::stage_forward: a stage without the embedding (layers from {}) needs the input hidden "
               "state from the previous stage",
               options_.stage.first_layer);
  Arena& arena = st.arena_;
  arena.reset();
  st.backward_pending_ = false;
  st.result_ = {};
  st.batch_ = std::make_unique<Batch>(tokens, post ? labels : nullptr, post ? loss_mask : nullptr, loss_weight,
                                      config_.padded_vocab_size, ctx_.device(), options_.tensor_parallel, pre);
  Batch& batch = *st.batch_;
  st.dims_ = dims_for(batch.B, batch.T);
  const TokenDims& d = st.dims_;
  LayerEnv env = make_env(d, arena);
  set_packing(st, extras, d);
  use_packing(env, st);
  env.training = for_backward;
  env.lora_dropout = for_backward ? extras.lora_dropout : nullptr;  // the layers keep a copy for backward
  env.aux_loss_weight = st.aux_loss_weight_ = for_backward ? aux_loss_weight : 0.f;
  const DType dt = options_.param_dtype;
  const int64_t R = d.residual_rows();
  st.xs_.assign(1, arena.alloc({R, d.C}, dt));
  Tensor& x0 = st.xs_[0];
  if (pre) {
    param_needed(embedding_);
    parallel::embedding_forward(ctx_, env.tp, arena, x0, batch.tokens, embedding_->value);
  } else {
    PRIMUS_CHECK(input_hidden->shape() == x0.shape() && input_hidden->dtype() == dt,
                 "DecoderModel::stage_forward: input hidden is {}, expected [{}, {}] {} (this rank's residual rows)",
                 input_hidden->describe(), R, d.C, dtype_name(dt));
    ops::copy_cast(ctx_, x0, *input_hidden);
  }
  forward_layers(env, st.xs_, st.acts_, for_backward);
  if (!post) {
    st.backward_pending_ = for_backward;
    return st.xs_.back();
  }
  param_needed(final_norm_);
  param_needed(&output_weight());
  Tensor hidden = arena.alloc({R, d.C}, dt);
  st.final_rstd_ = arena.alloc({R}, DType::F32);
  ops::rmsnorm_forward(ctx_, hidden, st.final_rstd_, st.xs_.back(), final_norm_->value, env.norm_eps);
  Tensor losses = arena.alloc({d.N()}, DType::F32);
  // Context parallel: objectives over rows (DPO's log-probs, the hooks) read whole rows: the
  // masked token losses of every cp rank's columns, gathered (a few bytes per token).
  const parallel::ContextParallel& cp = options_.context_parallel;
  const auto whole = [&](std::vector<float> masked) {
    if (!cp.active()) return masked;
    const Tensor t = Tensor::from_floats(masked, {d.B, d.T});
    return parallel::context_parallel_full_rows(t, cp).to_float_vector();
  };
  if (for_backward && extras.loss_weights != nullptr) {
    // A non-linear objective: the tokens' losses first, then the gradient with their weights.
    classifier(batch, hidden, losses, nullptr, arena);
    std::vector<float> w = (*extras.loss_weights)(whole(batch.masked_losses(losses.to_float_vector())));
    if (cp.active()) {
      const int64_t full_T = d.T * cp.size();
      PRIMUS_CHECK(static_cast<int64_t>(w.size()) == d.B * full_T,
                   "DecoderModel: {} token loss weights for {} whole rows of {} tokens", w.size(), d.B, full_T);
      w = parallel::context_parallel_columns(Tensor::from_floats(w, {d.B, full_T}), cp.rank(), cp.size())
              .to_float_vector();
    }
    batch.set_token_weights(w, ctx_.device());
  }
  const trace::Range range("output layer and loss");
  if (for_backward) {
    st.dhidden_ = arena.alloc({R, d.C}, dt);
    classifier(batch, hidden, losses, &st.dhidden_, arena);
  } else {
    st.dhidden_ = Tensor();
    classifier(batch, hidden, losses, nullptr, arena);
  }
  st.result_ = StepResult{};
  std::vector<float> token_losses = losses.to_float_vector();
  st.result_.loss_sum = batch.loss_sum(token_losses);
  st.result_.num_tokens = batch.num_tokens;
  if (!cp.active()) {
    st.result_.row_loss_sums = batch.row_loss_sums(token_losses);
    if (extras.keep_token_losses) st.result_.token_losses = batch.masked_losses(std::move(token_losses));
  } else {  // whole rows: the same on every cp rank
    std::vector<float> rows = whole(batch.masked_losses(std::move(token_losses)));
    const size_t T = rows.size() / static_cast<size_t>(d.B);
    st.result_.row_loss_sums.assign(static_cast<size_t>(d.B), 0.0);
    for (size_t i = 0; i < rows.size(); ++i) st.result_.row_loss_sums[i / T] += static_cast<double>(rows[i]);
    if (extras.keep_token_losses) st.result_.token_losses = std::move(rows);
  }
  if (!mtp_.empty()) mtp_forward(st, env, tokens, *labels, *loss_mask, loss_weight, for_backward);
  st.backward_pending_ = for_backward;
  return Tensor();
}

namespace {
// (B, T) on the host with row b, column i = t[b, i + shift], `fill` past the end of the row.
template <typename T>
Tensor roll_left(const Tensor& t, int64_t shift, T fill) {
  const Tensor h = to_host(t);
  const int64_t B = h.size(0), S = h.size(1);
  Tensor out = Tensor::empty({B, S}, h.dtype());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i)
      out.data<T>()[b * S + i] = i + shift < S ? h.data<T>()[b * S + i + shift] : fill;
  return out;
}
}  // namespace

void DecoderModel::mtp_forward(StageState& st, LayerEnv& env, const Tensor& tokens, const Tensor& labels,
                               const Tensor& loss_mask, float loss_weight, bool for_backward) {
  Arena& arena = st.arena_;
  const TokenDims& d = st.dims_;
  const DType dt = options_.param_dtype;
  const auto D = static_cast<int64_t>(mtp_.size());
  const float weight = loss_weight * static_cast<float>(config_.mtp_loss_scaling_factor / static_cast<double>(D));
  st.mtp_batches_.clear();
  st.mtp_acts_.clear();
  st.mtp_acts_.resize(static_cast<size_t>(D));
  st.mtp_dhidden_.assign(static_cast<size_t>(D), Tensor());
  st.result_.mtp_loss_sums.assign(static_cast<size_t>(D), 0.0);
  st.result_.mtp_num_tokens.assign(static_cast<size_t>(D), 0.0);
  param_needed(embedding_);  // a last stage's copy (pipeline parallel) may not be in use yet
  // The shifts run along whole rows: under context parallel, the rows of every cp rank's
  // columns, shifted, then this rank's columns again.
  const parallel::ContextParallel& cp = options_.context_parallel;
  const Tensor full_tokens = parallel::context_parallel_full_rows(tokens, cp);
  const Tensor full_labels = parallel::context_parallel_full_rows(labels, cp);
  const Tensor full_mask = parallel::context_parallel_full_rows(loss_mask, cp);
  auto local = [&](const Tensor& t) {
    return cp.active() ? parallel::context_parallel_columns(t, cp.rank(), cp.size()) : t;
  };
  for (int64_t k = 0; k < D; ++k) {
    const Tensor tk = local(roll_left<int32_t>(full_tokens, k + 1, 0));
    const Tensor lk = local(roll_left<int32_t>(full_labels, k + 1, -1));
    const Tensor mk = local(roll_left<float>(full_mask, k + 1, 0.f));
    st.mtp_batches_.push_back(std::make_unique<Batch>(tk, &lk, &mk, weight, config_.padded_vocab_size, ctx_.device(),
                                                      options_.tensor_parallel));
    const Batch& b = *st.mtp_batches_.back();
    Tensor emb = arena.alloc({d.residual_rows(), d.C}, dt);
    parallel::embedding_forward(ctx_, env.tp, arena, emb, b.tokens, embedding_->value);
    MtpModule::Acts& a = st.mtp_acts_[static_cast<size_t>(k)];
    const Tensor prev = k == 0 ? st.xs_.back() : st.mtp_acts_[static_cast<size_t>(k - 1)].out;
    mtp_[static_cast<size_t>(k)].forward(env, prev, emb, a);
    Tensor losses = arena.alloc({d.N()}, DType::F32);
    Tensor* dh = nullptr;
    if (for_backward) {
      st.mtp_dhidden_[static_cast<size_t>(k)] = arena.alloc({d.residual_rows(), d.C}, dt);
      dh = &st.mtp_dhidden_[static_cast<size_t>(k)];
    }
    classifier(b, a.normed, losses, dh, arena, /*may_overwrite=*/false);
    st.result_.mtp_loss_sums[static_cast<size_t>(k)] = b.loss_sum(losses.to_float_vector());
    st.result_.mtp_num_tokens[static_cast<size_t>(k)] = b.num_tokens;
  }
}

Tensor DecoderModel::mtp_backward(StageState& st, LayerEnv& env) {
  Arena& arena = st.arena_;
  const TokenDims& d = st.dims_;
  const DType dt = options_.param_dtype;
  Tensor dnext;  // d loss / d (depth k's output) from depth k + 1
  for (auto k = static_cast<int64_t>(mtp_.size()) - 1; k >= 0; --k) {
    const auto i = static_cast<size_t>(k);
    Tensor demb = arena.alloc({d.residual_rows(), d.C}, dt);
    Tensor dprev = arena.zeros({d.residual_rows(), d.C}, dt);
    mtp_[i].backward(env, st.mtp_acts_[i], st.mtp_dhidden_[i], dnext.defined() ? &dnext : nullptr, demb, dprev);
    if (embedding_->grad.defined())  // frozen under LoRA
      parallel::embedding_backward(ctx_, env.tp, arena, embedding_->grad, demb, st.mtp_batches_[i]->tokens);
    const std::vector<NamedTensor*> done = mtp_[i].params();
    for (auto it = done.rbegin(); it != done.rend(); ++it) grad_ready(*it);
    dnext = dprev;
  }
  return dnext;
}

Tensor DecoderModel::stage_backward(StageState& st, const Tensor* d_output) {
  PRIMUS_CHECK(st.backward_pending_,
               "DecoderModel::stage_backward: this state holds no forward to differentiate (stage_forward with "
               "for_backward was not called, or its backward already ran)");
  st.backward_pending_ = false;
  const bool pre = pre_process(), post = post_process();
  Arena& arena = st.arena_;
  const TokenDims& d = st.dims_;
  LayerEnv env = make_env(d, arena);
  use_packing(env, st);
  env.training = true;  // a full-recompute layer re-runs its training forward here
  env.aux_loss_weight = st.aux_loss_weight_;
  env.overwrite_linear_grads = overwrite_pending_;
  overwrite_pending_ = false;  // later micro-batches accumulate
  const DType dt = options_.param_dtype;
  Tensor dres;
  if (post) {
    dres = arena.zeros({d.residual_rows(), d.C}, dt);
    Tensor dw_norm = norm_weight_grad(env, *final_norm_);
    ops::rmsnorm_backward(ctx_, dres, dw_norm, st.dhidden_, st.xs_.back(), final_norm_->value, st.final_rstd_);
    if (!mtp_.empty()) {
      const Tensor dtrunk = mtp_backward(st, env);
      ops::add(ctx_, dres, dres, dtrunk);
    }
    grad_ready(final_norm_);
    grad_ready(output_);                 // untied output layer
    if (!pre) grad_ready(embedding_);    // a last stage's copy of the embedding (tied, or MTP's)
  } else {
    PRIMUS_CHECK(d_output != nullptr && d_output->shape() == st.xs_.back().shape() && d_output->dtype() == dt,
                 "DecoderModel::stage_backward: d output hidden is {}, expected [{}, {}] {}",
                 d_output != nullptr ? d_output->describe() : std::string("missing"), d.residual_rows(), d.C,
                 dtype_name(dt));
    dres = arena.alloc({d.residual_rows(), d.C}, dt);
    ops::copy_cast(ctx_, dres, *d_output);
  }
  for (auto l = static_cast<int64_t>(layers_.size()) - 1; l >= 0; --l) {
    layers_[l].backward(env, st.acts_[l], dres, layer_mode(l));
    const std::vector<NamedTensor*> done = layers_[l].params();
    for (auto it = done.rbegin(); it != done.rend(); ++it) grad_ready(*it);
  }
  if (!pre) return dres;
  const Batch& batch = *st.batch_;
  if (embedding_->grad.defined()) {  // frozen under LoRA
    parallel::embedding_backward(ctx_, env.tp, arena, embedding_->grad, dres, batch.tokens);
    grad_ready(embedding_);
  }
  return Tensor();
}

DecoderModel::StepResult DecoderModel::forward_backward(const Tensor& tokens, const Tensor& labels,
                                                        const Tensor& loss_mask, float loss_weight,
                                                        float aux_loss_weight, const MicroBatchExtras& extras) {
  require_whole_model("forward_backward");
  stage_forward(*own_, tokens, &labels, &loss_mask, nullptr, loss_weight, true, aux_loss_weight, extras);
  stage_backward(*own_, nullptr);
  return own_->result();
}

DecoderModel::StepResult DecoderModel::forward_only(const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask,
                                                    const MicroBatchExtras& extras) {
  require_whole_model("forward_only");
  stage_forward(*own_, tokens, &labels, &loss_mask, nullptr, 0.f, false, 0.f, extras);
  return own_->result();
}

Tensor DecoderModel::logits(const Tensor& tokens) {
  require_whole_model("logits");
  Arena& arena = own_->arena_;
  arena.reset();
  own_->backward_pending_ = false;
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  const Batch batch(tokens, nullptr, nullptr, 0.f, config_.padded_vocab_size, ctx_.device(), tp);
  const TokenDims d = dims_for(batch.B, batch.T);
  LayerEnv env = make_env(d, arena);
  const DType dt = options_.param_dtype;
  std::vector<Tensor> xs{arena.alloc({d.residual_rows(), d.C}, dt)};
  parallel::embedding_forward(ctx_, tp, arena, xs[0], batch.tokens, embedding_->value);
  std::vector<LayerActivations> acts;
  forward_layers(env, xs, acts, false);
  Tensor hidden = arena.alloc({d.residual_rows(), d.C}, dt);
  Tensor final_rstd = arena.alloc({d.residual_rows()}, DType::F32);
  ops::rmsnorm_forward(ctx_, hidden, final_rstd, xs.back(), final_norm_->value, env.norm_eps);
  const NamedTensor& out = output_weight();
  Tensor logits = arena.alloc({d.N(), out.value.size(0)}, dt);
  parallel::column_parallel_linear_forward(ctx_, tp, arena, logits, hidden, out.value);
  return parallel::gather_vocab_logits(tp, logits).view({d.B, d.T, config_.padded_vocab_size});
}

}  // namespace primus

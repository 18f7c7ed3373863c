#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include <fmt/format.h>

#include "core/rng.h"
#include "core/strings.h"

namespace primus {

Recompute parse_recompute_granularity(std::string_view value) {
  if (value.empty() || value == "none" || value == "null") return Recompute::None;
  if (value == "selective") return Recompute::Selective;
  if (value == "full") return Recompute::Full;
  fail("recompute_granularity: '{}' is not one of null, selective, full{}", value,
       did_you_mean(value, {"selective", "full", "null"}));
}

namespace {

template <typename T>
void require_config(bool ok, const ModelConfig& c, const char* key, const T& seen, const char* expected) {
  if (!ok)
    fail("model config '{}': {} = {} is not supported by the Llama model (expected {})", c.name, key, seen,
         expected);
}

void validate(const ModelConfig& c) {
  require_config(c.num_layers > 0, c, "num_layers", c.num_layers, "> 0");
  require_config(c.hidden_size > 0, c, "hidden_size", c.hidden_size, "> 0");
  require_config(c.ffn_hidden_size > 0, c, "ffn_hidden_size", c.ffn_hidden_size, "> 0");
  require_config(c.num_attention_heads > 0, c, "num_attention_heads", c.num_attention_heads, "> 0");
  require_config(c.padded_vocab_size > 0, c, "padded_vocab_size", c.padded_vocab_size, "> 0 (set by the tokenizer)");
  const int64_t groups = c.num_query_groups > 0 ? c.num_query_groups : c.num_attention_heads;
  require_config(c.num_attention_heads % groups == 0, c, "num_query_groups", groups,
                 "a divisor of num_attention_heads");
  require_config(c.head_dim() > 0, c, "kv_channels", c.head_dim(), "> 0");
  const double rot = c.head_dim() * c.rotary_percent;
  require_config(rot >= 2 && std::fabs(rot - std::round(rot)) < 1e-9 && static_cast<int64_t>(std::round(rot)) % 2 == 0,
                 c, "rotary_percent", c.rotary_percent, "a fraction giving an even number of rotary dims");
  require_config(c.normalization == "RMSNorm", c, "normalization", c.normalization, "RMSNorm");
  require_config(c.swiglu, c, "swiglu", c.swiglu, "true");
  require_config(c.position_embedding_type == "rope", c, "position_embedding_type", c.position_embedding_type, "rope");
  require_config(!c.add_bias_linear, c, "add_bias_linear", c.add_bias_linear, "false");
  require_config(!c.add_qkv_bias, c, "add_qkv_bias", c.add_qkv_bias, "false");
  require_config(c.num_experts == 0, c, "num_experts", c.num_experts, "0 (MoE models are not the dense Llama)");
  require_config(!c.multi_latent_attention, c, "multi_latent_attention", c.multi_latent_attention, "false");
  require_config(c.mtp_num_layers == 0, c, "mtp_num_layers", c.mtp_num_layers, "0");
  require_config(c.rotary_scaling_factor == 1.0, c, "rotary_scaling_factor", c.rotary_scaling_factor,
                 "1 (YaRN scaling belongs to DeepSeek models; Llama 3.1 uses use_rope_scaling)");
  require_config(c.norm_epsilon > 0, c, "norm_epsilon", c.norm_epsilon, "> 0");
  require_config(!c.rotary_interleaved, c, "rotary_interleaved", c.rotary_interleaved,
                 "false (Llama rotates halves of each head)");
  require_config(c.attention_dropout == 0.0, c, "attention_dropout", c.attention_dropout,
                 "0 (dropout is not implemented; Llama pretraining uses none)");
  require_config(c.hidden_dropout == 0.0, c, "hidden_dropout", c.hidden_dropout,
                 "0 (dropout is not implemented; Llama pretraining uses none)");
  require_config(c.vocab_size <= c.padded_vocab_size, c, "vocab_size", c.vocab_size,
                 "<= padded_vocab_size (the embedding rows)");
}

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

// The tensor-parallel layout rules that the config must meet (all violations at once).
void validate_tensor_parallel(const ModelConfig& c, const parallel::TensorParallel& tp, Device device) {
  if (tp.group == nullptr) {
    PRIMUS_CHECK(!tp.sequence_parallel, "LlamaOptions.tensor_parallel: sequence_parallel needs a tensor-parallel "
                 "group (tensor_model_parallel_size > 1)");
    return;
  }
  PRIMUS_CHECK(tp.group->device() == device, "LlamaOptions.tensor_parallel: the tp group '{}' works on {} tensors but "
               "the model runs on {}", tp.group->name(), device_name(tp.group->device()), device_name(device));
  const int64_t P = tp.size();
  std::string bad;
  auto need = [&](const char* key, int64_t value) {
    if (value % P != 0) bad += fmt::format("\n  {} = {} is not divisible by tensor_model_parallel_size = {}", key, value, P);
  };
  need("num_attention_heads", c.num_attention_heads);
  need("num_query_groups", c.num_query_groups);
  need("ffn_hidden_size", c.ffn_hidden_size);
  need("padded_vocab_size", c.padded_vocab_size);
  if (!bad.empty()) fail("model config '{}' does not split over {} tensor-parallel ranks:{}", c.name, P, bad);
}

Tensor to_host(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

}  // namespace

// Host-side preparation of a micro-batch: targets with ignored tokens set to -1, the
// per-token loss weights, and the device copies.
// Under tensor parallel, `targets` are local to this rank's vocabulary slice
// (parallel::vocab_parallel_targets) and `routed` says which token rows look up its slice.
struct LlamaModel::Batch {
  int64_t B = 0, T = 0;
  Tensor tokens, targets, dloss;  // on the model's device: (N) int32, (N) int32, (N) fp32
  std::vector<float> mask;        // effective mask (0 where the label is ignored)
  double num_tokens = 0;
  parallel::VocabParallelTokens routed;  // tensor parallel only

  // needs_tokens: the ids are looked up here (the stage holds the embedding).
  Batch(const Tensor& tokens_in, const Tensor* labels_in, const Tensor* mask_in, float loss_weight, int64_t vocab,
        Device device, const parallel::TensorParallel& tp, bool needs_tokens = true) {
    PRIMUS_CHECK(tokens_in.ndim() == 2 && tokens_in.dtype() == DType::I32,
                 "LlamaModel: tokens must be int32 [batch, seq], got {}", tokens_in.describe());
    B = tokens_in.size(0);
    T = tokens_in.size(1);
    const int64_t N = B * T;
    PRIMUS_CHECK(!tp.sp() || N % tp.size() == 0,
                 "LlamaModel: sequence parallel splits the {} x {} = {} token rows of a micro-batch over {} "
                 "tensor-parallel ranks, which does not divide; use a seq_length divisible by "
                 "tensor_model_parallel_size", B, T, N, tp.size());
    if (needs_tokens) tokens = tokens_in.device() == device ? tokens_in.view({N}) : tokens_in.to(device).view({N});
    const parallel::VocabRange range = parallel::vocab_range(tp, vocab);
    if (tp.active() && needs_tokens) routed = parallel::VocabParallelTokens::route(to_host(tokens_in).view({N}), range, device);
    if (labels_in == nullptr) return;
    PRIMUS_CHECK(mask_in != nullptr, "LlamaModel: labels given without a loss_mask");
    PRIMUS_CHECK(labels_in->shape() == tokens_in.shape() && labels_in->dtype() == DType::I32,
                 "LlamaModel: labels must be int32 {} like tokens, got {}", shape_str(tokens_in.shape()),
                 labels_in->describe());
    PRIMUS_CHECK(mask_in->shape() == tokens_in.shape() && mask_in->dtype() == DType::F32,
                 "LlamaModel: loss_mask must be fp32 {} like tokens, got {}", shape_str(tokens_in.shape()),
                 mask_in->describe());
    const Tensor labels_h = to_host(*labels_in), mask_h = to_host(*mask_in);
    Tensor targets_h = Tensor::empty({N}, DType::I32), dloss_h = Tensor::empty({N}, DType::F32);
    mask.resize(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      const int32_t label = labels_h.data<int32_t>()[i];
      PRIMUS_CHECK(label < vocab, "LlamaModel: label {} at position {} is >= padded_vocab_size {}", label, i, vocab);
      const float m = label >= 0 ? mask_h.data<float>()[i] : 0.f;
      mask[static_cast<size_t>(i)] = m;
      targets_h.data<int32_t>()[i] = m != 0.f ? label : -1;
      dloss_h.data<float>()[i] = m * loss_weight;
      num_tokens += m;
    }
    if (tp.active()) targets_h = parallel::vocab_parallel_targets(targets_h, range);
    targets = device == Device::CPU ? targets_h : targets_h.to(device);
    dloss = device == Device::CPU ? dloss_h : dloss_h.to(device);
  }

  double loss_sum(const Tensor& losses) const {
    const std::vector<float> l = losses.to_float_vector();
    double s = 0;
    for (size_t i = 0; i < l.size(); ++i) s += static_cast<double>(mask[i]) * l[i];
    return s;
  }
};

LlamaModel::StageState::StageState(Device device) : arena_(device) {}
LlamaModel::StageState::~StageState() = default;

LlamaModel::LlamaModel(const ModelConfig& config, ops::Context& ctx, const LlamaOptions& options)
    : config_(config), ctx_(ctx), options_(options), own_(std::make_unique<StageState>(ctx.device())) {
  validate(config_);
  PipelineStage& stage = options_.stage;
  if (stage.num_layers < 0) stage.num_layers = config_.num_layers - stage.first_layer;
  PRIMUS_CHECK(stage.first_layer >= 0 && stage.num_layers >= 0 &&
                   stage.first_layer + stage.num_layers <= config_.num_layers,
               "LlamaOptions.stage: layers [{}, {}) are not within the model's num_layers = {} (first_layer = {}, "
               "num_layers = {})",
               stage.first_layer, stage.first_layer + stage.num_layers, config_.num_layers, stage.first_layer,
               stage.num_layers);
  if (config_.num_query_groups <= 0) config_.num_query_groups = config_.num_attention_heads;
  PRIMUS_CHECK(options_.logits_chunk_rows > 0, "LlamaOptions.logits_chunk_rows must be > 0, got {}",
               options_.logits_chunk_rows);
  set_recompute(options_.recompute, options_.recompute_num_layers);
  const bool tied = !config_.untie_embeddings_and_output_weights;
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  validate_tensor_parallel(config_, tp, ctx_.device());
  const int64_t C = config_.hidden_size, F = config_.ffn_hidden_size, V = config_.padded_vocab_size;
  const int64_t D = config_.head_dim(), Hq = config_.num_attention_heads, Hkv = config_.num_query_groups;
  // A parameter of full shape `full`; sharded over tp along `dim` (parts as in ShardSpec)
  // unless dim < 0 or there is one tp rank.
  auto make = [&](std::string name, Shape full, bool no_wd, int dim = -1, std::vector<int64_t> parts = {}) {
    auto p = std::make_unique<NamedTensor>();
    p->shard = dim >= 0 && tp.active()
                   ? parallel::ShardSpec::split(std::move(full), dim, tp.rank(), tp.size(), std::move(parts), name)
                   : parallel::ShardSpec::replicated(std::move(full));
    p->name = std::move(name);
    const Shape shape = p->shard.local_shape();
    p->value = Tensor::empty(shape, options_.param_dtype, ctx_.device());
    p->grad = Tensor::zeros(shape, DType::F32, ctx_.device());
    p->no_weight_decay = no_wd;
    params_.push_back(std::move(p));
    return params_.back().get();
  };
  const int kColumnParallel = 0, kRowParallel = 1;  // the split dim of a (out, in) weight
  const char* kEmbedding = "embedding.word_embeddings.weight";
  if (stage.pre_process) embedding_ = make(kEmbedding, {V, C}, false, kColumnParallel);  // vocab-parallel
  for (int64_t l = stage.first_layer; l < stage.first_layer + stage.num_layers; ++l) {
    const std::string pre = "decoder.layers." + std::to_string(l) + ".";
    LlamaLayerParams lp;
    lp.input_norm = make(pre + "input_layernorm.weight", {C}, true);
    lp.qkv = make(pre + "self_attention.linear_qkv.weight", {(Hq + 2 * Hkv) * D, C}, false, kColumnParallel,
                  {Hq * D, Hkv * D, Hkv * D});
    lp.proj = make(pre + "self_attention.linear_proj.weight", {C, Hq * D}, false, kRowParallel);
    lp.mlp_norm = make(pre + "pre_mlp_layernorm.weight", {C}, true);
    lp.fc1 = make(pre + "mlp.linear_fc1.weight", {2 * F, C}, false, kColumnParallel, {F, F});
    lp.fc2 = make(pre + "mlp.linear_fc2.weight", {C, F}, false, kRowParallel);
    layers_.emplace_back(lp);
  }
  if (stage.post_process) {
    final_norm_ = make("decoder.final_layernorm.weight", {C}, true);
    if (!tied)
      output_ = make("output_layer.weight", {V, C}, false, kColumnParallel);  // vocab-parallel
    else if (!stage.pre_process)  // the last stage's copy of the tied embedding (same name, same init)
      embedding_ = make(kEmbedding, {V, C}, false, kColumnParallel);
  }

  ops::RopeScaling scaling;
  scaling.enabled = config_.use_rope_scaling;
  scaling.factor = static_cast<float>(config_.rope_scaling_factor);
  scaling.low_freq_factor = static_cast<float>(config_.rope_low_freq_factor);
  scaling.high_freq_factor = static_cast<float>(config_.rope_high_freq_factor);
  scaling.original_max_position_embeddings = config_.original_max_position_embeddings;
  const int64_t rotary_dim = static_cast<int64_t>(std::round(D * config_.rotary_percent));
  inv_freq_ = ops::rope_inv_freq(rotary_dim, static_cast<float>(config_.rotary_base), scaling);
  init_weights(options_.seed);
}

void LlamaModel::set_recompute(Recompute mode, int64_t num_layers) {
  PRIMUS_CHECK(num_layers >= 0 && num_layers <= config_.num_layers,
               "recompute_num_layers = {} must be in [0, num_layers = {}] (0 = all layers)", num_layers,
               config_.num_layers);
  options_.recompute = mode;
  options_.recompute_num_layers = num_layers;
}

void LlamaModel::require_whole_model(const char* what) const {
  PRIMUS_CHECK(pre_process() && post_process() && options_.stage.num_layers == config_.num_layers,
               "LlamaModel::{} needs the whole model, but this one is a pipeline stage (layers [{}, {}), "
               "pre_process {}, post_process {}); use stage_forward / stage_backward (train/pipelined_model.h)",
               what, options_.stage.first_layer, options_.stage.first_layer + options_.stage.num_layers,
               pre_process(), post_process());
}

Shape LlamaModel::stage_hidden_shape(const Tensor& tokens) const {
  PRIMUS_CHECK(tokens.ndim() == 2, "LlamaModel: tokens must be [batch, seq], got {}", tokens.describe());
  return {options_.tensor_parallel.residual_rows(tokens.size(0) * tokens.size(1)), config_.hidden_size};
}

Recompute LlamaModel::layer_mode(int64_t layer) const {
  if (options_.recompute != Recompute::Full) return options_.recompute;
  return options_.recompute_num_layers == 0 || layer < options_.recompute_num_layers ? Recompute::Full
                                                                                      : Recompute::None;
}

std::vector<NamedTensor*> LlamaModel::parameters() {
  std::vector<NamedTensor*> out;
  out.reserve(params_.size());
  for (auto& p : params_) out.push_back(p.get());
  return out;
}

NamedTensor& LlamaModel::parameter(const std::string& name) {
  std::vector<std::string> names;
  for (auto& p : params_) {
    if (p->name == name) return *p;
    names.push_back(p->name);
  }
  fail("model '{}' has no parameter '{}'{}", config_.name, name, did_you_mean(name, names));
}

std::vector<NamedTensor*> LlamaModel::sequence_parallel_partial_grads() {
  return parallel::sequence_parallel_partial_grads(options_.tensor_parallel, parameters());
}

void LlamaModel::reduce_sequence_parallel_grads() {
  parallel::all_reduce_sequence_parallel_grads(options_.tensor_parallel, parameters());
}

int64_t LlamaModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p->value.numel();
  return n;
}

void LlamaModel::init_weights(uint64_t seed) {
  const float std = static_cast<float>(config_.init_method_std);
  const float out_std = std / std::sqrt(2.f * static_cast<float>(config_.num_layers));
  for (auto& p : params_) {
    const bool residual_out = p->name.ends_with("linear_proj.weight") || p->name.ends_with("linear_fc2.weight");
    if (p->value.device() != Device::CPU) {
      // Generated in place on the device (same values as the host path below): a 1B model
      // initialised on the host and copied over took ~8 s of start-up.
      if (p->no_weight_decay) {
        ops::fill(ctx_, p->value, 1.f);
      } else {
        std::vector<ops::Backend::NormalRun> runs;
        for (const parallel::ShardRun& r : parallel::shard_runs(p->shard))
          runs.push_back({r.local_offset, r.full_offset, r.numel});
        ops::fill_normal(ctx_, p->value, seed, stream_id(p->name), 0.f, residual_out ? out_std : std, runs);
      }
      continue;
    }
    Tensor host = Tensor::empty(p->value.shape(), DType::F32);
    if (p->no_weight_decay) {  // RMSNorm weights
      std::fill(host.data<float>(), host.data<float>() + host.numel(), 1.f);
    } else {
      fill_normal_parallel(host, CounterRng(seed, stream_id(p->name)), residual_out ? out_std : std,
                           parallel::shard_runs(p->shard));
    }
    if (p->value.dtype() == DType::F32 && p->value.device() == Device::CPU) {
      p->value.copy_from(host);
    } else {
      Tensor dev = host.to(p->value.device());
      ops::copy_cast(ctx_, p->value, dev);
    }
  }
}

void LlamaModel::zero_grads() {
  for (auto& p : params_) p->grad.zero_();
  overwrite_pending_ = false;
}

void LlamaModel::zero_grads_for_overwrite() {
  require_whole_model("zero_grads_for_overwrite");
  std::vector<const NamedTensor*> written;  // every element written by a beta = 0 GEMM
  for (const LlamaLayer& layer : layers_) {
    const LlamaLayerParams& p = layer.params();
    written.insert(written.end(), {p.qkv, p.proj, p.fc1, p.fc2});
  }
  if (output_ != nullptr) written.push_back(output_);  // untied; a tied one also gets embedding grads
  for (auto& p : params_)
    if (std::find(written.begin(), written.end(), p.get()) == written.end()) p->grad.zero_();
  overwrite_pending_ = true;
}

NamedTensor& LlamaModel::output_weight() { return output_ != nullptr ? *output_ : *embedding_; }

LlamaDims LlamaModel::dims_for(int64_t B, int64_t T) const {
  LlamaDims d;
  d.B = B;
  d.T = T;
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  const int64_t P = tp.size();  // the config divides by it (validate_tensor_parallel)
  d.C = config_.hidden_size;
  d.F = config_.ffn_hidden_size / P;
  d.V = config_.padded_vocab_size / P;
  d.Hq = config_.num_attention_heads / P;
  d.Hkv = config_.num_query_groups / P;
  d.D = config_.head_dim();
  d.sequence_shards = tp.sp() ? P : 1;
  return d;
}

LlamaLayerEnv LlamaModel::make_env(const LlamaDims& d, Arena& arena) {
  if (!rope_cos_.defined() || rope_cos_.size(0) != d.T) {
    Tensor cos, sin;
    ops::rope_tables(cos, sin, d.T, inv_freq_);
    rope_cos_ = cos.to(ctx_.device());
    rope_sin_ = sin.to(ctx_.device());
  }
  return LlamaLayerEnv{ctx_,
                       arena,
                       d,
                       rope_cos_,
                       rope_sin_,
                       static_cast<float>(config_.norm_epsilon),
                       1.f / std::sqrt(static_cast<float>(d.D)),
                       options_.tensor_parallel};
}

void LlamaModel::forward_layers(LlamaLayerEnv& env, std::vector<Tensor>& xs, std::vector<LlamaLayerActivations>& acts,
                                bool keep_acts) {
  const LlamaDims& d = env.dims;
  const auto L = static_cast<int64_t>(layers_.size());
  xs.resize(static_cast<size_t>(L + 1));
  acts.assign(static_cast<size_t>(L), LlamaLayerActivations{});
  for (int64_t l = 0; l < L; ++l) {
    const LlamaLayerParams& p = layers_[l].params();
    for (const NamedTensor* t : {p.input_norm, p.qkv, p.proj, p.mlp_norm, p.fc1, p.fc2}) param_needed(t);
    xs[l + 1] = env.arena.alloc({d.residual_rows(), d.C}, options_.param_dtype);
    layers_[l].forward(env, xs[l], xs[l + 1], acts[l], keep_acts ? layer_mode(l) : Recompute::Full);
  }
}

// The output layer is column-parallel over the vocabulary under tensor parallel: its input
// enters the tp region (all-gathered under sequence parallel), each rank computes its
// logits columns and a vocab-parallel cross-entropy; d hidden's partial sums are reduced on
// the way out. Chunks of logits_chunk_rows rows bound the logits memory (the logits of a
// chunk are overwritten by their gradient in place).
void LlamaModel::classifier(const Batch& batch, const LlamaDims& d, const Tensor& hidden, Tensor& losses,
                            Tensor* dhidden, Arena& arena) {
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  NamedTensor& out = output_weight();
  const Arena::Mark outer = arena.mark();
  const Tensor h_all = parallel::enter_tp_region(tp, hidden, arena);  // (N,C)
  Tensor dh_all = dhidden != nullptr ? parallel::tp_partial_buffer(tp, *dhidden, arena) : Tensor();
  for (int64_t r0 = 0; r0 < d.N(); r0 += options_.logits_chunk_rows) {
    const int64_t r1 = std::min(d.N(), r0 + options_.logits_chunk_rows);
    const Arena::Mark m = arena.mark();
    Tensor logits = arena.alloc({r1 - r0, d.V}, options_.param_dtype);
    const Tensor h = h_all.rows(r0, r1);
    ops::linear_forward(ctx_, logits, h, out.value);
    Tensor loss_rows = losses.rows(r0, r1);
    const Tensor targets = batch.targets.rows(r0, r1);
    if (tp.active()) {
      const Tensor dloss = batch.dloss.rows(r0, r1);
      parallel::vocab_parallel_cross_entropy(ctx_, tp, loss_rows, logits, targets,
                                             dhidden != nullptr ? &dloss : nullptr, arena);
    } else if (dhidden != nullptr && !options_.fused_cross_entropy) {
      // Plain path: the losses, then the gradient (the fused kernel in a second pass; it
      // rewrites the same losses).
      ops::cross_entropy_forward(ctx_, loss_rows, logits, targets);
      ops::cross_entropy_fused(ctx_, loss_rows, logits, targets, batch.dloss.rows(r0, r1));
    } else if (dhidden != nullptr) {
      ops::cross_entropy_fused(ctx_, loss_rows, logits, targets, batch.dloss.rows(r0, r1));
    } else {
      ops::cross_entropy_forward(ctx_, loss_rows, logits, targets);
    }
    if (dhidden != nullptr) {
      Tensor dh = dh_all.rows(r0, r1);
      // The first chunk writes an untied output layer's grad when the step's grads were not zeroed.
      const bool accumulate = !(overwrite_pending_ && output_ != nullptr && r0 == 0);
      ops::linear_backward(ctx_, &dh, out.grad, logits, h, out.value, accumulate);
    }
    arena.release(m);
  }
  if (dhidden != nullptr) parallel::enter_tp_region_backward(tp, *dhidden, dh_all);
  arena.release(outer);
}

Tensor LlamaModel::stage_forward(StageState& st, const Tensor& tokens, const Tensor* labels, const Tensor* loss_mask,
                                 const Tensor* input_hidden, float loss_weight, bool for_backward) {
  const bool pre = pre_process(), post = post_process();
  PRIMUS_CHECK(!post || (labels != nullptr && loss_mask != nullptr),
               "LlamaModel::stage_forward: the last pipeline stage computes the loss and needs labels and loss_mask");
  PRIMUS_CHECK(pre || input_hidden != nullptr,
               "LlamaModel::stage_forward: a stage without the embedding (layers from {}) needs the input hidden "
               "state from the previous stage",
               options_.stage.first_layer);
  Arena& arena = st.arena_;
  arena.reset();
  st.backward_pending_ = false;
  st.result_ = {};
  st.batch_ = std::make_unique<Batch>(tokens, post ? labels : nullptr, post ? loss_mask : nullptr, loss_weight,
                                      config_.padded_vocab_size, ctx_.device(), options_.tensor_parallel, pre);
  const Batch& batch = *st.batch_;
  st.dims_ = dims_for(batch.B, batch.T);
  const LlamaDims& d = st.dims_;
  LlamaLayerEnv env = make_env(d, arena);
  const DType dt = options_.param_dtype;
  const int64_t R = d.residual_rows();
  st.xs_.assign(1, arena.alloc({R, d.C}, dt));
  Tensor& x0 = st.xs_[0];
  if (pre) {
    param_needed(embedding_);
    if (env.tp.active())
      parallel::vocab_parallel_embedding_forward(ctx_, env.tp, x0, batch.routed, embedding_->value, arena);
    else
      ops::embedding_forward(ctx_, x0, batch.tokens, embedding_->value);
  } else {
    PRIMUS_CHECK(input_hidden->shape() == x0.shape() && input_hidden->dtype() == dt,
                 "LlamaModel::stage_forward: input hidden is {}, expected [{}, {}] {} (this rank's residual rows)",
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
  if (for_backward) {
    st.dhidden_ = arena.alloc({R, d.C}, dt);
    classifier(batch, d, hidden, losses, &st.dhidden_, arena);
  } else {
    st.dhidden_ = Tensor();
    classifier(batch, d, hidden, losses, nullptr, arena);
  }
  st.result_ = {batch.loss_sum(losses), batch.num_tokens};
  st.backward_pending_ = for_backward;
  return Tensor();
}

Tensor LlamaModel::stage_backward(StageState& st, const Tensor* d_output) {
  PRIMUS_CHECK(st.backward_pending_,
               "LlamaModel::stage_backward: this state holds no forward to differentiate (stage_forward with "
               "for_backward was not called, or its backward already ran)");
  st.backward_pending_ = false;
  const bool pre = pre_process(), post = post_process();
  Arena& arena = st.arena_;
  const LlamaDims& d = st.dims_;
  LlamaLayerEnv env = make_env(d, arena);
  env.overwrite_linear_grads = overwrite_pending_;
  overwrite_pending_ = false;  // later micro-batches accumulate
  const DType dt = options_.param_dtype;
  Tensor dres;
  if (post) {
    dres = arena.zeros({d.residual_rows(), d.C}, dt);
    ops::rmsnorm_backward(ctx_, dres, final_norm_->grad, st.dhidden_, st.xs_.back(), final_norm_->value,
                          st.final_rstd_);
    grad_ready(final_norm_);
    grad_ready(output_);                 // untied output layer
    if (!pre) grad_ready(embedding_);    // a last stage's copy of the tied embedding
  } else {
    PRIMUS_CHECK(d_output != nullptr && d_output->shape() == st.xs_.back().shape() && d_output->dtype() == dt,
                 "LlamaModel::stage_backward: d output hidden is {}, expected [{}, {}] {}",
                 d_output != nullptr ? d_output->describe() : std::string("missing"), d.residual_rows(), d.C,
                 dtype_name(dt));
    dres = arena.alloc({d.residual_rows(), d.C}, dt);
    ops::copy_cast(ctx_, dres, *d_output);
  }
  for (auto l = static_cast<int64_t>(layers_.size()) - 1; l >= 0; --l) {
    layers_[l].backward(env, st.acts_[l], dres, layer_mode(l));
    const LlamaLayerParams& p = layers_[l].params();
    for (NamedTensor* t : {p.fc2, p.fc1, p.mlp_norm, p.proj, p.qkv, p.input_norm}) grad_ready(t);
  }
  if (!pre) return dres;
  const Batch& batch = *st.batch_;
  if (env.tp.active())
    parallel::vocab_parallel_embedding_backward(ctx_, env.tp, embedding_->grad, dres, batch.routed, arena);
  else
    ops::embedding_backward(ctx_, embedding_->grad, dres, batch.tokens);
  grad_ready(embedding_);
  return Tensor();
}

LlamaModel::StepResult LlamaModel::forward_backward(const Tensor& tokens, const Tensor& labels,
                                                    const Tensor& loss_mask, float loss_weight) {
  require_whole_model("forward_backward");
  stage_forward(*own_, tokens, &labels, &loss_mask, nullptr, loss_weight, true);
  stage_backward(*own_, nullptr);
  return own_->result();
}

LlamaModel::StepResult LlamaModel::forward_only(const Tensor& tokens, const Tensor& labels, const Tensor& loss_mask) {
  require_whole_model("forward_only");
  stage_forward(*own_, tokens, &labels, &loss_mask, nullptr, 0.f, false);
  return own_->result();
}

Tensor LlamaModel::logits(const Tensor& tokens) {
  require_whole_model("logits");
  Arena& arena = own_->arena_;
  arena.reset();
  own_->backward_pending_ = false;
  const parallel::TensorParallel& tp = options_.tensor_parallel;
  const Batch batch(tokens, nullptr, nullptr, 0.f, config_.padded_vocab_size, ctx_.device(), tp);
  const LlamaDims d = dims_for(batch.B, batch.T);
  LlamaLayerEnv env = make_env(d, arena);
  const DType dt = options_.param_dtype;
  std::vector<Tensor> xs{arena.alloc({d.residual_rows(), d.C}, dt)};
  if (tp.active())
    parallel::vocab_parallel_embedding_forward(ctx_, tp, xs[0], batch.routed, embedding_->value, arena);
  else
    ops::embedding_forward(ctx_, xs[0], batch.tokens, embedding_->value);
  std::vector<LlamaLayerActivations> acts;
  forward_layers(env, xs, acts, false);
  Tensor hidden = arena.alloc({d.residual_rows(), d.C}, dt);
  Tensor final_rstd = arena.alloc({d.residual_rows()}, DType::F32);
  ops::rmsnorm_forward(ctx_, hidden, final_rstd, xs.back(), final_norm_->value, env.norm_eps);
  const Tensor h_all = parallel::enter_tp_region(tp, hidden, arena);
  Tensor logits = arena.alloc({d.N(), d.V}, options_.param_dtype);
  ops::linear_forward(ctx_, logits, h_all, output_weight().value);
  const int64_t V = config_.padded_vocab_size;
  if (!tp.active()) return Tensor::from_floats(logits.to_float_vector(), {d.B, d.T, V});
  // Each rank holds the columns of its vocabulary slice: gather them into (N, V).
  const parallel::ShardSpec columns = parallel::ShardSpec::split({d.N(), V}, 1, tp.rank(), tp.size(), {}, "logits");
  const Tensor full = parallel::gather_shards(logits, columns, *tp.group);
  return Tensor::from_floats(full.to_float_vector(), {d.B, d.T, V});
}

}  // namespace primus

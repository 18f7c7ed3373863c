#include "model/decoder_spec.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/strings.h"
#include "parallel/pipeline_schedule.h"

namespace primus {

namespace {

bool layer_norm(const ModelConfig& c) { return c.normalization == "LayerNorm"; }

// A norm's weight (and LayerNorm's bias) of `dim` under `name` (without ".weight").
void add_norm(std::vector<ParamSpec>& out, const std::string& name, int64_t dim, int64_t layer, const ModelConfig& c) {
  out.push_back({name + ".weight", {dim}, ParamSplit::Replicated, {}, ParamInit::Ones, ParamRole::Norm, layer});
  if (layer_norm(c))
    out.push_back({name + ".bias", {dim}, ParamSplit::Replicated, {}, ParamInit::Zeros, ParamRole::Norm, layer});
}

// A linear layer `name` (out, in): its weight and, when asked, its bias (column-split like the
// weight's rows; a row-parallel layer's bias is added after the reduction: replicated).
void add_linear(std::vector<ParamSpec>& out, const std::string& name, int64_t out_f, int64_t in_f, ParamSplit split,
                std::vector<int64_t> parts, ParamInit init, bool bias, int64_t layer) {
  out.push_back({name + ".weight", {out_f, in_f}, split, parts, init, ParamRole::Linear, layer});
  if (bias)
    out.push_back({name + ".bias", {out_f}, split == ParamSplit::Column ? ParamSplit::Column : ParamSplit::Replicated,
                   split == ParamSplit::Column ? parts : std::vector<int64_t>{}, ParamInit::Zeros, ParamRole::Bias,
                   layer});
}

// An MLP of inner size `inner` under `pre` ("mlp." or "mlp.shared_experts."): fc1 (2F or F, C)
// column-parallel ([gate | up] with SwiGLU), fc2 (C, F) row-parallel into the residual.
void add_mlp(std::vector<ParamSpec>& out, const std::string& pre, int64_t inner, int64_t layer, const ModelConfig& c) {
  const int64_t C = c.hidden_size;
  add_linear(out, pre + "linear_fc1", c.swiglu ? 2 * inner : inner, C, ParamSplit::Column,
             c.swiglu ? std::vector<int64_t>{inner, inner} : std::vector<int64_t>{}, ParamInit::Normal,
             c.add_bias_linear, layer);
  add_linear(out, pre + "linear_fc2", C, inner, ParamSplit::Row, {}, ParamInit::ScaledNormal, c.add_bias_linear,
             layer);
}

void add_gqa(std::vector<ParamSpec>& out, const std::string& pre, int64_t layer, const ModelConfig& c) {
  const int64_t C = c.hidden_size, D = c.head_dim(), Hq = c.num_attention_heads, Hkv = c.query_groups();
  add_linear(out, pre + "linear_qkv", (Hq + 2 * Hkv) * D, C, ParamSplit::Column, {Hq * D, Hkv * D, Hkv * D},
             ParamInit::Normal, c.add_bias_linear || c.add_qkv_bias, layer);
  if (c.qk_layernorm) {
    add_norm(out, pre + "q_layernorm", D, layer, c);
    add_norm(out, pre + "k_layernorm", D, layer, c);
  }
  add_linear(out, pre + "linear_proj", C, Hq * D, ParamSplit::Row, {}, ParamInit::ScaledNormal, c.add_bias_linear,
             layer);
}

// Multi-latent attention (DeepSeek-V2/V3), Megatron-core's MLASelfAttention names.
void add_mla(std::vector<ParamSpec>& out, const std::string& pre, int64_t layer, const ModelConfig& c) {
  const int64_t C = c.hidden_size, H = c.num_attention_heads;
  const int64_t dq = c.qk_head_dim + c.qk_pos_emb_head_dim;
  const bool bias = c.add_bias_linear;
  if (c.q_lora_rank > 0) {
    add_linear(out, pre + "linear_q_down_proj", c.q_lora_rank, C, ParamSplit::Replicated, {}, ParamInit::Normal, bias,
               layer);
    if (c.qk_layernorm) add_norm(out, pre + "q_layernorm", c.q_lora_rank, layer, c);
    add_linear(out, pre + "linear_q_up_proj", H * dq, c.q_lora_rank, ParamSplit::Column, {}, ParamInit::Normal, bias,
               layer);
  } else {
    add_linear(out, pre + "linear_q_proj", H * dq, C, ParamSplit::Column, {}, ParamInit::Normal, bias, layer);
  }
  add_linear(out, pre + "linear_kv_down_proj", c.kv_lora_rank + c.qk_pos_emb_head_dim, C, ParamSplit::Replicated, {},
             ParamInit::Normal, bias, layer);
  if (c.qk_layernorm) add_norm(out, pre + "kv_layernorm", c.kv_lora_rank, layer, c);
  add_linear(out, pre + "linear_kv_up_proj", H * (c.qk_head_dim + c.v_head_dim), c.kv_lora_rank, ParamSplit::Column,
             {}, ParamInit::Normal, bias, layer);
  add_linear(out, pre + "linear_proj", C, H * c.v_head_dim, ParamSplit::Row, {}, ParamInit::ScaledNormal, bias, layer);
}

void add_moe(std::vector<ParamSpec>& out, const std::string& pre, int64_t layer, const ModelConfig& c) {
  const int64_t C = c.hidden_size, E = c.num_experts, Fe = c.moe_ffn_hidden_size;
  out.push_back({pre + "router.weight", {E, C}, ParamSplit::Replicated, {}, ParamInit::Normal, ParamRole::Router, layer});
  if (c.moe_router_enable_expert_bias)
    out.push_back({pre + "router.expert_bias", {E}, ParamSplit::Replicated, {}, ParamInit::Zeros,
                   ParamRole::ExpertBias, layer});
  const int64_t fc1_out = c.swiglu ? 2 * Fe : Fe;
  // Under tp each expert is split like a dense MLP: fc1 [gate_r | up_r], fc2 the matching columns.
  const std::vector<int64_t> fc1_parts = c.swiglu ? std::vector<int64_t>{Fe, Fe} : std::vector<int64_t>{};
  out.push_back({pre + "experts.linear_fc1.weight", {E, fc1_out, C}, ParamSplit::ExpertsColumn, fc1_parts,
                 ParamInit::Normal, ParamRole::RoutedExperts, layer});
  if (c.add_bias_linear)
    out.push_back({pre + "experts.linear_fc1.bias", {E, fc1_out}, ParamSplit::ExpertsColumn, fc1_parts,
                   ParamInit::Zeros, ParamRole::Bias, layer});
  out.push_back({pre + "experts.linear_fc2.weight", {E, C, Fe}, ParamSplit::ExpertsRow, {}, ParamInit::ScaledNormal,
                 ParamRole::RoutedExperts, layer});
  if (c.add_bias_linear)
    out.push_back({pre + "experts.linear_fc2.bias", {E, C}, ParamSplit::Experts, {}, ParamInit::Zeros, ParamRole::Bias,
                   layer});
  if (c.moe_shared_expert_intermediate_size > 0)
    add_mlp(out, pre + "shared_experts.", c.moe_shared_expert_intermediate_size, layer, c);
}

}  // namespace

LayerSpec decoder_layer(const ModelConfig& c, int64_t index) {
  LayerSpec s;
  s.index = index;
  s.attention = c.multi_latent_attention ? AttentionKind::MLA : AttentionKind::GQA;
  s.mlp = c.is_moe_layer(index) ? MlpKind::MoE : MlpKind::Dense;
  s.prefix = fmt::format("decoder.layers.{}.", index);
  return s;
}

LayerSpec mtp_layer(const ModelConfig& c, int64_t module) {
  LayerSpec s = decoder_layer(c, c.num_layers + module);
  s.prefix = fmt::format("mtp.layers.{}.transformer_layer.", module);
  return s;
}

std::vector<LayerSpec> decoder_layers(const ModelConfig& c) {
  std::vector<LayerSpec> out;
  for (int64_t l = 0; l < c.num_layers; ++l) out.push_back(decoder_layer(c, l));
  return out;
}

std::vector<ParamSpec> embedding_params(const ModelConfig& c) {
  std::vector<ParamSpec> out;
  out.push_back({"embedding.word_embeddings.weight", {c.padded_vocab_size, c.hidden_size}, ParamSplit::Column, {},
                 ParamInit::Normal, ParamRole::Embedding, -1});
  if (c.position_embedding_type == "learned_absolute")
    out.push_back({"embedding.position_embeddings.weight", {c.max_position_embeddings, c.hidden_size},
                   ParamSplit::Replicated, {}, ParamInit::Normal, ParamRole::Embedding, -1});
  return out;
}

std::vector<ParamSpec> layer_params(const ModelConfig& c, const LayerSpec& layer) {
  std::vector<ParamSpec> out;
  const std::string& pre = layer.prefix;
  const int64_t l = layer.index;
  add_norm(out, pre + "input_layernorm", c.hidden_size, l, c);
  if (layer.attention == AttentionKind::MLA)
    add_mla(out, pre + "self_attention.", l, c);
  else
    add_gqa(out, pre + "self_attention.", l, c);
  add_norm(out, pre + "pre_mlp_layernorm", c.hidden_size, l, c);
  if (layer.mlp == MlpKind::MoE)
    add_moe(out, pre + "mlp.", l, c);
  else
    add_mlp(out, pre + "mlp.", c.ffn_hidden_size, l, c);
  return out;
}

std::vector<ParamSpec> head_params(const ModelConfig& c) {
  std::vector<ParamSpec> out;
  add_norm(out, "decoder.final_layernorm", c.hidden_size, -1, c);
  if (c.untie_embeddings_and_output_weights)
    out.push_back({"output_layer.weight", {c.padded_vocab_size, c.hidden_size}, ParamSplit::Column, {},
                   ParamInit::Normal, ParamRole::OutputLayer, -1});
  return out;
}

std::vector<ParamSpec> mtp_params(const ModelConfig& c, int64_t module) {
  const LayerSpec layer = mtp_layer(c, module);
  const std::string pre = fmt::format("mtp.layers.{}.", module);
  const int64_t l = layer.index, C = c.hidden_size;
  std::vector<ParamSpec> out;
  add_norm(out, pre + "enorm", C, l, c);
  add_norm(out, pre + "hnorm", C, l, c);
  add_linear(out, pre + "eh_proj", C, 2 * C, ParamSplit::Column, {}, ParamInit::Normal, c.add_bias_linear, l);
  for (ParamSpec& p : layer_params(c, layer)) out.push_back(std::move(p));
  add_norm(out, pre + "final_layernorm", C, l, c);
  return out;
}

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names{"linear_qkv",          "linear_proj",        "linear_fc1",
                                              "linear_fc2",          "linear_q_proj",      "linear_q_down_proj",
                                              "linear_q_up_proj",    "linear_kv_down_proj", "linear_kv_up_proj"};
  return names;
}

namespace {
std::string weight_stem(const std::string& base_weight) {
  const std::string suffix = ".weight";
  PRIMUS_CHECK(base_weight.size() > suffix.size() &&
                   base_weight.compare(base_weight.size() - suffix.size(), suffix.size(), suffix) == 0,
               "LoRA: '{}' is not a weight", base_weight);
  return base_weight.substr(0, base_weight.size() - suffix.size());
}
}  // namespace

std::string lora_a_name(const std::string& base_weight) { return weight_stem(base_weight) + ".lora_A.weight"; }
std::string lora_b_name(const std::string& base_weight) { return weight_stem(base_weight) + ".lora_B.weight"; }

std::vector<ParamSpec> with_lora(const ModelConfig& c, std::vector<ParamSpec> layer, const LoraSpec& lora) {
  if (!lora.active()) return layer;
  PRIMUS_CHECK(lora.rank > 0 && lora.alpha > 0, "lora_dim = {} and lora_alpha = {} must be > 0", lora.rank,
               lora.alpha);
  for (const std::string& t : lora.targets)
    PRIMUS_CHECK(std::find(lora_target_names().begin(), lora_target_names().end(), t) != lora_target_names().end(),
                 "lora_target_modules: unknown module '{}'{} (choices: {})", t, did_you_mean(t, lora_target_names()),
                 fmt::join(lora_target_names(), ", "));
  PRIMUS_CHECK(c.mtp_num_layers == 0,
               "model config '{}': LoRA (peft: lora) does not adapt multi-token prediction layers yet "
               "(mtp_num_layers = {}) -- set mtp_num_layers: 0 or train with full fine-tuning (drop peft / lora)",
               c.name, c.mtp_num_layers);
  std::vector<ParamSpec> out;
  for (ParamSpec& p : layer) {
    ParamSpec base = p;
    base.frozen = p.role != ParamRole::ExpertBias;  // the expert bias keeps its fp32 update rule
    out.push_back(base);
    const std::string stem = p.name.size() > 7 ? p.name.substr(0, p.name.size() - 7) : "";
    const size_t dot = stem.rfind('.');
    const std::string module = dot == std::string::npos ? stem : stem.substr(dot + 1);
    const bool experts = p.role == ParamRole::RoutedExperts && p.shape.size() == 3;
    if (!((p.role == ParamRole::Linear && p.shape.size() == 2) || experts) ||
        std::find(lora.targets.begin(), lora.targets.end(), module) == lora.targets.end())
      continue;
    const int64_t r = lora.rank;
    ParamSpec a, b;
    if (experts) {  // one adapter per routed expert, stacked and split like the experts (parallel/lora.h)
      const int64_t E = p.shape[0], out_f = p.shape[1], in_f = p.shape[2];
      const bool column = p.split == ParamSplit::ExpertsColumn;
      a = {lora_a_name(p.name), {E, r, in_f}, column ? ParamSplit::Experts : ParamSplit::ExpertsRow, {},
           ParamInit::LoraA, ParamRole::Adapter, p.layer};
      b = {lora_b_name(p.name), {E, out_f, r}, column ? ParamSplit::ExpertsColumn : ParamSplit::Experts,
           column ? p.parts : std::vector<int64_t>{}, ParamInit::Zeros, ParamRole::Adapter, p.layer};
    } else {  // column: A whole, B split like W; row: A split like W, B whole; replicated: both whole
      const int64_t out_f = p.shape[0], in_f = p.shape[1];
      const bool column = p.split == ParamSplit::Column, row = p.split == ParamSplit::Row;
      a = {lora_a_name(p.name), {r, in_f}, row ? ParamSplit::Row : ParamSplit::Replicated, {}, ParamInit::LoraA,
           ParamRole::Adapter, p.layer};
      b = {lora_b_name(p.name), {out_f, r}, column ? ParamSplit::Column : ParamSplit::Replicated,
           column ? p.parts : std::vector<int64_t>{}, ParamInit::Zeros, ParamRole::Adapter, p.layer};
    }
    out.push_back(a);
    out.push_back(b);
  }
  return out;
}

std::vector<ParamSpec> parameter_table(const ModelConfig& c) {
  std::vector<ParamSpec> out = embedding_params(c);
  for (const LayerSpec& layer : decoder_layers(c))
    for (ParamSpec& p : layer_params(c, layer)) out.push_back(std::move(p));
  for (ParamSpec& p : head_params(c)) out.push_back(std::move(p));
  for (int64_t k = 0; k < c.mtp_num_layers; ++k)
    for (ParamSpec& p : mtp_params(c, k)) out.push_back(std::move(p));
  return out;
}

int64_t count_table_parameters(const std::vector<ParamSpec>& table) {
  int64_t n = 0;
  for (const ParamSpec& p : table)
    if (p.trainable()) n += p.numel();
  return n;
}

parallel::ShardSpec shard_of(const ParamSpec& p, int tp_rank, int tp_size, int ep_rank, int ep_size) {
  switch (p.split) {
    case ParamSplit::Column:
      if (tp_size > 1) return parallel::ShardSpec::split(p.shape, 0, tp_rank, tp_size, p.parts, p.name);
      break;
    case ParamSplit::Row:
      if (tp_size > 1) return parallel::ShardSpec::split(p.shape, 1, tp_rank, tp_size, p.parts, p.name);
      break;
    case ParamSplit::Experts:
      return parallel::ShardSpec::replicated(expert_shard_of(p, ep_rank, ep_size).local_shape());
    case ParamSplit::ExpertsColumn:
    case ParamSplit::ExpertsRow: {
      const Shape piece = expert_shard_of(p, ep_rank, ep_size).local_shape();
      if (tp_size > 1)
        return parallel::ShardSpec::split(piece, p.split == ParamSplit::ExpertsColumn ? 1 : 2, tp_rank, tp_size,
                                          p.parts, p.name);
      return parallel::ShardSpec::replicated(piece);
    }
    case ParamSplit::Replicated:
      break;
  }
  return parallel::ShardSpec::replicated(p.shape);
}

parallel::ShardSpec expert_shard_of(const ParamSpec& p, int ep_rank, int ep_size) {
  if (splits_experts(p.split) && ep_size > 1) return parallel::ShardSpec::split(p.shape, 0, ep_rank, ep_size, {}, p.name);
  return parallel::ShardSpec::replicated(p.shape);
}

namespace {

template <typename T>
void require(bool ok, const ModelConfig& c, const char* who, const char* key, const T& seen, const char* expected) {
  if (!ok) fail("model config '{}': {} = {} is not supported by {} (expected {})", c.name, key, seen, who, expected);
}

// The MoE options MoeMlp builds (model/mlp_moe.h).
void check_moe(const ModelConfig& c, const char* who) {
  require(c.moe_router_topk >= 1 && c.moe_router_topk <= c.num_experts, c, who, "moe_router_topk", c.moe_router_topk,
          "1..num_experts");
  require(c.num_experts <= 256, c, who, "num_experts", c.num_experts, "<= 256 (the routing kernels' limit)");
  require(c.moe_ffn_hidden_size > 0, c, who, "moe_ffn_hidden_size", c.moe_ffn_hidden_size, "> 0");
  require(c.moe_router_score_function == "softmax" || c.moe_router_score_function == "sigmoid", c, who,
          "moe_router_score_function", c.moe_router_score_function, "softmax or sigmoid");
  require(!c.moe_router_enable_expert_bias || c.moe_router_score_function == "sigmoid", c, who,
          "moe_router_enable_expert_bias", c.moe_router_enable_expert_bias,
          "false with softmax scores (the expert bias acts on sigmoid scores, as in DeepSeek-V3)");
  require(!c.moe_router_pre_softmax || c.moe_router_score_function == "softmax", c, who, "moe_router_pre_softmax",
          c.moe_router_pre_softmax, "false with sigmoid scores");
  const std::string& lb = c.moe_router_load_balancing_type;
  require(lb == "aux_loss" || lb == "seq_aux_loss" || lb == "none", c, who, "moe_router_load_balancing_type", lb,
          "aux_loss, seq_aux_loss or none (sinkhorn is not built)");
  require(c.moe_router_group_score == "topk_sum" || c.moe_router_group_score == "max", c, who,
          "moe_router_group_score", c.moe_router_group_score, "topk_sum or max");
  require(c.moe_router_num_groups > 0 || c.moe_router_group_score == "topk_sum", c, who, "moe_router_group_score",
          c.moe_router_group_score, "unset without moe_router_num_groups (it scores the groups of group-limited routing)");
  if (c.moe_router_num_groups > 0) {
    const int64_t G = c.moe_router_num_groups, gk = c.moe_router_group_topk;
    require(c.num_experts % G == 0, c, who, "moe_router_num_groups", G, "a divisor of num_experts");
    if (c.moe_router_group_score == "max")
      require(gk >= 1 && gk <= G && c.moe_router_topk <= gk * (c.num_experts / G), c, who, "moe_router_group_topk",
              gk, "<= moe_router_num_groups, its groups holding at least moe_router_topk experts");
    else
      require(gk >= 1 && gk <= G && c.moe_router_topk % gk == 0 && c.moe_router_topk / gk <= c.num_experts / G, c,
              who, "moe_router_group_topk", gk,
              "<= moe_router_num_groups, dividing moe_router_topk, with moe_router_topk / it experts per group");
  }
  require(c.moe_token_drop_policy == "probs" || c.moe_token_drop_policy == "position", c, who, "moe_token_drop_policy",
          c.moe_token_drop_policy, "probs or position");
  require(!c.moe_pad_expert_input_to_capacity || c.moe_expert_capacity_factor > 0, c, who,
          "moe_pad_expert_input_to_capacity", c.moe_pad_expert_input_to_capacity,
          "false without moe_expert_capacity_factor (padding is to the capacity)");
}

// Multi-latent attention (model/attention_mla.h).
void check_mla(const ModelConfig& c, const char* who) {
  require(c.kv_lora_rank > 0, c, who, "kv_lora_rank", c.kv_lora_rank, "> 0");
  require(c.q_lora_rank >= 0, c, who, "q_lora_rank", c.q_lora_rank, ">= 0 (0: queries projected directly)");
  require(c.qk_head_dim >= 0, c, who, "qk_head_dim", c.qk_head_dim, ">= 0");
  require(c.qk_pos_emb_head_dim >= 2 && c.qk_pos_emb_head_dim % 2 == 0, c, who, "qk_pos_emb_head_dim",
          c.qk_pos_emb_head_dim, "an even number >= 2 (the rotary dims of each query/key head)");
  require(c.v_head_dim > 0, c, who, "v_head_dim", c.v_head_dim, "> 0");
  require(c.rotary_percent == 1.0, c, who, "rotary_percent", c.rotary_percent,
          "1 (multi-latent attention rotates exactly qk_pos_emb_head_dim dims)");
  require(!c.use_rope_scaling, c, who, "use_rope_scaling", c.use_rope_scaling,
          "false (DeepSeek scales RoPE with YaRN: rotary_scaling_factor)");
  require(c.rotary_scaling_factor == 1.0 || c.original_max_position_embeddings > 0, c, who,
          "original_max_position_embeddings", c.original_max_position_embeddings, "> 0 with YaRN");
}

}  // namespace

void check_buildable(const ModelConfig& c, const char* who) {
  require(c.num_layers > 0, c, who, "num_layers", c.num_layers, "> 0");
  require(c.hidden_size > 0, c, who, "hidden_size", c.hidden_size, "> 0");
  require(c.ffn_hidden_size > 0, c, who, "ffn_hidden_size", c.ffn_hidden_size, "> 0");
  require(c.num_attention_heads > 0, c, who, "num_attention_heads", c.num_attention_heads, "> 0");
  require(c.padded_vocab_size > 0, c, who, "padded_vocab_size", c.padded_vocab_size, "> 0 (set by the tokenizer)");
  const int64_t groups = c.query_groups();
  require(groups > 0 && c.num_attention_heads % groups == 0, c, who, "num_query_groups", groups,
          "a divisor of num_attention_heads");
  if (c.multi_latent_attention) {
    check_mla(c, who);
  } else {
    require(c.head_dim() > 0, c, who, "kv_channels", c.head_dim(), "> 0");
    const double rot = static_cast<double>(c.head_dim()) * c.rotary_percent;
    require(rot >= 2 && std::fabs(rot - std::round(rot)) < 1e-9 && static_cast<int64_t>(std::round(rot)) % 2 == 0,
            c, who, "rotary_percent", c.rotary_percent, "a fraction giving an even number of rotary dims");
    require(!c.qk_layernorm, c, who, "qk_layernorm", c.qk_layernorm,
            "false with grouped-query attention (query/key norms are built for multi-latent attention only)");
    require(c.rotary_scaling_factor == 1.0, c, who, "rotary_scaling_factor", c.rotary_scaling_factor,
            "1 without multi_latent_attention (YaRN is built for DeepSeek's MLA; Llama 3.1 uses use_rope_scaling)");
  }
  require(c.normalization == "RMSNorm", c, who, "normalization", c.normalization, "RMSNorm");
  require(c.swiglu, c, who, "swiglu", c.swiglu, "true");
  require(c.position_embedding_type == "rope", c, who, "position_embedding_type", c.position_embedding_type, "rope");
  require(!c.add_bias_linear, c, who, "add_bias_linear", c.add_bias_linear, "false");
  require(!c.add_qkv_bias, c, who, "add_qkv_bias", c.add_qkv_bias, "false");
  require(c.mtp_num_layers >= 0, c, who, "mtp_num_layers", c.mtp_num_layers, ">= 0");
  require(c.norm_epsilon > 0, c, who, "norm_epsilon", c.norm_epsilon, "> 0");
  require(!c.rotary_interleaved, c, who, "rotary_interleaved", c.rotary_interleaved,
          "false (the decoder rotates halves of each head)");
  require(c.attention_dropout == 0.0, c, who, "attention_dropout", c.attention_dropout,
          "0 (dropout is not implemented; Llama and MoE pretraining use none)");
  require(c.hidden_dropout == 0.0, c, who, "hidden_dropout", c.hidden_dropout,
          "0 (dropout is not implemented; Llama and MoE pretraining use none)");
  require(c.vocab_size <= c.padded_vocab_size, c, who, "vocab_size", c.vocab_size,
          "<= padded_vocab_size (the embedding rows)");
  if (c.num_experts > 0) check_moe(c, who);
}

void check_parallel_layout(const ModelConfig& m, const parallel::ParallelDims& dims, const parallel::LayoutChecks& c) {
  const int tp = dims.tp(), pp = dims.pp(), cp = dims.cp(), ep = dims.ep(), dp = dims.dp();
  std::vector<std::string> problems;
  auto need = [&](bool ok, std::string msg) {
    if (!ok) problems.push_back(std::move(msg));
  };
  // A problem from the layout rules (parallel/parallel_dims.h), "" when the rule holds.
  auto rule = [&](std::string problem) {
    if (!problem.empty()) problems.push_back(std::move(problem));
  };
  const parallel::LayoutValue tp_size{"tensor_model_parallel_size", tp}, pp_size{"pipeline_model_parallel_size", pp},
      cp_size{"context_parallel_size", cp}, ep_size{"expert_model_parallel_size", ep};
  // A size split over the tensor-parallel ranks (0: not set, nothing to check).
  auto split_by_tp = [&](const char* key, int64_t size, std::string_view fix = {}) {
    if (size > 0) rule(parallel::split_problem({key, size}, tp_size, fix));
  };
  split_by_tp("num_attention_heads", m.num_attention_heads);
  split_by_tp("num_query_groups", m.num_query_groups);
  split_by_tp("ffn_hidden_size", m.ffn_hidden_size);
  split_by_tp("the padded vocabulary", m.padded_vocab_size,
              fmt::format("(raise make_vocab_size_divisible_by to a multiple of {})", tp));
  const parallel::UnevenSplit split{c.decoder_first_pipeline_num_layers, c.decoder_last_pipeline_num_layers};
  if (m.num_layers > 0 && split.uneven()) {
    need(pp > 1, fmt::format("decoder_first_pipeline_num_layers {} / decoder_last_pipeline_num_layers {} need "
                             "pipeline_model_parallel_size > 1 (it is {})",
                             split.first_stage_layers, split.last_stage_layers, pp));
    need(c.num_layers_per_virtual_pipeline_stage == 0,
         "decoder_first_pipeline_num_layers / decoder_last_pipeline_num_layers with the interleaved schedule "
         "(num_layers_per_virtual_pipeline_stage) is not supported; unset one of them");
    if (pp > 1) {
      try {
        parallel::pipeline_stage_layers(m.num_layers, pp, split);
      } catch (const Error& e) {
        need(false, e.what());
      }
    }
  } else if (m.num_layers > 0) {
    rule(parallel::pipeline_split_problem({"num_layers", m.num_layers}, pp_size));
    if (c.num_layers_per_virtual_pipeline_stage > 0) {
      need(pp > 1, "num_layers_per_virtual_pipeline_stage needs pipeline_model_parallel_size > 1");
      int64_t per_stage = m.num_layers / pp;
      need(per_stage % c.num_layers_per_virtual_pipeline_stage == 0,
           fmt::format("num_layers_per_virtual_pipeline_stage {} does not divide the {} layers of "
                       "each pipeline stage (num_layers {} / pipeline_model_parallel_size {})",
                       c.num_layers_per_virtual_pipeline_stage, per_stage, m.num_layers, pp));
    }
  }
  if (m.num_experts > 0) {
    rule(parallel::split_problem({"num_experts", m.num_experts}, ep_size));
    split_by_tp("moe_ffn_hidden_size", m.moe_ffn_hidden_size);
    split_by_tp("moe_shared_expert_intermediate_size", m.moe_shared_expert_intermediate_size);
    rule(parallel::expert_tensor_parallel_problem(ep_size, tp_size, c.sequence_parallel));
  } else {
    rule(parallel::expert_parallel_problem(ep_size, false));
  }
  if (c.seq_length > 0) {
    if (c.sequence_parallel)
      rule(parallel::split_problem({"seq_length", c.seq_length}, tp_size,
                                   "(sequence_parallel gives each tensor-parallel rank an equal share of the tokens)"));
    rule(parallel::context_parallel_seq_problem({"seq_length", c.seq_length}, cp_size));
  }
  if (cp > 1) {
    if (c.sequence_parallel && c.seq_length > 0 && c.seq_length % (2 * cp) == 0)
      need(c.seq_length / cp % tp == 0,
           fmt::format("sequence_parallel with context_parallel_size {}: each cp rank's {} tokens (seq_length {} / {}) "
                       "are not divisible by tensor_model_parallel_size {}", cp, c.seq_length / cp, c.seq_length, cp,
                       tp));
  }
  if (c.global_batch_size > 0 && c.micro_batch_size > 0)
    rule(parallel::batch_split_problem({"global_batch_size", c.global_batch_size}, c.micro_batch_size, dp));
  if (problems.empty()) return;
  std::string msg = fmt::format("parallel layout {} does not fit model '{}':", dims.describe(), m.name);
  for (const std::string& p : problems) msg += "\n  - " + p;
  throw Error(msg);
}

}  // namespace primus

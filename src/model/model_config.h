// ModelConfig: the architecture of one model, with Megatron's option names.
//
// Built from the resolved experiment config (config/), consumed by the model code,
// the parameter/FLOP/memory accounting (model_stats.h) and the converters. Covers the
// Llama family, Mixtral (MoE) and DeepSeek-V2/V3 (MoE + MLA + MTP).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace primus {

struct ModelConfig {
  std::string name;  // e.g. "llama3.1_8B"

  // ---- dense transformer ------------------------------------------------------------
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t ffn_hidden_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_query_groups = 0;  // == heads when group_query_attention is off
  int64_t kv_channels = 0;       // head dim; 0 -> hidden_size / num_attention_heads
  int64_t padded_vocab_size = 0; // the vocabulary rows of the embedding / output layer
  int64_t vocab_size = 0;        // the tokenizer's vocabulary (padded_vocab_size >= this)
  int64_t max_position_embeddings = 0;
  bool swiglu = true;
  bool add_bias_linear = false;
  bool add_qkv_bias = false;
  bool untie_embeddings_and_output_weights = true;
  std::string normalization = "RMSNorm";
  double norm_epsilon = 1e-5;
  std::string position_embedding_type = "rope";
  double rotary_base = 10000.0;
  double rotary_percent = 1.0;
  // Llama 3.1 rope scaling
  bool use_rope_scaling = false;
  double rope_scaling_factor = 8.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  // YaRN-style scaling used by DeepSeek (rotary_scaling_factor > 1 enables it)
  double rotary_scaling_factor = 1.0;
  double init_method_std = 0.02;
  double attention_dropout = 0.0;
  double hidden_dropout = 0.0;
  bool rotary_interleaved = false;  // rotate pairs (x0,x1) instead of halves
  // YaRN (DeepSeek) details, used when rotary_scaling_factor > 1
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;

  // ---- mixture of experts (Megatron's moe_* options; docs/MOE.md) -----------------
  int64_t num_experts = 0;  // 0 = dense
  int64_t moe_router_topk = 2;
  int64_t moe_ffn_hidden_size = 0;
  int64_t moe_shared_expert_intermediate_size = 0;
  // Which layers are MoE: moe_layer_pattern[l] (1 = MoE) when given (Megatron's list form of
  // moe_layer_freq, e.g. "([0]*3+[1]*58)"), else every moe_layer_freq-th layer; the first
  // `moe_first_k_dense_replace` layers stay dense either way (DeepSeek).
  int64_t moe_layer_freq = 1;
  std::vector<int> moe_layer_pattern;
  int64_t moe_first_k_dense_replace = 0;
  std::string moe_router_score_function = "softmax";  // softmax | sigmoid
  // softmax over all experts before top-k (DeepSeek-V2) instead of top-k then softmax (Mixtral)
  bool moe_router_pre_softmax = false;
  double moe_router_topk_scaling_factor = 1.0;
  int64_t moe_router_num_groups = 0;  // group-limited routing (0 = off)
  int64_t moe_router_group_topk = 0;
  // How a group is scored for group-limited routing: "topk_sum" = the sum of its top
  // moe_router_topk / moe_router_group_topk selection scores (Megatron; DeepSeek-V3's noaux_tc
  // with 8 / 4 = its top 2), "max" = its best expert's score (DeepSeek-V2's group_limited_greedy).
  std::string moe_router_group_score = "topk_sum";
  bool moe_router_enable_expert_bias = false;  // aux-loss-free balancing (DeepSeek-V3)
  double moe_router_bias_update_rate = 1e-3;
  std::string moe_router_load_balancing_type = "aux_loss";  // aux_loss | seq_aux_loss | none
  double moe_aux_loss_coeff = 0.0;
  double moe_z_loss_coeff = 0.0;            // 0 = no z-loss
  double moe_expert_capacity_factor = 0.0;  // 0 = dropless
  std::string moe_token_drop_policy = "probs";  // probs | position
  bool moe_pad_expert_input_to_capacity = false;

  // ---- multi-latent attention (DeepSeek) -----------------------------------------
  bool multi_latent_attention = false;
  int64_t q_lora_rank = 0;  // 0 = no query compression (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_head_dim = 0;          // non-rotary part of q/k head
  int64_t qk_pos_emb_head_dim = 0;  // rotary part
  int64_t v_head_dim = 0;
  bool qk_layernorm = false;

  // ---- multi-token prediction (DeepSeek-V3) ---------------------------------------
  int64_t mtp_num_layers = 0;
  double mtp_loss_scaling_factor = 0.1;

  // A pipeline's last stage reads the word embedding too: as the tied output layer, or to
  // embed the shifted tokens of the MTP depths. It then holds a copy (same name, same init)
  // whose grads are summed with the first stage's (Megatron's embedding group).
  bool last_stage_reads_embedding() const { return !untie_embeddings_and_output_weights || mtp_num_layers > 0; }

  int64_t head_dim() const { return kv_channels > 0 ? kv_channels : hidden_size / num_attention_heads; }
  int64_t query_groups() const { return num_query_groups > 0 ? num_query_groups : num_attention_heads; }
  // Layer `layer` (an MTP module's layer: num_layers + k) has an MoE MLP.
  bool is_moe_layer(int64_t layer) const {
    if (num_experts <= 0 || layer < moe_first_k_dense_replace) return false;
    if (!moe_layer_pattern.empty()) {
      // MTP layers follow the last main layer's kind, as Megatron builds them.
      const auto i = static_cast<size_t>(std::min<int64_t>(layer, static_cast<int64_t>(moe_layer_pattern.size()) - 1));
      return moe_layer_pattern[i] != 0;
    }
    return moe_layer_freq <= 1 || (layer % moe_layer_freq) == 0;
  }
};

}  // namespace primus

// Model options: the architecture (dense transformer, position encoding, MoE, MLA, MTP).
// Defaults are Megatron-LM's argument defaults; the model zoo (configs/models/megatron)
// sets the values of each published model.
#include "config/schema_options.h"

namespace primus::config {

std::vector<OptionSpec> model_options() {
  OptionTable t;

  t.group("model");
  t.opt_integer("num_layers", "number of transformer layers (decoder blocks); the model file sets it").positive();
  t.opt_integer("hidden_size", "model width: embedding and residual-stream size").positive();
  t.opt_integer("ffn_hidden_size", "dense MLP inner size (null: 4*hidden_size, with swiglu floor(8*hidden/3/64)*64)")
      .positive();
  t.opt_integer("num_attention_heads", "query heads per layer").positive();
  t.flag("group_query_attention", false, "grouped-query attention: num_query_groups key/value heads shared by the query heads");
  t.opt_integer("num_query_groups", "key/value heads when group_query_attention (null: num_attention_heads)").positive();
  t.opt_integer("kv_channels", "head dimension (null: hidden_size / num_attention_heads)").positive();
  t.opt_integer("max_position_embeddings", "longest sequence the position encoding supports (null: seq_length)")
      .positive();
  t.opt_integer("vocab_size", "tokenizer vocabulary size before padding (the zoo sets the model's)").positive();
  t.integer("make_vocab_size_divisible_by", 128,
            "pad the vocabulary to a multiple of this times tensor_model_parallel_size")
      .positive();
  t.choice("normalization", "LayerNorm", {"LayerNorm", "RMSNorm"}, "normalization layer type");
  t.real("norm_epsilon", 1e-5, "epsilon of the normalization layers").positive();
  t.flag("swiglu", false, "SwiGLU MLP: down(silu(gate x) * up x) instead of GeLU");
  t.flag("add_bias_linear", true, "biases in every linear layer (Megatron's --disable-bias-linear sets false)");
  t.flag("add_qkv_bias", false, "biases in the query/key/value projection only");
  t.flag("untie_embeddings_and_output_weights", false,
         "separate output-layer weights (false: the output layer reuses the input embedding)");
  t.real("init_method_std", 0.02, "standard deviation of the normal initialisation of weights").positive();
  t.real("attention_dropout", 0.1, "dropout probability on attention probabilities").fraction();
  t.real("hidden_dropout", 0.1, "dropout probability on the attention and MLP outputs").fraction();
  t.flag("qk_layernorm", false, "normalize queries and keys (MLA: the compressed query and key/value latents)");

  t.group("position encoding");
  t.choice("position_embedding_type", "learned_absolute", {"learned_absolute", "rope", "none"},
           "how positions enter the model");
  t.real("rotary_base", 10000.0, "RoPE theta: frequencies theta^(-2i/d)").positive();
  t.real("rotary_percent", 1.0, "fraction of each head dimension that is rotated").min(0, true).max(1);
  t.flag("rotary_interleaved", false, "rotate adjacent pairs (x0,x1) instead of halves (x_i, x_{i+d/2})");
  t.flag("use_rope_scaling", false,
         "Llama 3.1 RoPE scaling of low frequencies (rope_scaling_factor, rope_*_freq_factor, "
         "original_max_position_embeddings)");
  t.real("rope_scaling_factor", 8.0, "Llama 3.1 RoPE scaling factor (Llama 3.1: 8, Llama 3.2: 32)").at_least(1);
  t.real("rope_low_freq_factor", 1.0, "Primus: Llama 3.1 RoPE scaling low-frequency factor (Megatron fixes 1)")
      .positive();
  t.real("rope_high_freq_factor", 4.0, "Primus: Llama 3.1 RoPE scaling high-frequency factor (Megatron fixes 4)")
      .positive();
  t.integer("original_max_position_embeddings", 8192,
            "context length the RoPE scaling starts from (Llama 3.1: 8192, DeepSeek YaRN: 4096)")
      .positive();
  t.real("rotary_scaling_factor", 1.0, "YaRN RoPE scaling factor (DeepSeek: 40; 1 disables YaRN)").at_least(1);
  t.real("mscale", 1.0, "YaRN attention-temperature mscale (DeepSeek-V2: 0.707, V3: 1.0)").non_negative();
  t.real("mscale_all_dim", 0.0, "YaRN mscale_all_dim (DeepSeek-V2: 0.707, V3: 1.0; 0 disables)").non_negative();
  t.real("beta_fast", 32.0, "YaRN: rotations above which frequencies are kept").positive();
  t.real("beta_slow", 1.0, "YaRN: rotations below which frequencies are fully interpolated").positive();

  t.group("mixture of experts");
  t.opt_integer("num_experts", "routed experts per MoE layer (null: a dense model)").positive();
  t.integer("moe_router_topk", 2, "experts each token is routed to").positive();
  t.opt_integer("moe_ffn_hidden_size", "inner size of each routed expert (null: ffn_hidden_size)").positive();
  t.opt_integer("moe_shared_expert_intermediate_size",
                "total inner size of the always-on shared experts (DeepSeek: n_shared * moe_ffn_hidden_size)")
      .positive();
  t.text("moe_layer_freq", "1",
         "which layers are MoE: every k-th (an integer k), or one 0/1 per layer as a list expression, e.g. "
         "\"([0]*3+[1]*58)\" or \"[0,1,1,1]\"");
  t.integer("moe_first_k_dense_replace", 0, "Primus: the first k layers stay dense (DeepSeek first_k_dense_replace)")
      .non_negative();
  t.choice("moe_router_score_function", "softmax", {"softmax", "sigmoid"}, "router score function");
  t.flag("moe_router_pre_softmax", false,
         "softmax over all experts before top-k (DeepSeek-V2); false: top-k then softmax (Mixtral)");
  t.opt_real("moe_router_topk_scaling_factor", "scale of the routing weights (DeepSeek routed_scaling_factor)")
      .positive();
  t.opt_integer("moe_router_num_groups", "group-limited routing: number of expert groups (DeepSeek n_group)")
      .positive();
  t.opt_integer("moe_router_group_topk", "group-limited routing: groups a token may use (DeepSeek topk_group)")
      .positive();
  t.opt_choice("moe_router_group_score", {"topk_sum", "max"},
               "group-limited routing: a group's score, the sum of its top moe_router_topk / moe_router_group_topk "
               "experts (null and topk_sum: Megatron, DeepSeek-V3) or its best expert (max: DeepSeek-V2's "
               "group_limited_greedy)");
  t.flag("moe_router_enable_expert_bias", false,
         "aux-loss-free balancing: a per-expert bias used only for top-k selection (DeepSeek-V3; sigmoid scores)");
  t.real("moe_router_bias_update_rate", 1e-3, "step of the expert-bias update after each iteration").non_negative();
  t.choice("moe_router_load_balancing_type", "aux_loss", {"aux_loss", "seq_aux_loss", "sinkhorn", "none"},
           "load-balancing loss: over the micro-batch, per sequence, or none (sinkhorn is not built)");
  t.real("moe_aux_loss_coeff", 0.0, "weight of the load-balancing loss").non_negative();
  t.opt_real("moe_z_loss_coeff", "weight of the router z-loss (null: off)").non_negative();
  t.opt_choice("moe_router_dtype", {"fp32", "fp64"},
               "router logits and routing dtype (Primus computes them in fp32: null and fp32; fp64 is refused)");
  t.opt_real("moe_expert_capacity_factor", "expert capacity as a multiple of the even share (null: no token dropping)")
      .positive();
  t.choice("moe_token_drop_policy", "probs", {"probs", "position"},
           "with a capacity: drop the lowest-probability tokens of a full expert, or the latest ones");
  t.flag("moe_pad_expert_input_to_capacity", false, "pad every expert's input to its capacity (needs a capacity)");
  t.flag("moe_grouped_gemm", false,
         "the experts as one grouped GEMM launch (CUDA); false: one GEMM per expert (the same math)");
  t.choice("moe_token_dispatcher_type", "allgather", {"allgather", "alltoall", "flex"},
           "how tokens reach experts across expert-parallel ranks (one rank: a local permutation; flex is not built)");
  t.flag("moe_permute_fusion", true, "fused token permute/unpermute kernels (Primus has only these: false is refused)");
  t.flag("moe_shared_expert_overlap", false,
         "overlap the shared expert with the expert-parallel token exchange (not built: true is refused)");

  t.group("multi-latent attention");
  t.flag("multi_latent_attention", false, "DeepSeek multi-latent attention (compressed key/value latents)");
  t.opt_integer("q_lora_rank", "query compression rank (null: queries projected directly, as in V2-Lite)").positive();
  t.integer("kv_lora_rank", 32, "key/value compression rank").positive();
  t.integer("qk_head_dim", 128, "non-rotary part of each query/key head").positive();
  t.integer("qk_pos_emb_head_dim", 64, "rotary part of each query/key head (one rotary key shared by all heads)")
      .positive();
  t.integer("v_head_dim", 128, "value head dimension").positive();

  t.group("multi-token prediction");
  t.opt_integer("mtp_num_layers", "multi-token-prediction modules after the main model (DeepSeek-V3: 1; null: none)")
      .non_negative();
  t.real("mtp_loss_scaling_factor", 0.1, "weight of the MTP loss").non_negative();

  return t.take();
}

}  // namespace primus::config

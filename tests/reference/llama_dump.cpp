// reference_llama_dump: runs our decoder (CPU backend) on tiny Llama and MoE configs and
// writes everything an independent reference needs to check it into one safetensors file:
// the config (metadata "config", JSON), the weights, the batch, and our outputs.
//
//   reference_llama_dump model <case> <out.safetensors>
//       weights "param.<name>" (and "buffer.<name>": the MoE expert bias), batch
//       "tokens"/"labels"/"loss_mask" (B,T), outputs "logits" (B,T,V), "loss" (mean over loss
//       tokens), "aux" (MoE: the sum over layers of the load-balancing and z losses, coefficients
//       included), "grad.<name>" (gradient of loss + aux: the MoE losses with weight 1).
//       LoRA cases: the adapters are the params, the frozen base model the buffers (lora_B
//       random instead of zero, so every adapter has a gradient). Packed cases: "positions" and
//       "segments" (B,T). DPO cases: rows [0,P) chosen, [P,2P) rejected, "ref_chosen" /
//       "ref_rejected" (P), "loss" the mean DPO loss and the grads its gradient.
//   reference_llama_dump optim <out.safetensors>
//       20 AdamW steps (2 micro-batches each, warmup + cosine, clip_grad 1):
//       "init.<name>", per step s and micro-batch m "tokens.s.m"/"labels.s.m"/"loss_mask.s.m",
//       "lr" (20) as our schedule gave it, "loss" (20), "final.<name>"
//   reference_llama_dump router <out.safetensors>
//       the router top-k alone (ops::moe_topk_forward) on logits full of ties: per routing
//       case c (metadata "router", JSON: its MoeRouting), "logits.c" (N,E), "bias.c" (E) when
//       it has one, and our "probs.c" / "indices.c" (N,k)
//   reference_llama_dump list      prints the case names
//
// tests/reference/check_llama.py drives it; see there for the comparison.
#include <cstdio>
#include <map>
#include <random>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/decoder.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "parallel/lora.h"
#include "rl/grpo_loss.h"
#include "train/dpo_loss.h"

using namespace primus;

namespace {

struct Case {
  ModelConfig config;
  int64_t batch = 2, seq = 12;
  Recompute recompute = Recompute::None;
  bool ignore_labels = false;  // some labels -1 (ignored) besides the loss mask
  LoraSpec lora{};             // rank > 0: LoRA (lora.dropout > 0: the training forward drops)
  bool packed = false;         // several documents per row (positions, segments)
  std::string dpo;             // a DPO loss type: rows are (chosen, rejected) pairs
  double dpo_beta = 0.1, dpo_label_smoothing = 0;
  std::string grpo;            // a GRPO loss type: rows are groups of 2 completions
  double grpo_beta = 0;
};

ModelConfig base(const char* name) {
  ModelConfig c =
      test::tiny_llama({.name = name, .hidden = 32, .ffn = 48, .vocab = 0, .padded_vocab = 50, .max_positions = 256});
  c.init_method_std = 0.1;
  c.untie_embeddings_and_output_weights = true;
  return c;
}

std::map<std::string, Case> cases() {
  std::map<std::string, Case> m;
  m["gqa_untied"] = {base("gqa_untied")};

  Case tied{base("mha_tied_rope_scaling")};
  tied.config.hidden_size = 24;
  tied.config.ffn_hidden_size = 40;
  tied.config.num_attention_heads = 3;
  tied.config.num_query_groups = 3;
  tied.config.padded_vocab_size = 37;
  tied.config.untie_embeddings_and_output_weights = false;
  tied.config.rotary_base = 500000;
  tied.config.use_rope_scaling = true;  // frequencies in all three Llama 3.1 bands
  tied.config.rope_scaling_factor = 8;
  tied.config.rope_low_freq_factor = 1;
  tied.config.rope_high_freq_factor = 4;
  tied.config.original_max_position_embeddings = 16;
  tied.config.norm_epsilon = 1e-6;
  tied.seq = 20;
  m["mha_tied_rope_scaling"] = tied;

  Case mqa{base("mqa_partial_rotary_long")};  // 140 > the CPU attention's 128-row block
  mqa.config.num_query_groups = 1;
  mqa.config.kv_channels = 12;  // Hq * D = 48 != hidden 32
  mqa.config.rotary_percent = 0.5;
  mqa.config.num_layers = 3;
  mqa.batch = 1;
  mqa.seq = 140;
  mqa.ignore_labels = true;
  m["mqa_partial_rotary_long"] = mqa;

  Case full{base("gqa_recompute_full")};
  full.recompute = Recompute::Full;
  m["gqa_recompute_full"] = full;
  Case sel{base("gqa_recompute_selective")};
  sel.recompute = Recompute::Selective;
  sel.config.untie_embeddings_and_output_weights = false;
  m["gqa_recompute_selective"] = sel;

  // Mixture of experts (Megatron's router, dispatcher, grouped experts and losses).
  auto moe = [](const char* name, int64_t experts, int64_t topk) {
    Case c{base(name)};
    c.config.num_experts = experts;
    c.config.moe_router_topk = topk;
    c.config.moe_ffn_hidden_size = 16;
    c.config.moe_aux_loss_coeff = 0.01;
    return c;
  };
  Case mix = moe("moe_mixtral_top2_zloss", 4, 2);  // softmax after top-k, aux loss, z-loss
  mix.config.moe_z_loss_coeff = 0.001;
  m["moe_mixtral_top2_zloss"] = mix;
  Case mixfull = moe("moe_top2_recompute_full", 4, 2);
  mixfull.recompute = Recompute::Full;
  m["moe_top2_recompute_full"] = mixfull;
  // Switch-style top-1 over softmax scores (after top-k, a top-1 prob would be 1 for every token
  // and dropping "by probs" a tie); capacity factor 1: full experts drop tokens.
  Case top1 = moe("moe_top1_capacity_probs", 4, 1);
  top1.config.moe_router_pre_softmax = true;
  top1.config.moe_expert_capacity_factor = 1.0;
  m["moe_top1_capacity_probs"] = top1;
  Case pos = moe("moe_top2_capacity_position_pad", 4, 2);
  pos.config.moe_expert_capacity_factor = 1.0;
  pos.config.moe_token_drop_policy = "position";
  pos.config.moe_pad_expert_input_to_capacity = true;
  pos.recompute = Recompute::Selective;
  m["moe_top2_capacity_position_pad"] = pos;
  Case top8 = moe("moe_top8_presoftmax_groups_seqaux", 16, 8);  // DeepSeek-V2 style
  top8.config.moe_router_pre_softmax = true;
  top8.config.moe_router_num_groups = 4;
  top8.config.moe_router_group_topk = 2;
  top8.config.moe_router_topk_scaling_factor = 2.0;
  top8.config.moe_router_load_balancing_type = "seq_aux_loss";
  m["moe_top8_presoftmax_groups_seqaux"] = top8;
  // DeepSeek-V2's group_limited_greedy: a group scored by its best expert; top-5 within 2 of 4
  // groups (5 is not a multiple of 2: only the max score allows it).
  Case v2g = moe("moe_presoftmax_groups_max", 16, 5);
  v2g.config.moe_router_pre_softmax = true;
  v2g.config.moe_router_num_groups = 4;
  v2g.config.moe_router_group_topk = 2;
  v2g.config.moe_router_group_score = "max";
  v2g.config.moe_router_topk_scaling_factor = 16.0;
  m["moe_presoftmax_groups_max"] = v2g;
  Case sig = moe("moe_sigmoid_bias_groups_shared", 8, 4);  // DeepSeek-V3 style, first layer dense
  sig.config.num_layers = 3;
  sig.config.moe_router_score_function = "sigmoid";
  sig.config.moe_router_enable_expert_bias = true;
  sig.config.moe_router_num_groups = 4;
  sig.config.moe_router_group_topk = 2;
  sig.config.moe_router_topk_scaling_factor = 2.5;
  sig.config.moe_shared_expert_intermediate_size = 24;
  sig.config.moe_layer_pattern = {0, 1, 1};
  sig.config.moe_router_load_balancing_type = "seq_aux_loss";
  sig.config.moe_aux_loss_coeff = 0.001;
  sig.config.moe_z_loss_coeff = 0.001;
  m["moe_sigmoid_bias_groups_shared"] = sig;

  // Multi-latent attention (DeepSeek-V2-Lite: queries projected directly; V3: a query latent,
  // YaRN with mscale, sigmoid routing), head dims Dn + Dr != Dv.
  auto mla = [](const char* name) {
    Case c{base(name)};
    c.config.multi_latent_attention = true;
    c.config.qk_layernorm = true;
    c.config.kv_lora_rank = 12;
    c.config.qk_head_dim = 8;
    c.config.qk_pos_emb_head_dim = 4;
    c.config.v_head_dim = 6;
    c.config.norm_epsilon = 1e-6;
    return c;
  };
  Case lite = mla("mla_v2_lite_yarn");
  lite.config.rotary_scaling_factor = 4;  // YaRN over an original context of 8 (< seq 20)
  lite.config.original_max_position_embeddings = 8;
  lite.config.mscale = 0.707;
  lite.config.mscale_all_dim = 0.707;
  lite.seq = 20;
  m["mla_v2_lite_yarn"] = lite;
  Case v3 = mla("mla_v3_qlora_moe_selective");
  v3.config.q_lora_rank = 10;
  v3.config.num_layers = 3;
  v3.config.rotary_scaling_factor = 40;
  v3.config.original_max_position_embeddings = 4;
  v3.config.mscale = 1.0;
  v3.config.mscale_all_dim = 0.8;  // != mscale: the tables are scaled too
  v3.config.beta_fast = 8;
  v3.config.beta_slow = 0.5;
  v3.config.num_experts = 8;
  v3.config.moe_router_topk = 2;
  v3.config.moe_ffn_hidden_size = 16;
  v3.config.moe_first_k_dense_replace = 1;
  v3.config.moe_router_score_function = "sigmoid";
  v3.config.moe_router_enable_expert_bias = true;
  v3.config.moe_router_topk_scaling_factor = 2.5;
  v3.config.moe_shared_expert_intermediate_size = 16;
  v3.config.moe_router_load_balancing_type = "seq_aux_loss";
  v3.config.moe_aux_loss_coeff = 0.001;
  v3.recompute = Recompute::Selective;
  m["mla_v3_qlora_moe_selective"] = v3;
  Case mtp = v3;  // two multi-token-prediction depths (MoE layers, like the last main layer)
  mtp.config.name = "mla_v3_mtp2";
  mtp.config.mtp_num_layers = 2;
  mtp.config.mtp_loss_scaling_factor = 0.3;
  mtp.recompute = Recompute::None;
  m["mla_v3_mtp2"] = mtp;
  Case mla_full = mla("mla_no_latent_norms_recompute_full");
  mla_full.config.qk_layernorm = false;
  mla_full.config.q_lora_rank = 6;
  mla_full.config.qk_head_dim = 0;  // every query/key dim rotary
  mla_full.recompute = Recompute::Full;
  m["mla_no_latent_norms_recompute_full"] = mla_full;
  // LoRA on every target, and on two (tied embeddings, a recomputed layer).
  Case lora{base("gqa_lora_all_targets")};
  lora.lora.rank = 4;
  lora.lora.alpha = 8;
  m["gqa_lora_all_targets"] = lora;
  Case lora2{base("gqa_lora_qkv_fc2_tied_recompute")};
  lora2.config.untie_embeddings_and_output_weights = false;
  lora2.lora.rank = 3;
  lora2.lora.alpha = 12;
  lora2.lora.targets = {"linear_qkv", "linear_fc2"};
  lora2.recompute = Recompute::Full;
  m["gqa_lora_qkv_fc2_tied_recompute"] = lora2;
  // LoRA dropout (PEFT's lora_dropout on the adapters' input; the masks replicated by the
  // reference from the row keys): every target; a fully recomputed layer (the masks drawn again
  // in the backward) with 4-row micro-batch and packed documents.
  Case drop{base("gqa_lora_dropout")};
  drop.lora.rank = 4;
  drop.lora.alpha = 8;
  drop.lora.dropout = 0.3;
  drop.seq = 13;  // T not a multiple of 4; hidden 32 and ffn 48 split into Philox blocks of 4
  m["gqa_lora_dropout"] = drop;
  Case drop2{base("gqa_lora_dropout_recompute_packed")};
  drop2.lora.rank = 3;
  drop2.lora.alpha = 6;
  drop2.lora.dropout = 0.5;
  drop2.lora.targets = {"linear_proj", "linear_fc1"};
  drop2.recompute = Recompute::Full;
  drop2.packed = true;
  drop2.batch = 4;
  drop2.seq = 20;
  m["gqa_lora_dropout_recompute_packed"] = drop2;
  // LoRA on multi-latent attention (every projection: replicated latent down-projections,
  // column-parallel up-projections, row-parallel output) and on MoE layers (an adapter per routed
  // expert, the shared experts'): DeepSeek-V3-shaped with routed and shared experts, selective
  // recompute; V2-Lite-shaped (queries projected directly) with dense MLPs and LoRA dropout;
  // Mixtral-shaped, adapters on the experts only, full recompute.
  const std::vector<std::string> mla_targets = {"linear_q_down_proj", "linear_q_up_proj", "linear_q_proj",
                                                "linear_kv_down_proj", "linear_kv_up_proj", "linear_proj",
                                                "linear_fc1", "linear_fc2"};
  Case v3_lora = v3;
  v3_lora.config.name = "mla_v3_moe_lora_all_targets";
  v3_lora.lora.rank = 4;
  v3_lora.lora.alpha = 8;
  v3_lora.lora.targets = mla_targets;
  m["mla_v3_moe_lora_all_targets"] = v3_lora;
  Case lite_lora = lite;
  lite_lora.config.name = "mla_v2_lite_lora_dropout";
  lite_lora.lora.rank = 3;
  lite_lora.lora.alpha = 9;
  lite_lora.lora.targets = mla_targets;
  lite_lora.lora.dropout = 0.25;
  lite_lora.recompute = Recompute::Full;
  m["mla_v2_lite_lora_dropout"] = lite_lora;
  Case mix_lora = mix;
  mix_lora.config.name = "moe_mixtral_lora_experts_recompute";
  mix_lora.lora.rank = 2;
  mix_lora.lora.alpha = 6;
  mix_lora.lora.targets = {"linear_fc1", "linear_fc2"};
  mix_lora.recompute = Recompute::Full;
  m["moe_mixtral_lora_experts_recompute"] = mix_lora;
  // Packed rows: documents of random lengths, positions restarting, attention inside each.
  Case packed{base("gqa_packed_documents")};
  packed.packed = true;
  packed.seq = 40;
  packed.batch = 3;
  m["gqa_packed_documents"] = packed;
  Case packed_sel = packed;
  packed_sel.config.name = "gqa_packed_selective_rope_scaling";
  packed_sel.recompute = Recompute::Selective;
  packed_sel.config.use_rope_scaling = true;
  packed_sel.config.original_max_position_embeddings = 16;
  m["gqa_packed_selective_rope_scaling"] = packed_sel;
  // DPO objectives (TRL's formulas) on pairs of rows.
  for (const char* type : {"sigmoid", "hinge", "ipo", "robust"}) {
    Case d{base(type)};
    d.config.name = std::string("dpo_") + type;
    d.dpo = type;
    d.batch = 4;  // 2 pairs
    d.dpo_beta = std::string(type) == "ipo" ? 0.5 : 0.1;
    d.dpo_label_smoothing = std::string(type) == "robust" ? 0.2 : std::string(type) == "sigmoid" ? 0.1 : 0.0;
    m[d.config.name] = d;
  }
  // GRPO objectives (TRL's formulas): 3 groups of 2 completions, with pi_old and pi_ref the
  // policy shifted by fixed per-token offsets, so that ratios fall inside and outside the clip.
  for (const char* type : {"grpo", "dapo", "dr_grpo"}) {
    Case g{base(type)};
    g.config.name = std::string("grpo_") + type;
    g.grpo = type;
    g.batch = 6;
    g.grpo_beta = std::string(type) == "dapo" ? 0.0 : 0.04;
    m[g.config.name] = g;
  }
  Case dpo_lora = m["dpo_sigmoid"];
  dpo_lora.config.name = "dpo_sigmoid_lora";
  dpo_lora.lora.rank = 4;
  m["dpo_sigmoid_lora"] = dpo_lora;
  Case dpo_drop = dpo_lora;  // chosen and rejected rows of a pair: two rows of one sample
  dpo_drop.config.name = "dpo_sigmoid_lora_dropout";
  dpo_drop.lora.dropout = 0.2;
  dpo_drop.recompute = Recompute::Selective;
  m["dpo_sigmoid_lora_dropout"] = dpo_drop;
  return m;
}

std::string config_json(const Case& cs, int64_t B, int64_t T) {
  const ModelConfig& c = cs.config;
  nlohmann::json j;
  if (cs.lora.active())
    j["lora"] = {{"rank", cs.lora.rank}, {"scaling", cs.lora.scaling()}, {"targets", cs.lora.targets},
                 {"dropout", cs.lora.dropout}, {"seed", 42}};
  j["packed"] = cs.packed;
  if (!cs.dpo.empty()) j["dpo"] = {{"type", cs.dpo}, {"beta", cs.dpo_beta}, {"label_smoothing", cs.dpo_label_smoothing}};
  if (!cs.grpo.empty())
    j["grpo"] = {{"type", cs.grpo}, {"beta", cs.grpo_beta}, {"epsilon_low", 0.2}, {"epsilon_high", 0.28},
                 {"group", 2}, {"max_completion_length", cs.seq}};
  j["num_layers"] = c.num_layers;
  j["hidden_size"] = c.hidden_size;
  j["ffn_hidden_size"] = c.ffn_hidden_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_query_groups"] = c.num_query_groups;
  j["head_dim"] = c.head_dim();
  j["rotary_percent"] = c.rotary_percent;
  j["vocab_size"] = c.padded_vocab_size;
  j["norm_epsilon"] = c.norm_epsilon;
  j["rotary_base"] = c.rotary_base;
  j["use_rope_scaling"] = c.use_rope_scaling;
  j["rope_scaling_factor"] = c.rope_scaling_factor;
  j["rope_low_freq_factor"] = c.rope_low_freq_factor;
  j["rope_high_freq_factor"] = c.rope_high_freq_factor;
  j["original_max_position_embeddings"] = c.original_max_position_embeddings;
  j["tied"] = !c.untie_embeddings_and_output_weights;
  j["mtp_num_layers"] = c.mtp_num_layers;
  j["mtp_loss_scaling_factor"] = c.mtp_loss_scaling_factor;
  if (c.multi_latent_attention)
    j["mla"] = {{"q_lora_rank", c.q_lora_rank},
                {"kv_lora_rank", c.kv_lora_rank},
                {"qk_head_dim", c.qk_head_dim},
                {"qk_pos_emb_head_dim", c.qk_pos_emb_head_dim},
                {"v_head_dim", c.v_head_dim},
                {"latent_norms", c.qk_layernorm},
                {"yarn_factor", c.rotary_scaling_factor},
                {"beta_fast", c.beta_fast},
                {"beta_slow", c.beta_slow},
                {"mscale", c.mscale},
                {"mscale_all_dim", c.mscale_all_dim}};
  if (c.num_experts > 0) {
    std::vector<int> moe_layers;
    for (int64_t l = 0; l < c.num_layers + c.mtp_num_layers; ++l) moe_layers.push_back(c.is_moe_layer(l) ? 1 : 0);
    j["moe"] = {{"num_experts", c.num_experts},
                {"topk", c.moe_router_topk},
                {"ffn_hidden_size", c.moe_ffn_hidden_size},
                {"shared_ffn_hidden_size", c.moe_shared_expert_intermediate_size},
                {"layers", moe_layers},
                {"score_function", c.moe_router_score_function},
                {"pre_softmax", c.moe_router_pre_softmax},
                {"num_groups", c.moe_router_num_groups},
                {"group_topk", c.moe_router_group_topk},
                {"group_score", c.moe_router_group_score},
                {"scaling", c.moe_router_topk_scaling_factor},
                {"expert_bias", c.moe_router_enable_expert_bias},
                {"load_balancing", c.moe_router_load_balancing_type},
                {"aux_coeff", c.moe_aux_loss_coeff},
                {"z_coeff", c.moe_z_loss_coeff},
                {"capacity_factor", c.moe_expert_capacity_factor},
                {"drop_policy", c.moe_token_drop_policy}};
  }
  j["batch"] = B;
  j["seq"] = T;
  return j.dump();
}

struct Batch {
  Tensor tokens, labels, mask;
  Tensor positions, segments;  // packed cases
};

// Splits each row into documents of random lengths 1..T/2: positions restart at 0, segments
// count documents.
void pack_documents(Batch& b, uint64_t seed) {
  const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
  b.positions = Tensor::empty({B, T}, DType::I32);
  b.segments = Tensor::empty({B, T}, DType::I32);
  CounterRng rng(seed, stream_id("reference.packing"));
  for (int64_t r = 0; r < B; ++r) {
    int32_t seg = 0, pos = 0;
    int64_t left = 1 + static_cast<int64_t>(rng.bits64(r * 1000) % static_cast<uint64_t>(T / 2));
    for (int64_t t = 0; t < T; ++t) {
      if (left == 0) {
        ++seg;
        pos = 0;
        left = 1 + static_cast<int64_t>(rng.bits64(r * 1000 + t + 1) % static_cast<uint64_t>(T / 2));
      }
      b.positions.data<int32_t>()[r * T + t] = pos++;
      b.segments.data<int32_t>()[r * T + t] = seg;
      --left;
    }
  }
}

// Deterministic batch: random tokens, labels = next token (random at the end), about a
// fifth of positions masked, and optionally some labels -1 (ignored).
Batch make_batch(int64_t B, int64_t T, int64_t V, uint64_t seed, bool ignore_labels) {
  Batch b{Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::F32)};
  CounterRng rng(seed, stream_id("reference.batch"));
  for (int64_t i = 0; i < B * T; ++i) b.tokens.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(i) % V);
  for (int64_t i = 0; i < B * T; ++i) {
    const bool last = (i % T) == T - 1;
    b.labels.data<int32_t>()[i] =
        last ? static_cast<int32_t>(rng.bits64(i + 7777) % V) : b.tokens.data<int32_t>()[i + 1];
    b.mask.data<float>()[i] = rng.uniform(i + 99999) < 0.2f ? 0.f : 1.f;
    if (ignore_labels && rng.uniform(i + 55555) < 0.1f) b.labels.data<int32_t>()[i] = -1;
  }
  return b;
}

int run_model(const std::string& name, const std::string& out) {
  const auto all = cases();
  auto it = all.find(name);
  if (it == all.end()) {
    std::fprintf(stderr, "unknown case '%s' (see `list`)\n", name.c_str());
    return 2;
  }
  const Case& c = it->second;
  auto ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = 42;
  opt.recompute = c.recompute;
  opt.logits_chunk_rows = 7;  // several classifier chunks even on tiny batches
  opt.lora = c.lora;
  DecoderModel model(c.config, ctx, opt);
  Batch b = make_batch(c.batch, c.seq, c.config.padded_vocab_size, 3, c.ignore_labels);
  MicroBatchExtras extras;
  if (c.packed) {
    pack_documents(b, 11);
    extras.positions = &b.positions;
    extras.segments = &b.segments;
  }
  // LoRA dropout: the micro-batch's row keys, as the trainer makes them (step 3; DPO: two rows,
  // chosen and rejected, per sample).
  parallel::LoraDropout dropout;
  if (c.lora.dropout > 0) {
    std::vector<int64_t> samples;
    const int64_t per = c.dpo.empty() ? 1 : 2;
    for (int64_t i = 0; i < c.batch / per; ++i) samples.push_back(100 + 7 * i);
    dropout = {c.lora.dropout, opt.seed, parallel::lora_dropout_row_keys(3, samples, c.batch)};
    extras.lora_dropout = &dropout;
  }
  if (c.lora.active())  // lora_B starts at zero: random values give lora_A a gradient too
    for (NamedTensor* p : model.parameters())
      if (p->name.find("lora_B") != std::string::npos) {
        CounterRng rng(6, stream_id(p->name));
        rng.fill_normal(p->value, 0.f, 0.2f, 0);
      }

  NamedTensorList tensors;
  // The expert bias starts at zero in training; random values test its role in the routing.
  for (NamedTensor* b : model.buffers()) {
    CounterRng rng(5, stream_id(b->name));
    rng.fill_normal(b->value, 0.f, 0.05f, 0);
    tensors.emplace_back("buffer." + b->name, b->value.clone());
  }
  for (NamedTensor* p : model.parameters()) tensors.emplace_back("param." + p->name, p->value.clone());
  // The gradient of the mean loss (+ the MoE losses): first count loss tokens with a weightless pass.
  const double tokens = model.forward_only(b.tokens, b.labels, b.mask, extras).num_tokens;
  model.zero_grads();
  // DPO: the pairs' mean loss through the row-weight hook (reference log-probs: the policy's
  // shifted by fixed offsets, so that every pair has a different margin).
  const int64_t P = c.batch / 2;
  train::DpoPairs pairs;
  train::DpoOptions dopt;
  double dpo_mean = 0;
  LossWeightsHook hook;
  RowLossWeights weights = [&](const std::vector<double>& rows) {
    pairs = {};
    const float* mask = b.mask.data<float>();
    auto len = [&](int64_t row) {
      double n = 0;
      for (int64_t t = 0; t < c.seq; ++t)
        n += b.labels.data<int32_t>()[row * c.seq + t] >= 0 ? mask[row * c.seq + t] : 0.f;
      return n;
    };
    for (int64_t i = 0; i < P; ++i) {
      pairs.policy_chosen.push_back(-rows[static_cast<size_t>(i)]);
      pairs.policy_rejected.push_back(-rows[static_cast<size_t>(P + i)]);
      pairs.ref_chosen.push_back(-rows[static_cast<size_t>(i)] + 0.3 * static_cast<double>(i + 1));
      pairs.ref_rejected.push_back(-rows[static_cast<size_t>(P + i)] - 0.2 * static_cast<double>(i) + 0.1);
      pairs.len_chosen.push_back(len(i));
      pairs.len_rejected.push_back(len(P + i));
    }
    std::vector<double> dc, dr;
    const train::DpoStats st = train::dpo_loss(pairs, dopt, &dc, &dr);
    dpo_mean = st.loss_sum / static_cast<double>(P);
    std::vector<float> w(static_cast<size_t>(2 * P));
    for (int64_t i = 0; i < P; ++i) {  // row_loss_sum = -logp: weight = -d loss / d logp, over P pairs
      w[static_cast<size_t>(i)] = static_cast<float>(-dc[static_cast<size_t>(i)] / static_cast<double>(P));
      w[static_cast<size_t>(P + i)] = static_cast<float>(-dr[static_cast<size_t>(i)] / static_cast<double>(P));
    }
    return w;
  };
  // GRPO: rewards per row, the TRL objective through the token-weight hook.
  std::vector<float> rewards, old_shift, ref_shift;
  double grpo_value = 0;
  rl::GrpoLossOptions gopt;
  if (!c.grpo.empty()) {
    gopt.loss_type = rl::parse_grpo_loss_type(c.grpo);
    gopt.beta = c.grpo_beta;
    gopt.epsilon_low = 0.2;
    gopt.epsilon_high = 0.28;
    gopt.max_completion_length = c.seq;
    const float r[] = {1.f, 0.f, 0.25f, 0.75f, 0.5f, 0.5f};  // the last group: no variance
    rewards.assign(r, r + c.batch);
    const int64_t N = c.batch * c.seq;
    for (int64_t k = 0; k < N; ++k) {  // log pi_old = log pi + shift: ratio exp(-shift), some clipped
      const float shifts[] = {-0.4f, -0.1f, 0.05f, 0.3f, 0.0f, 0.5f, -0.25f};
      old_shift.push_back(shifts[k % 7]);
      ref_shift.push_back(0.1f * static_cast<float>((k % 5) - 2));
    }
    hook = [&, c](const std::vector<float>& token_losses) {
      const std::vector<double> adv =
          rl::grpo_advantages(std::vector<double>(rewards.begin(), rewards.end()), 2, rl::RewardScaling::Group);
      const float* mask = b.mask.data<float>();
      std::vector<double> len(static_cast<size_t>(c.batch), 0.0);
      double tokens = 0;
      for (int64_t k = 0; k < N; ++k) {
        const double m = mask[k] != 0.f && b.labels.data<int32_t>()[k] >= 0 ? 1.0 : 0.0;
        len[static_cast<size_t>(k / c.seq)] += m;
        tokens += m;
      }
      std::vector<float> w(token_losses.size(), 0.f);
      grpo_value = 0;
      for (int64_t k = 0; k < N; ++k) {
        if (mask[k] == 0.f || b.labels.data<int32_t>()[k] < 0) continue;
        const auto row = static_cast<size_t>(k / c.seq);
        const double logp = -static_cast<double>(token_losses[static_cast<size_t>(k)]);
        const rl::GrpoTokenLoss l = rl::grpo_token_loss(logp, logp + old_shift[static_cast<size_t>(k)],
                                                        logp + ref_shift[static_cast<size_t>(k)], adv[row], gopt);
        const double n = rl::grpo_token_norm(gopt, static_cast<int64_t>(len[row]), static_cast<double>(c.batch), tokens);
        grpo_value += n * l.loss;
        w[static_cast<size_t>(k)] = static_cast<float>(-l.dlogp * n);
      }
      return w;
    };
    extras.loss_weights = &hook;
  }
  if (!c.dpo.empty()) {
    dopt.beta = c.dpo_beta;
    dopt.loss = train::parse_dpo_loss_type(c.dpo);
    dopt.label_smoothing = c.dpo_label_smoothing;
    hook = row_loss_weights(c.batch, weights);
    extras.loss_weights = &hook;
  }
  const auto r = model.forward_backward(b.tokens, b.labels, b.mask, static_cast<float>(1.0 / tokens), 1.f, extras);
  double aux = 0, dropped = 0;  // the MoE losses of this one forward, coefficients included
  for (MoeMlp* layer : model.moe_layers()) {
    aux += c.config.moe_aux_loss_coeff * layer->stats().load_balancing_loss +
           c.config.moe_z_loss_coeff * layer->stats().z_loss;
    dropped += layer->stats().dropped;
  }
  if (c.config.moe_expert_capacity_factor > 0 && dropped == 0)
    std::fprintf(stderr, "%s: no token was dropped: the capacity case tests nothing\n", name.c_str());
  tensors.emplace_back("dropped", Tensor::from_floats({static_cast<float>(dropped)}, {}));
  tensors.emplace_back("aux", Tensor::from_floats({static_cast<float>(aux)}, {}));
  for (NamedTensor* p : model.parameters()) tensors.emplace_back("grad." + p->name, p->grad);
  if (dropout.active()) {
    Tensor keys = Tensor::empty({c.batch}, DType::I64);
    for (int64_t i = 0; i < c.batch; ++i)
      keys.data<int64_t>()[i] = static_cast<int64_t>(dropout.row_keys[static_cast<size_t>(i)]);
    tensors.emplace_back("lora_row_keys", keys);
  }
  tensors.emplace_back("tokens", b.tokens);
  tensors.emplace_back("labels", b.labels);
  tensors.emplace_back("loss_mask", b.mask);
  if (c.packed) {  // logits() has no packed path: checked through the loss and the gradients
    tensors.emplace_back("positions", b.positions);
    tensors.emplace_back("segments", b.segments);
  } else {
    tensors.emplace_back("logits", model.logits(b.tokens));
  }
  if (!c.grpo.empty()) {
    tensors.emplace_back("rewards", Tensor::from_floats(rewards, {c.batch}));
    tensors.emplace_back("old_shift", Tensor::from_floats(old_shift, {c.batch, c.seq}));
    tensors.emplace_back("ref_shift", Tensor::from_floats(ref_shift, {c.batch, c.seq}));
    tensors.emplace_back("loss", Tensor::from_floats({static_cast<float>(grpo_value)}, {}));
  } else if (!c.dpo.empty()) {
    std::vector<float> rc(pairs.ref_chosen.begin(), pairs.ref_chosen.end()),
        rr(pairs.ref_rejected.begin(), pairs.ref_rejected.end());
    tensors.emplace_back("ref_chosen", Tensor::from_floats(rc, {P}));
    tensors.emplace_back("ref_rejected", Tensor::from_floats(rr, {P}));
    tensors.emplace_back("loss", Tensor::from_floats({static_cast<float>(dpo_mean)}, {}));
  } else {
    tensors.emplace_back("loss", Tensor::from_floats({static_cast<float>(r.loss_sum / r.num_tokens)}, {}));
  }
  for (size_t k = 0; k < r.mtp_loss_sums.size(); ++k)
    tensors.emplace_back(fmt::format("mtp_loss.{}", k),
                         Tensor::from_floats({static_cast<float>(r.mtp_loss_sums[k] / r.mtp_num_tokens[k])}, {}));
  save_safetensors(out, tensors, {{"config", config_json(c, c.batch, c.seq)}, {"case", name}});
  std::printf("%s: loss %.6f over %.0f tokens, %.0f MoE slots dropped -> %s\n", name.c_str(),
              r.loss_sum / r.num_tokens, r.num_tokens, dropped, out.c_str());
  return 0;
}

int run_optim(const std::string& out) {
  ModelConfig c = base("optim_gqa_untied");
  const int64_t B = 2, T = 10, steps = 20, micro = 2;
  auto ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = 7;
  DecoderModel model(c, ctx, opt);
  NamedTensorList tensors;
  for (NamedTensor* p : model.parameters()) tensors.emplace_back("init." + p->name, p->value.clone());

  AdamWConfig acfg;
  acfg.beta1 = 0.9f;
  acfg.beta2 = 0.95f;
  acfg.eps = 1e-8f;
  acfg.clip_grad = 1.0f;
  AdamW adam(ctx, model.parameters(), acfg);
  MegatronScheduleArgs sargs;
  sargs.lr = 1e-2;
  sargs.min_lr = 1e-3;
  sargs.lr_decay_style = "cosine";
  sargs.global_batch_size = B * micro;
  sargs.train_iters = steps;
  sargs.lr_warmup_iters = 5;
  sargs.weight_decay = 0.1;
  const LrSchedule schedule(megatron_schedule(sargs));

  std::vector<float> lrs, losses;
  for (int64_t s = 0; s < steps; ++s) {
    const double consumed = static_cast<double>(s * sargs.global_batch_size);
    std::vector<Batch> batches;
    double tokens = 0;
    for (int64_t m = 0; m < micro; ++m) {
      batches.push_back(make_batch(B, T, c.padded_vocab_size, 1000 + s * micro + m, false));
      for (int64_t i = 0; i < B * T; ++i) tokens += batches.back().mask.data<float>()[i];
    }
    model.zero_grads();
    double loss_sum = 0;
    for (int64_t m = 0; m < micro; ++m) {
      const Batch& b = batches[m];
      loss_sum += model.forward_backward(b.tokens, b.labels, b.mask, static_cast<float>(1.0 / tokens)).loss_sum;
      const std::string tag = "." + std::to_string(s) + "." + std::to_string(m);
      tensors.emplace_back("tokens" + tag, b.tokens);
      tensors.emplace_back("labels" + tag, b.labels);
      tensors.emplace_back("loss_mask" + tag, b.mask);
    }
    const double lr = schedule.lr(consumed);
    adam.step(lr, schedule.weight_decay(consumed));
    lrs.push_back(static_cast<float>(lr));
    losses.push_back(static_cast<float>(loss_sum / tokens));
  }
  for (NamedTensor* p : model.parameters()) tensors.emplace_back("final." + p->name, p->value);
  tensors.emplace_back("lr", Tensor::from_floats(lrs, {steps}));
  tensors.emplace_back("loss", Tensor::from_floats(losses, {steps}));
  nlohmann::json o;
  o["lr"] = sargs.lr;
  o["min_lr"] = sargs.min_lr;
  o["warmup_iters"] = sargs.lr_warmup_iters;
  o["train_iters"] = steps;
  o["micro_batches"] = micro;
  o["beta1"] = acfg.beta1;
  o["beta2"] = acfg.beta2;
  o["eps"] = acfg.eps;
  o["weight_decay"] = sargs.weight_decay;
  o["clip_grad"] = acfg.clip_grad;
  save_safetensors(out, tensors, {{"config", config_json(Case{c}, B, T)}, {"optimizer", o.dump()}, {"case", "optim"}});
  std::printf("optim: loss %.5f -> %.5f over %lld steps -> %s\n", losses.front(), losses.back(),
              static_cast<long long>(steps), out.c_str());
  return 0;
}

// The router top-k on tie-heavy logits: values from a few levels (many equal scores in a row),
// some rows with one group a copy of another (groups with identical scores), some rows all
// equal. The sigmoid levels have no pair x, -x (sigmoid(x) + sigmoid(-x) = 1 would tie two
// different sums up to rounding, which fp32 and the float64 reference may order differently).
int run_router(const std::string& out) {
  struct RouterCase {
    const char* name;
    int64_t E, k;
    ops::MoeRouting r;
    std::vector<float> levels;
    std::vector<float> bias_levels;  // empty: no bias
  };
  auto routing = [](int64_t k, bool sigmoid, bool pre, int64_t G, int64_t gk, bool max, float scaling) {
    ops::MoeRouting r;
    r.topk = k;
    r.sigmoid = sigmoid;
    r.pre_softmax = pre;
    r.num_groups = G;
    r.group_topk = gk;
    r.group_max = max;
    r.scaling = scaling;
    return r;
  };
  const std::vector<float> half = {-1.f, -0.5f, 0.f, 0.5f, 1.f};
  const std::vector<RouterCase> rcases = {
      // DeepSeek-V2 (group_limited_greedy, norm_topk_prob false): softmax over all experts first.
      {"v2_max_presoftmax", 16, 5, routing(5, false, true, 4, 2, true, 16.f), half, {}},
      // norm_topk_prob true: selected on the logits, softmax over the chosen.
      {"v2_max_renorm", 24, 6, routing(6, false, false, 8, 3, true, 1.f), half, {}},
      // one group per token (topk_group 1) holding all k.
      {"v2_max_one_group", 16, 4, routing(4, false, true, 4, 1, true, 1.f), half, {}},
      // DeepSeek-V3 (noaux_tc): sigmoid + bias, a group scored by its top 2 (= k / group_topk).
      {"v3_top2sum_bias", 16, 4, routing(4, true, false, 4, 2, false, 2.5f), {-1.3f, -0.6f, 0.2f, 0.9f, 1.7f},
       {0.f, 0.125f}},
  };
  auto ctx = ops::Context::cpu();
  std::mt19937 gen(1234);
  NamedTensorList tensors;
  nlohmann::json meta = nlohmann::json::object();
  const int64_t N = 96;
  for (const RouterCase& rc : rcases) {
    const int64_t E = rc.E, G = rc.r.num_groups, per = E / G;
    std::vector<float> z(static_cast<size_t>(N * E));
    std::uniform_int_distribution<size_t> pick(0, rc.levels.size() - 1);
    std::uniform_int_distribution<int64_t> group(0, G - 1);
    for (int64_t t = 0; t < N; ++t) {
      float* zt = z.data() + t * E;
      for (int64_t i = 0; i < E; ++i) zt[i] = rc.levels[pick(gen)];
      if (t % 4 == 1) {  // one group a copy of another: equal group scores
        const int64_t a = group(gen), b = (a + 1 + group(gen) % (G - 1)) % G;
        for (int64_t i = 0; i < per; ++i) zt[b * per + i] = zt[a * per + i];
      } else if (t % 4 == 2) {  // every group a copy of group 0
        for (int64_t g = 1; g < G; ++g)
          for (int64_t i = 0; i < per; ++i) zt[g * per + i] = zt[i];
      } else if (t == 3) {  // all equal
        std::fill(zt, zt + E, rc.levels[1]);
      }
    }
    Tensor logits = Tensor::from_floats(z, {N, E});
    Tensor bias;
    if (!rc.bias_levels.empty()) {
      // One bias per group: two groups' top-2 sums then tie only when their scores do (a bias
      // per expert makes sums like (a + b1) + c and a + (c + b1), equal up to rounding).
      std::vector<float> b(static_cast<size_t>(E));
      std::uniform_int_distribution<size_t> pb(0, rc.bias_levels.size() - 1);
      for (int64_t g = 0; g < G; ++g) std::fill(b.begin() + g * per, b.begin() + (g + 1) * per, rc.bias_levels[pb(gen)]);
      bias = Tensor::from_floats(b, {E});
      tensors.emplace_back(fmt::format("bias.{}", rc.name), bias);
    }
    Tensor probs = Tensor::empty({N, rc.k}, DType::F32), indices = Tensor::empty({N, rc.k}, DType::I32);
    ops::moe_topk_forward(ctx, probs, indices, logits, bias, rc.r);
    tensors.emplace_back(fmt::format("logits.{}", rc.name), logits);
    tensors.emplace_back(fmt::format("probs.{}", rc.name), probs);
    tensors.emplace_back(fmt::format("indices.{}", rc.name), indices);
    meta[rc.name] = {{"topk", rc.r.topk},          {"sigmoid", rc.r.sigmoid},
                     {"pre_softmax", rc.r.pre_softmax}, {"num_groups", rc.r.num_groups},
                     {"group_topk", rc.r.group_topk},   {"group_max", rc.r.group_max},
                     {"scaling", rc.r.scaling},         {"bias", bias.defined()}};
  }
  save_safetensors(out, tensors, {{"router", meta.dump()}, {"case", "router"}});
  std::printf("router: %zu routing cases of %lld tokens -> %s\n", rcases.size(), static_cast<long long>(N),
              out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "list") {
      for (const auto& [name, c] : cases()) std::printf("%s\n", name.c_str());
      return 0;
    }
    if (mode == "model" && argc == 4) return run_model(argv[2], argv[3]);
    if (mode == "optim" && argc == 3) return run_optim(argv[2]);
    if (mode == "router" && argc == 3) return run_router(argv[2]);
    std::fprintf(stderr, "usage: %s list | model <case> <out.safetensors> | optim <out.safetensors> | router "
                 "<out.safetensors>\n", argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

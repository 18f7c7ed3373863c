#include "model/decoder_layer.h"

#include "core/trace.h"
#include "model/attention_mla.h"
#include "model/mlp_dense.h"
#include "model/mlp_moe.h"
#include "model/rotary.h"

namespace primus {

DecoderLayer::DecoderLayer(LayerSpec spec, std::unique_ptr<AttentionBlock> attention, std::unique_ptr<Block> mlp)
    : spec_(std::move(spec)), attention_(std::move(attention)), mlp_(std::move(mlp)) {}

std::vector<NamedTensor*> DecoderLayer::params() const {
  std::vector<NamedTensor*> out = attention_->params();
  for (NamedTensor* p : mlp_->params()) out.push_back(p);
  return out;
}

std::vector<NamedTensor*> DecoderLayer::overwritten_grads() const {
  std::vector<NamedTensor*> out = attention_->overwritten_grads();
  for (NamedTensor* p : mlp_->overwritten_grads()) out.push_back(p);
  return out;
}

void DecoderLayer::forward(LayerEnv& env, const Tensor& x, Tensor& y, LayerActivations& acts, Recompute keep) {
  Arena& A = env.arena;
  // The dropout masks of this micro-batch: a forward re-run inside the backward keeps the copy.
  std::shared_ptr<const parallel::LoraDropout> dropout = acts.lora_dropout;
  if (!env.recomputing) {
    dropout = env.training && env.lora_dropout != nullptr && env.lora_dropout->active()
                  ? std::make_shared<const parallel::LoraDropout>(*env.lora_dropout)
                  : nullptr;
    if (dropout) env.lora_dropout->applied = true;
  }
  acts = LayerActivations{};
  acts.x = x;
  acts.lora_dropout = dropout;
  const Arena::Mark start = A.mark();
  acts.x_mid = A.alloc({env.dims.residual_rows(), env.dims.C}, x.dtype());
  {
    const trace::Range range("attention forward");
    attention_->forward(env, x, acts.x_mid, acts.attention, keep);
  }
  {
    const trace::Range range("mlp forward");
    mlp_->forward(env, acts.x_mid, y, acts.mlp, keep);
  }
  if (keep == Recompute::Full) {  // only the input is kept
    A.release(start);
    acts = LayerActivations{};
    acts.x = x;
    acts.lora_dropout = dropout;
  }
}

void DecoderLayer::backward(LayerEnv& env_in, LayerActivations& acts, Tensor& dres, Recompute kept) {
  LayerEnv env = env_in;  // the forward's dropout masks (LayerEnv::lora_dropout)
  env.lora_dropout = acts.lora_dropout.get();
  Arena& A = env.arena;
  if (kept == Recompute::Full) {  // re-run the layer keeping everything, then backward as usual
    const Arena::Mark start = A.mark();
    const Tensor x = acts.x;
    const std::shared_ptr<const parallel::LoraDropout> dropout = acts.lora_dropout;
    Tensor y = A.alloc({env.dims.residual_rows(), env.dims.C}, x.dtype());
    LayerEnv again = env;
    again.recomputing = true;
    forward(again, x, y, acts, Recompute::None);
    backward(again, acts, dres, Recompute::None);
    A.release(start);
    acts = LayerActivations{};
    acts.x = x;
    acts.lora_dropout = dropout;
    return;
  }
  {
    const trace::Range range("mlp backward");
    mlp_->backward(env, *acts.mlp, dres, kept);  // dres = d x_mid
  }
  const trace::Range range("attention backward");
  attention_->backward(env, *acts.attention, dres, kept);  // dres = d x
}

DecoderLayer make_decoder_layer(const ModelConfig& c, const LayerSpec& spec, const ParamLookup& lookup, int tp_size,
                                const LoraBinding* lora) {
  const std::string& pre = spec.prefix;
  auto adapter = [&](const std::string& base_weight) {
    parallel::LoraAdapter a;
    if (lora == nullptr) return a;
    a.a = lora->find(lora_a_name(base_weight));
    a.b = lora->find(lora_b_name(base_weight));
    a.scaling = lora->scaling;
    PRIMUS_CHECK((a.a == nullptr) == (a.b == nullptr), "LoRA: '{}' has only one of lora_A / lora_B", base_weight);
    return a;
  };
  std::unique_ptr<AttentionBlock> attention;
  const float softmax_scale = rotary_of(c).softmax_scale;
  if (spec.attention == AttentionKind::MLA) {
    const std::string a = pre + "self_attention.";
    MlaParams p;
    p.norm = lookup(pre + "input_layernorm.weight");
    if (c.q_lora_rank > 0) {
      p.q_down = lookup(a + "linear_q_down_proj.weight");
      if (c.qk_layernorm) p.q_norm = lookup(a + "q_layernorm.weight");
      p.q_up = lookup(a + "linear_q_up_proj.weight");
      p.q_down_lora = adapter(a + "linear_q_down_proj.weight");
      p.q_up_lora = adapter(a + "linear_q_up_proj.weight");
    } else {
      p.q = lookup(a + "linear_q_proj.weight");
      p.q_lora = adapter(a + "linear_q_proj.weight");
    }
    p.kv_down = lookup(a + "linear_kv_down_proj.weight");
    if (c.qk_layernorm) p.kv_norm = lookup(a + "kv_layernorm.weight");
    p.kv_up = lookup(a + "linear_kv_up_proj.weight");
    p.proj = lookup(a + "linear_proj.weight");
    p.kv_down_lora = adapter(a + "linear_kv_down_proj.weight");
    p.kv_up_lora = adapter(a + "linear_kv_up_proj.weight");
    p.proj_lora = adapter(a + "linear_proj.weight");
    const MlaDims dims{c.num_attention_heads / tp_size, c.q_lora_rank, c.kv_lora_rank, c.qk_head_dim,
                      c.qk_pos_emb_head_dim, c.v_head_dim};
    attention = std::make_unique<MlaAttention>(p, dims, softmax_scale);
  } else {
    attention = std::make_unique<GqaAttention>(
        GqaParams{lookup(pre + "input_layernorm.weight"), lookup(pre + "self_attention.linear_qkv.weight"),
                  lookup(pre + "self_attention.linear_proj.weight"), adapter(pre + "self_attention.linear_qkv.weight"),
                  adapter(pre + "self_attention.linear_proj.weight")},
        c.num_attention_heads / tp_size, c.query_groups() / tp_size, c.head_dim(), softmax_scale);
  }
  std::unique_ptr<Block> mlp;
  NamedTensor* mlp_norm = lookup(pre + "pre_mlp_layernorm.weight");
  if (spec.mlp == MlpKind::MoE) {
    const std::string m = pre + "mlp.";
    const bool shared = c.moe_shared_expert_intermediate_size > 0;
    MoeParams mp{mlp_norm, lookup(m + "router.weight"),
                 c.moe_router_enable_expert_bias ? lookup(m + "router.expert_bias") : nullptr,
                 lookup(m + "experts.linear_fc1.weight"), lookup(m + "experts.linear_fc2.weight"),
                 shared ? lookup(m + "shared_experts.linear_fc1.weight") : nullptr,
                 shared ? lookup(m + "shared_experts.linear_fc2.weight") : nullptr};
    mp.fc1_lora = adapter(m + "experts.linear_fc1.weight");
    mp.fc2_lora = adapter(m + "experts.linear_fc2.weight");
    if (shared) {
      mp.shared_fc1_lora = adapter(m + "shared_experts.linear_fc1.weight");
      mp.shared_fc2_lora = adapter(m + "shared_experts.linear_fc2.weight");
    }
    mlp = std::make_unique<MoeMlp>(mp, c, spec.index, tp_size);
  } else {
    mlp = std::make_unique<DenseMlp>(
        MlpParams{mlp_norm, lookup(pre + "mlp.linear_fc1.weight"), lookup(pre + "mlp.linear_fc2.weight"),
                  adapter(pre + "mlp.linear_fc1.weight"), adapter(pre + "mlp.linear_fc2.weight")},
        c.ffn_hidden_size / tp_size);
  }
  return DecoderLayer(spec, std::move(attention), std::move(mlp));
}

}  // namespace primus

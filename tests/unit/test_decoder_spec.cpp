// decoder_spec: the one ModelConfig -> parameter table / layer parts mapping. Checks the
// table against the names and shapes written out by hand (Megatron-core names), that the
// training model, generation and the converter hold exactly the table, the MoE layer
// pattern (moe_layer_freq, its list form, first-k-dense), the tensor/expert-parallel splits,
// and that parts not built yet are refused by key.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "convert/hf_model.h"
#include "infer/cached_decoder.h"
#include "model/decoder.h"
#include "model/decoder_spec.h"

using namespace primus;

namespace {

ModelConfig llama() {
  ModelConfig c = test::tiny_llama({.name = "spec_llama"});
  c.normalization = "RMSNorm";
  c.position_embedding_type = "rope";
  return c;
}

ModelConfig mixtral_like() {
  ModelConfig c = llama();
  c.name = "spec_moe";
  c.num_layers = 3;
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = 8;
  return c;
}

std::vector<std::string> names(const std::vector<ParamSpec>& t) {
  std::vector<std::string> n;
  for (const ParamSpec& p : t) n.push_back(p.name);
  return n;
}

}  // namespace

TEST(DecoderSpec, LlamaTableIsMegatronsNamesShapesAndSplits) {
  ModelConfig c = llama();
  const std::vector<ParamSpec> t = parameter_table(c);
  const int64_t C = 16, D = 4, Hq = 4, Hkv = 2, F = 24, V = 32;
  struct Want {
    std::string name;
    Shape shape;
    ParamSplit split;
    ParamInit init;
  };
  std::vector<Want> want = {{"embedding.word_embeddings.weight", {V, C}, ParamSplit::Column, ParamInit::Normal}};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "decoder.layers." + std::to_string(l) + ".";
    want.push_back({p + "input_layernorm.weight", {C}, ParamSplit::Replicated, ParamInit::Ones});
    want.push_back({p + "self_attention.linear_qkv.weight", {(Hq + 2 * Hkv) * D, C}, ParamSplit::Column,
                    ParamInit::Normal});
    want.push_back({p + "self_attention.linear_proj.weight", {C, Hq * D}, ParamSplit::Row, ParamInit::ScaledNormal});
    want.push_back({p + "pre_mlp_layernorm.weight", {C}, ParamSplit::Replicated, ParamInit::Ones});
    want.push_back({p + "mlp.linear_fc1.weight", {2 * F, C}, ParamSplit::Column, ParamInit::Normal});
    want.push_back({p + "mlp.linear_fc2.weight", {C, F}, ParamSplit::Row, ParamInit::ScaledNormal});
  }
  want.push_back({"decoder.final_layernorm.weight", {C}, ParamSplit::Replicated, ParamInit::Ones});
  want.push_back({"output_layer.weight", {V, C}, ParamSplit::Column, ParamInit::Normal});
  ASSERT_EQ(t.size(), want.size());
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(t[i].name, want[i].name);
    EXPECT_EQ(t[i].shape, want[i].shape) << t[i].name;
    EXPECT_EQ(t[i].split, want[i].split) << t[i].name;
    EXPECT_EQ(t[i].init, want[i].init) << t[i].name;
  }
  EXPECT_EQ(t[2].parts, (std::vector<int64_t>{Hq * D, Hkv * D, Hkv * D}));  // qkv split head by head
  EXPECT_EQ(t[5].parts, (std::vector<int64_t>{F, F}));                     // [gate | up]
  c.untie_embeddings_and_output_weights = false;
  EXPECT_EQ(parameter_table(c).back().name, "decoder.final_layernorm.weight");
}

TEST(DecoderSpec, TrainingGenerationAndConversionHoldExactlyTheTable) {
  for (bool untied : {true, false}) {
    ModelConfig c = llama();
    c.untie_embeddings_and_output_weights = untied;
    ops::Context ctx = ops::Context::cpu();
    DecoderModel model(c, ctx);
    std::vector<std::string> held;
    for (NamedTensor* p : model.parameters()) held.push_back(p->name);
    const std::vector<std::string> table = names(parameter_table(c));
    EXPECT_EQ(held, table);
    std::vector<std::string> read;
    for (const auto& [name, shape] : infer::decoder_weight_shapes(c)) read.push_back(name);
    EXPECT_EQ(read, table);
    EXPECT_EQ(convert::primus_parameter_names(c), table);
    infer::CachedDecoder decoder(model.config(), ctx, infer::weights_of(model));  // takes them all
  }
}

TEST(DecoderSpec, MoeLayersFollowFreqPatternAndFirstDense) {
  ModelConfig c = mixtral_like();
  for (int64_t l = 0; l < 3; ++l) EXPECT_EQ(decoder_layer(c, l).mlp, MlpKind::MoE) << l;
  c.moe_layer_freq = 2;  // layers 0 and 2
  EXPECT_EQ(decoder_layer(c, 0).mlp, MlpKind::MoE);
  EXPECT_EQ(decoder_layer(c, 1).mlp, MlpKind::Dense);
  EXPECT_EQ(decoder_layer(c, 2).mlp, MlpKind::MoE);
  c.moe_layer_pattern = {0, 1, 1};  // Megatron's "([0]*1+[1]*2)"
  EXPECT_EQ(decoder_layer(c, 0).mlp, MlpKind::Dense);
  EXPECT_EQ(decoder_layer(c, 1).mlp, MlpKind::MoE);
  c.moe_layer_pattern.clear();
  c.moe_layer_freq = 1;
  c.moe_first_k_dense_replace = 1;
  EXPECT_EQ(decoder_layer(c, 0).mlp, MlpKind::Dense);
  EXPECT_EQ(decoder_layer(c, 1).mlp, MlpKind::MoE);

  // An MoE layer's tensors: router, stacked experts (E, out, in), shared experts, expert bias.
  c.moe_shared_expert_intermediate_size = 12;
  c.moe_router_enable_expert_bias = true;
  const std::vector<ParamSpec> t = layer_params(c, decoder_layer(c, 1));
  const std::vector<std::string> want = {
      "decoder.layers.1.input_layernorm.weight",          "decoder.layers.1.self_attention.linear_qkv.weight",
      "decoder.layers.1.self_attention.linear_proj.weight", "decoder.layers.1.pre_mlp_layernorm.weight",
      "decoder.layers.1.mlp.router.weight",               "decoder.layers.1.mlp.router.expert_bias",
      "decoder.layers.1.mlp.experts.linear_fc1.weight",   "decoder.layers.1.mlp.experts.linear_fc2.weight",
      "decoder.layers.1.mlp.shared_experts.linear_fc1.weight",
      "decoder.layers.1.mlp.shared_experts.linear_fc2.weight"};
  ASSERT_EQ(names(t), want);
  EXPECT_EQ(t[4].shape, (Shape{4, 16}));
  EXPECT_EQ(t[4].role, ParamRole::Router);
  EXPECT_FALSE(t[5].trainable());  // the expert bias is a buffer
  EXPECT_EQ(t[6].shape, (Shape{4, 16, 16}));
  EXPECT_EQ(t[6].split, ParamSplit::ExpertsColumn);
  EXPECT_EQ(t[7].split, ParamSplit::ExpertsRow);
  EXPECT_EQ(t[7].shape, (Shape{4, 16, 8}));
  EXPECT_EQ(t[7].init, ParamInit::ScaledNormal);
  EXPECT_EQ(t[8].shape, (Shape{24, 16}));
  // Buffers are not counted as parameters.
  int64_t trainable = 0, all = 0;
  for (const ParamSpec& p : t) {
    trainable += p.trainable() ? p.numel() : 0;
    all += p.numel();
  }
  EXPECT_EQ(count_table_parameters(t), trainable);
  EXPECT_EQ(all - trainable, 4);  // the (E) expert bias
}

TEST(DecoderSpec, ShardsSplitColumnsRowsAndWholeExperts) {
  ModelConfig c = mixtral_like();
  const std::vector<ParamSpec> t = layer_params(c, decoder_layer(c, 0));
  const ParamSpec& qkv = t[1];
  const parallel::ShardSpec q1 = shard_of(qkv, 1, 2);
  EXPECT_EQ(q1.dim, 0);
  EXPECT_EQ(q1.local_shape(), (Shape{16, 16}));  // half of each of q (16), k (8), v (8)
  const parallel::ShardSpec proj = shard_of(t[2], 0, 2);
  EXPECT_EQ(proj.dim, 1);
  EXPECT_EQ(proj.local_shape(), (Shape{16, 8}));
  const ParamSpec& experts = t[5];  // fc1 (4, 2 x 8, 16): [gate | up] per expert
  ASSERT_EQ(experts.split, ParamSplit::ExpertsColumn);
  // Tensor parallel splits each expert like a dense MLP: rank 1 holds [gate rows 4..7 | up rows 4..7].
  const parallel::ShardSpec t1 = shard_of(experts, 1, 2);
  EXPECT_EQ(t1.dim, 1);
  EXPECT_EQ(t1.local_shape(), (Shape{4, 8, 16}));
  EXPECT_EQ(parallel::shard_runs(t1).front().full_offset, 4 * 16);  // expert 0, gate row 4
  const parallel::ShardSpec fc2 = shard_of(t[6], 1, 2);  // fc2 (4, 16, 8): input columns
  EXPECT_EQ(fc2.dim, 2);
  EXPECT_EQ(fc2.local_shape(), (Shape{4, 16, 4}));
  // Expert parallel: whole experts (dim 0); the tp split then applies to this rank's experts.
  const parallel::ShardSpec e1 = expert_shard_of(experts, 1, 2);  // expert-parallel rank 1 of 2
  EXPECT_EQ(e1.dim, 0);
  EXPECT_EQ(e1.local_shape(), (Shape{2, 16, 16}));
  EXPECT_EQ(shard_of(experts, 0, 1, 1, 2).local_shape(), (Shape{2, 16, 16}));
  const parallel::ShardSpec both = shard_of(experts, 1, 2, 1, 2);  // EP2 x TP2
  EXPECT_EQ(both.full_shape, (Shape{2, 16, 16}));
  EXPECT_EQ(both.local_shape(), (Shape{2, 8, 16}));
  // Its first run in the full tensor: expert 2 (the first of ep rank 1), gate row 4.
  EXPECT_EQ(parallel::shard_runs(both, e1).front().full_offset, 2 * 16 * 16 + 4 * 16);
  EXPECT_FALSE(expert_shard_of(t[0], 1, 2).sharded());  // only routed experts split over ep
  EXPECT_FALSE(shard_of(t[0], 1, 2).sharded());  // norms are replicated
  EXPECT_THROW(expert_shard_of(experts, 0, 3), Error);  // 4 experts do not split over 3 ranks
}

TEST(DecoderSpec, PartsNotBuiltAreRefusedByKey) {
  auto refused = [](ModelConfig c, const std::string& key, const char* who = "the decoder") {
    try {
      check_buildable(c, who);
      ADD_FAILURE() << key << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  ModelConfig c = llama();
  EXPECT_NO_THROW(check_buildable(c));
  ModelConfig m = c;
  m.multi_latent_attention = true;  // without its dimensions
  refused(m, "kv_lora_rank");
  m.kv_lora_rank = 16;
  m.qk_head_dim = 8;
  m.v_head_dim = 8;
  refused(m, "qk_pos_emb_head_dim");
  m.qk_pos_emb_head_dim = 4;
  EXPECT_NO_THROW(check_buildable(m));
  EXPECT_NO_THROW(check_buildable(m, "generate"));  // the latent KV cache
  m.use_rope_scaling = true;
  refused(m, "use_rope_scaling");
  m = c;
  m.rotary_scaling_factor = 40;  // YaRN belongs to MLA
  refused(m, "rotary_scaling_factor");
  m = c;
  m.mtp_num_layers = 1;
  EXPECT_NO_THROW(check_buildable(m));
  EXPECT_NO_THROW(check_buildable(m, "generate"));  // generation runs the main model
  m = c;
  m.qk_layernorm = true;
  refused(m, "qk_layernorm");
  m = c;
  m.add_bias_linear = true;
  refused(m, "add_bias_linear");
  m = c;
  m.normalization = "LayerNorm";
  refused(m, "normalization");
}

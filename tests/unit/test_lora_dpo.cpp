// LoRA (decoder_spec's adapter table, the frozen base, the adapters at init) and the DPO loss
// formulas' edge values. The adapted model's and the DPO objective's values and gradients are
// checked against an independent PyTorch reference in tests/reference/check_llama.py.
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "core/error.h"
#include "core/rng.h"
#include "infer/cached_decoder.h"
#include "model/decoder.h"
#include "model/lora_weights.h"
#include "model/decoder_spec.h"
#include "train/dpo_loss.h"

using namespace primus;

namespace {

using primus::test::error_of;

ModelConfig tiny() { return test::tiny_llama({.name = "lora_tiny"}); }

}  // namespace

TEST(Lora, AdapterTableNamesShapesAndSplits) {
  LoraSpec lora;
  lora.rank = 4;
  const ModelConfig c = tiny();
  const std::vector<ParamSpec> t = with_lora(c, layer_params(c, decoder_layer(c, 0)), lora);
  std::map<std::string, ParamSpec> by;
  for (const ParamSpec& p : t) by[p.name] = p;
  const std::string a = "decoder.layers.0.self_attention.linear_qkv.lora_A.weight";
  const std::string b = "decoder.layers.0.self_attention.linear_qkv.lora_B.weight";
  ASSERT_TRUE(by.count(a) && by.count(b));
  EXPECT_EQ(by[a].shape, (Shape{4, 16}));
  EXPECT_EQ(by[b].shape, (Shape{(4 + 2 * 2) * 4, 4}));
  EXPECT_EQ(by[a].split, ParamSplit::Replicated);  // column-parallel base: A whole, B split like W
  EXPECT_EQ(by[b].split, ParamSplit::Column);
  EXPECT_EQ(by[b].parts, by["decoder.layers.0.self_attention.linear_qkv.weight"].parts);
  const std::string pa = "decoder.layers.0.mlp.linear_fc2.lora_A.weight", pb = "decoder.layers.0.mlp.linear_fc2.lora_B.weight";
  EXPECT_EQ(by[pa].split, ParamSplit::Row);  // row-parallel base: A split like W, B whole
  EXPECT_EQ(by[pb].split, ParamSplit::Replicated);
  EXPECT_EQ(by[pb].init, ParamInit::Zeros);
  for (const ParamSpec& p : t) EXPECT_EQ(p.trainable(), p.role == ParamRole::Adapter) << p.name;
  EXPECT_EQ(t.size(), 6u + 8u);  // 2 norms + 4 linears, 2 adapters per linear
}

TEST(Lora, TargetsAndModelsRefusedByName) {
  LoraSpec lora;
  lora.rank = 4;
  lora.targets = {"linear_qkvv"};
  const ModelConfig c = tiny();
  EXPECT_NE(error_of([&] { with_lora(c, layer_params(c, decoder_layer(c, 0)), lora); }).find("did you mean 'linear_qkv'"),
            std::string::npos);
  ModelConfig mtp = tiny();
  mtp.mtp_num_layers = 1;
  lora.targets = LoraSpec{}.targets;
  std::string mtp_error = error_of([&] { with_lora(mtp, layer_params(mtp, decoder_layer(mtp, 0)), lora); });
  for (char& ch : mtp_error) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  EXPECT_NE(mtp_error.find("mtp"), std::string::npos) << mtp_error;
}

// MLA's projections and MoE experts: replicated latent down-projections get replicated A and B,
// the up-projections column-parallel adapters; each routed expert its own A / B, stacked like
// the experts and split like them (whole experts over ep, fc1's B rows / fc2's A columns over tp);
// the shared experts as a dense MLP's. The expert bias stays a trained-by-rule fp32 buffer.
TEST(Lora, AdapterTableOfMlaAndMoeLayers) {
  ModelConfig c = tiny();
  c.multi_latent_attention = true;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 8;
  c.qk_head_dim = 4;
  c.qk_pos_emb_head_dim = 2;
  c.v_head_dim = 4;
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = 6;
  c.moe_shared_expert_intermediate_size = 10;
  c.moe_router_enable_expert_bias = true;
  LoraSpec lora;
  lora.rank = 3;
  lora.targets = {"linear_q_down_proj", "linear_q_up_proj", "linear_kv_down_proj", "linear_kv_up_proj", "linear_proj",
                  "linear_fc1", "linear_fc2"};
  const std::vector<ParamSpec> t = with_lora(c, layer_params(c, decoder_layer(c, 0)), lora);
  std::map<std::string, ParamSpec> by;
  for (const ParamSpec& p : t) by[p.name] = p;
  const std::string a = "decoder.layers.0.self_attention.", m = "decoder.layers.0.mlp.";
  for (const char* mod : {"linear_q_down_proj", "linear_kv_down_proj"}) {
    const ParamSpec& la = by.at(a + mod + ".lora_A.weight");
    EXPECT_EQ(la.split, ParamSplit::Replicated) << mod;
    EXPECT_EQ(by.at(a + mod + ".lora_B.weight").split, ParamSplit::Replicated) << mod;
  }
  EXPECT_EQ(by.at(a + "linear_q_down_proj.lora_A.weight").shape, (Shape{3, 16}));
  EXPECT_EQ(by.at(a + "linear_q_down_proj.lora_B.weight").shape, (Shape{12, 3}));
  EXPECT_EQ(by.at(a + "linear_kv_up_proj.lora_A.weight").split, ParamSplit::Replicated);
  EXPECT_EQ(by.at(a + "linear_kv_up_proj.lora_B.weight").split, ParamSplit::Column);
  EXPECT_EQ(by.at(a + "linear_proj.lora_A.weight").split, ParamSplit::Row);
  EXPECT_EQ(by.at(m + "experts.linear_fc1.lora_A.weight").shape, (Shape{4, 3, 16}));
  EXPECT_EQ(by.at(m + "experts.linear_fc1.lora_A.weight").split, ParamSplit::Experts);
  EXPECT_EQ(by.at(m + "experts.linear_fc1.lora_B.weight").shape, (Shape{4, 12, 3}));
  EXPECT_EQ(by.at(m + "experts.linear_fc1.lora_B.weight").split, ParamSplit::ExpertsColumn);
  EXPECT_EQ(by.at(m + "experts.linear_fc1.lora_B.weight").parts, (std::vector<int64_t>{6, 6}));
  EXPECT_EQ(by.at(m + "experts.linear_fc2.lora_A.weight").shape, (Shape{4, 3, 6}));
  EXPECT_EQ(by.at(m + "experts.linear_fc2.lora_A.weight").split, ParamSplit::ExpertsRow);
  EXPECT_EQ(by.at(m + "experts.linear_fc2.lora_B.weight").split, ParamSplit::Experts);
  EXPECT_EQ(by.at(m + "shared_experts.linear_fc1.lora_B.weight").split, ParamSplit::Column);
  EXPECT_EQ(by.at(m + "shared_experts.linear_fc2.lora_A.weight").split, ParamSplit::Row);
  EXPECT_FALSE(by.count(m + "router.lora_A.weight"));
  EXPECT_FALSE(by.at(m + "router.expert_bias").frozen);
  EXPECT_TRUE(by.at(m + "router.weight").frozen);
  for (const ParamSpec& p : t)
    if (p.role != ParamRole::ExpertBias) EXPECT_EQ(p.trainable(), p.role == ParamRole::Adapter) << p.name;
}

TEST(Lora, ModelTrainsOnlyAdaptersAndStartsAsTheBase) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions plain;
  plain.seed = 7;
  DecoderOptions adapted = plain;
  adapted.lora.rank = 3;
  adapted.lora.targets = {"linear_qkv", "linear_fc2"};
  DecoderModel base(tiny(), ctx, plain), lora(tiny(), ctx, adapted);
  for (NamedTensor* p : lora.parameters()) {
    EXPECT_NE(p->name.find(".lora_"), std::string::npos) << p->name;
    EXPECT_TRUE(p->grad.defined());
  }
  EXPECT_EQ(lora.parameters().size(), 2u * 2u * 2u);  // 2 layers x 2 targets x (A, B)
  for (NamedTensor* b : lora.buffers()) EXPECT_FALSE(b->grad.defined()) << b->name;
  EXPECT_EQ(lora.buffers().size(), base.parameters().size());
  // B = 0: the adapted model computes the base model's logits exactly.
  Tensor tokens = Tensor::empty({2, 8}, DType::I32);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = static_cast<int32_t>((i * 7) % 32);
  const std::vector<float> a = base.logits(tokens).to_float_vector(), b = lora.logits(tokens).to_float_vector();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
  // A backward leaves the base without gradients and gives B one (A's is zero while B is).
  Tensor labels = tokens.clone(), mask = Tensor::empty({2, 8}, DType::F32);
  for (int64_t i = 0; i < mask.numel(); ++i) mask.data<float>()[i] = 1.f;
  lora.zero_grads();
  lora.forward_backward(tokens, labels, mask, 1.f / 16);
  double b_grad = 0;
  for (NamedTensor* p : lora.parameters())
    if (p->name.find("lora_B") != std::string::npos)
      for (float g : p->grad.to_float_vector()) b_grad += std::fabs(g);
  EXPECT_GT(b_grad, 0.0);
}

// What GRPO's rollouts read from a LoRA run: the adapters merged into their base weights. The
// KV-cache decoder over the merged tensors gives the logits of the adapted model's forward.
TEST(Lora, MergedAdaptersGiveTheAdaptedModelsLogits) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions o;
  o.seed = 3;
  o.lora.rank = 4;
  o.lora.alpha = 8;
  o.lora.targets = {"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"};
  DecoderModel lora(tiny(), ctx, o);
  for (NamedTensor* p : lora.parameters())  // non-zero B: the adapters change the model
    if (p->name.find("lora_B") != std::string::npos) CounterRng(9, stream_id(p->name)).fill_normal(p->value, 0.f, 0.3f);
  Tensor tokens = Tensor::empty({2, 8}, DType::I32);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = static_cast<int32_t>((i * 5 + 1) % 32);
  const std::vector<float> want = lora.logits(tokens).to_float_vector();
  const NamedTensorList merged = merge_lora_adapters(ctx, infer::weights_of(lora), o.lora.scaling());
  for (const auto& [name, t] : merged) EXPECT_FALSE(is_lora_tensor(name)) << name;
  infer::CachedDecoder decoder(tiny(), ctx, merged);
  infer::KvCache cache = decoder.new_cache(2, 8);
  std::vector<std::vector<int32_t>> prompts(2);
  for (int64_t i = 0; i < tokens.numel(); ++i) prompts[static_cast<size_t>(i / 8)].push_back(tokens.data<int32_t>()[i]);
  Tensor all;
  decoder.prefill(cache, prompts, &all);
  const std::vector<float> got = all.to_float_vector();
  ASSERT_EQ(got.size(), want.size());
  double worst = 0, base_gap = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]));
  EXPECT_LT(worst, 1e-4);
  // ... and not the base model's (the merge did something).
  DecoderOptions plain;
  plain.seed = 3;
  DecoderModel base(tiny(), ctx, plain);
  const std::vector<float> b = base.logits(tokens).to_float_vector();
  for (size_t i = 0; i < b.size(); ++i) base_gap = std::max(base_gap, std::fabs(static_cast<double>(b[i]) - want[i]));
  EXPECT_GT(base_gap, 1e-2);
  // An adapter without its partner is an error naming it.
  NamedTensorList half = infer::weights_of(lora);
  std::erase_if(half, [](const auto& e) { return e.first.find("lora_B") != std::string::npos; });
  EXPECT_NE(error_of([&] { merge_lora_adapters(ctx, half, 2.f); }).find("lora_B"), std::string::npos);
}

TEST(Dpo, LossValuesAtKnownMargins) {
  train::DpoPairs p;
  p.policy_chosen = {-10, -5};
  p.policy_rejected = {-10, -9};
  p.ref_chosen = {-10, -6};
  p.ref_rejected = {-10, -8};
  p.len_chosen = {4, 2};
  p.len_rejected = {4, 4};
  train::DpoOptions o;
  o.beta = 0.5;
  std::vector<double> dc, dr;
  // Pair 0: Δ = 0 -> log 2; pair 1: Δ = (1) - (-1) = 2 -> -log σ(1).
  const train::DpoStats s = train::dpo_loss(p, o, &dc, &dr);
  EXPECT_NEAR(s.loss_sum, std::log(2.0) + std::log1p(std::exp(-1.0)), 1e-12);
  EXPECT_NEAR(dc[0], -0.5 * 0.5, 1e-12);  // -β σ(-βΔ) at Δ = 0
  EXPECT_NEAR(dr[0], 0.5 * 0.5, 1e-12);
  EXPECT_NEAR(s.chosen_reward_sum, 0.5 * (0 + 1), 1e-12);
  EXPECT_NEAR(s.rejected_reward_sum, 0.5 * (0 - 1), 1e-12);
  EXPECT_EQ(s.accuracy_sum, 1.0);  // a tie is not a win
  o.loss = train::DpoLossType::Hinge;  // relu(1 - βΔ): pair 1 at βΔ = 1 has zero loss and gradient
  const train::DpoStats h = train::dpo_loss(p, o, &dc, &dr);
  EXPECT_NEAR(h.loss_sum, 1.0, 1e-12);
  EXPECT_EQ(dc[1], 0.0);
  o.loss = train::DpoLossType::Ipo;  // per-token averages: pair 1 Δ = 1/2 - (-1/4) = 0.75
  const train::DpoStats i = train::dpo_loss(p, o, &dc, &dr);
  EXPECT_NEAR(i.loss_sum, 1.0 + (0.75 - 1.0) * (0.75 - 1.0), 1e-12);
  EXPECT_NEAR(dc[1], 2 * (0.75 - 1.0) / 2, 1e-12);
  EXPECT_NE(error_of([] { train::parse_dpo_loss_type("kto"); }).find("dpo_loss_type"), std::string::npos);
  o.label_smoothing = 0.5;
  EXPECT_NE(error_of([&] { train::dpo_loss(p, o); }).find("dpo_label_smoothing"), std::string::npos);
}

// HF <-> Primus layout conversion: config mapping, names, and an exact round trip.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "../test_util.h"
#include "convert/hf_model.h"
#include "core/rng.h"
#include "model/decoder_spec.h"

using namespace primus;

namespace {

using primus::test::error_of;

nlohmann::json tiny_hf_config() {
  return {{"model_type", "llama"},      {"hidden_size", 64},       {"intermediate_size", 96},
          {"num_hidden_layers", 2},      {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"vocab_size", 128},           {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},      {"tie_word_embeddings", false},
          {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}}};
}
}  // namespace

TEST(HfConvert, ConfigMapsBothWays) {
  ModelConfig mc = convert::model_config_from_hf(tiny_hf_config(), "config.json");
  EXPECT_EQ(mc.num_layers, 2);
  EXPECT_EQ(mc.num_query_groups, 2);
  EXPECT_EQ(mc.head_dim(), 16);
  EXPECT_TRUE(mc.use_rope_scaling);
  EXPECT_EQ(mc.original_max_position_embeddings, 64);
  nlohmann::json back = convert::hf_config_from_model(mc, "float32", 1, 2);
  ModelConfig again = convert::model_config_from_hf(back, "exported");
  EXPECT_EQ(again.ffn_hidden_size, 96);
  EXPECT_EQ(again.rotary_base, 500000.0);
  EXPECT_EQ(again.rope_scaling_factor, 8.0);
}

TEST(HfConvert, ConfigErrorsNameTheKey) {
  nlohmann::json bad = tiny_hf_config();
  bad.erase("hidden_size");
  try {
    convert::model_config_from_hf(bad, "/models/x/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("/models/x/config.json"), std::string::npos) << e.what();
  }
  bad = tiny_hf_config();
  bad["rope_scaling"]["rope_type"] = "yarn";
  EXPECT_THROW(convert::model_config_from_hf(bad, "c.json"), Error);
}

TEST(HfConvert, RoundTripIsExactAndFusesQkvAndGateUp) {
  ModelConfig mc = convert::model_config_from_hf(tiny_hf_config(), "config.json");
  std::map<std::string, Tensor> hf;
  const auto names = convert::hf_parameter_names(mc);
  // Shapes from the HF layout.
  auto shape_of = [&](const std::string& n) -> Shape {
    const int64_t C = 64, D = 16;
    if (n.find("layernorm") != std::string::npos || n == "model.norm.weight") return {C};
    if (n.find("q_proj") != std::string::npos) return {4 * D, C};
    if (n.find("k_proj") != std::string::npos || n.find("v_proj") != std::string::npos) return {2 * D, C};
    if (n.find("o_proj") != std::string::npos) return {C, 4 * D};
    if (n.find("gate_proj") != std::string::npos || n.find("up_proj") != std::string::npos) return {96, C};
    if (n.find("down_proj") != std::string::npos) return {C, 96};
    return {128, C};
  };
  for (const auto& n : names) {
    Tensor t = Tensor::empty(shape_of(n), DType::F32);
    CounterRng(3, stream_id(n)).fill_normal(t, 0.f, 1.f);
    hf[n] = t;
  }
  auto lookup = [&](std::map<std::string, Tensor>& m) {
    return [&m](const std::string& n) {
      auto it = m.find(n);
      if (it == m.end()) fail("missing tensor '{}'", n);
      return it->second;
    };
  };
  auto primus_tensors = convert::hf_to_primus(mc, lookup(hf));
  std::map<std::string, Tensor> pm(primus_tensors.begin(), primus_tensors.end());
  ASSERT_EQ(pm.size(), convert::primus_parameter_names(mc).size());
  // Fused QKV: the k block starts right after the q rows.
  const Tensor& qkv = pm["decoder.layers.1.self_attention.linear_qkv.weight"];
  EXPECT_EQ(qkv.shape(), (Shape{(4 + 4) * 16, 64}));
  EXPECT_EQ(qkv.data<float>()[64 * 64], hf["model.layers.1.self_attn.k_proj.weight"].data<float>()[0]);
  auto back = convert::primus_to_hf(mc, lookup(pm));
  ASSERT_EQ(back.size(), names.size());
  for (const auto& [n, t] : back) {
    ASSERT_EQ(t.shape(), hf[n].shape()) << n;
    EXPECT_EQ(std::memcmp(t.raw(), hf[n].raw(), t.nbytes()), 0) << n;
  }
  // A shape that disagrees with the config is named in the error.
  hf["model.layers.0.mlp.up_proj.weight"] = Tensor::empty({95, 64}, DType::F32);
  EXPECT_THROW(convert::hf_to_primus(mc, lookup(hf)), Error);
}

namespace primus {
namespace {

// transformers 5 writes RoPE as `rope_parameters` (seen on transformers 5.17's
// LlamaConfig.save_pretrained); 4.x as rope_theta + rope_scaling. Both give the same model.
TEST(HfConvert, ReadsTransformers5RopeParameters) {
  nlohmann::json v4 = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 64}, {"intermediate_size", 96},
                       {"num_hidden_layers", 2}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
                       {"vocab_size", 300}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5},
                       {"tie_word_embeddings", false}, {"rope_theta", 500000.0},
                       {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}}}};
  nlohmann::json v5 = v4;
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  const ModelConfig a = convert::model_config_from_hf(v4, "v4/config.json");
  const ModelConfig b = convert::model_config_from_hf(v5, "v5/config.json");
  EXPECT_EQ(b.rotary_base, 500000.0);
  EXPECT_TRUE(b.use_rope_scaling);
  EXPECT_EQ(b.rope_scaling_factor, a.rope_scaling_factor);
  EXPECT_EQ(b.original_max_position_embeddings, 32);
  nlohmann::json plain = v5;
  plain["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  const ModelConfig c = convert::model_config_from_hf(plain, "plain/config.json");
  EXPECT_FALSE(c.use_rope_scaling);
  EXPECT_EQ(c.rotary_base, 10000.0);
}

}  // namespace
}  // namespace primus

// ---- Mixtral ---------------------------------------------------------------------------

namespace primus {
namespace {

// A MixtralForCausalLM config.json as transformers 4.x writes it (E = 4, top-2, F = 40).
nlohmann::json tiny_mixtral_config() {
  return {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"}, {"hidden_size", 32},
          {"intermediate_size", 40}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 8}, {"vocab_size", 50}, {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5}, {"rope_theta", 1e6}, {"tie_word_embeddings", false}, {"hidden_act", "silu"},
          {"num_local_experts", 4}, {"num_experts_per_tok", 2}, {"router_aux_loss_coef", 0.02},
          {"router_jitter_noise", 0.0}, {"output_router_logits", true}, {"sliding_window", nullptr},
          {"attention_dropout", 0.0}, {"bos_token_id", 1}, {"eos_token_id", 2}};
}

TEST(HfConvert, MixtralConfigMapsBothWays) {
  const ModelConfig mc = convert::model_config_from_hf(tiny_mixtral_config(), "mixtral/config.json");
  EXPECT_EQ(mc.num_experts, 4);
  EXPECT_EQ(mc.moe_router_topk, 2);
  EXPECT_EQ(mc.moe_ffn_hidden_size, 40);
  EXPECT_EQ(mc.ffn_hidden_size, 40);
  EXPECT_EQ(mc.moe_aux_loss_coeff, 0.02);
  EXPECT_EQ(mc.moe_router_score_function, "softmax");
  EXPECT_FALSE(mc.moe_router_pre_softmax);
  EXPECT_EQ(mc.moe_router_load_balancing_type, "aux_loss");
  EXPECT_EQ(mc.rotary_base, 1e6);
  for (int64_t l = 0; l < mc.num_layers; ++l) EXPECT_TRUE(mc.is_moe_layer(l)) << l;
  EXPECT_NO_THROW(check_buildable(mc));

  const nlohmann::json j = convert::hf_config_from_model(mc, "bfloat16", 1, 2);
  EXPECT_EQ(j["architectures"], nlohmann::json({"MixtralForCausalLM"}));
  EXPECT_EQ(j["model_type"], "mixtral");
  EXPECT_EQ(j["num_local_experts"], 4);
  EXPECT_EQ(j["num_experts_per_tok"], 2);
  EXPECT_EQ(j["intermediate_size"], 40);
  EXPECT_EQ(j["router_aux_loss_coef"], 0.02);
  EXPECT_EQ(j["output_router_logits"], false);
  EXPECT_EQ(j["router_jitter_noise"], 0.0);
  EXPECT_TRUE(j["sliding_window"].is_null());
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_FALSE(j.contains("mlp_bias"));  // a LlamaConfig key
  const ModelConfig again = convert::model_config_from_hf(j, "exported");
  EXPECT_EQ(again.num_experts, 4);
  EXPECT_EQ(again.moe_router_topk, 2);
  EXPECT_EQ(again.moe_ffn_hidden_size, 40);
  EXPECT_EQ(again.moe_aux_loss_coeff, 0.02);
  EXPECT_EQ(again.num_query_groups, 2);
  EXPECT_EQ(again.rotary_base, 1e6);

  // transformers 5's rope_parameters, no model_type (the architecture decides), MixtralConfig's
  // defaults for what is left out.
  nlohmann::json v5 = tiny_mixtral_config();
  for (const char* k : {"model_type", "rope_theta", "num_local_experts", "num_experts_per_tok",
                        "router_aux_loss_coef", "max_position_embeddings"})
    v5.erase(k);
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 2e6}};
  const ModelConfig d = convert::model_config_from_hf(v5, "v5/config.json");
  EXPECT_EQ(d.num_experts, 8);
  EXPECT_EQ(d.moe_router_topk, 2);
  EXPECT_EQ(d.moe_aux_loss_coeff, 0.001);
  EXPECT_EQ(d.rotary_base, 2e6);
  EXPECT_EQ(d.max_position_embeddings, 131072);
  // A dense Llama config still exports LlamaForCausalLM with its own keys.
  const nlohmann::json dense = convert::hf_config_from_model(
      convert::model_config_from_hf(tiny_hf_config(), "c.json"), "float32", 1, 2);
  EXPECT_EQ(dense["model_type"], "llama");
  EXPECT_EQ(dense["mlp_bias"], false);
  EXPECT_FALSE(dense.contains("num_local_experts"));
}

TEST(HfConvert, MixtralImportRefusesByKey) {
  auto refusal = [](nlohmann::json cfg) {
    return error_of([&] { convert::model_config_from_hf(cfg, "/m/config.json"); });
  };
  nlohmann::json c = tiny_mixtral_config();
  c["router_jitter_noise"] = 0.1;
  std::string e = refusal(c);
  EXPECT_NE(e.find("/m/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("router_jitter_noise"), std::string::npos) << e;
  c = tiny_mixtral_config();
  c["sliding_window"] = 64;  // below max_position_embeddings 128
  e = refusal(c);
  EXPECT_NE(e.find("sliding_window 64"), std::string::npos) << e;
  c["sliding_window"] = 4096;  // never reached: full attention
  EXPECT_NO_THROW(convert::model_config_from_hf(c, "c"));
  c = tiny_mixtral_config();
  c["architectures"] = {"LlamaForCausalLM"};
  e = refusal(c);
  EXPECT_NE(e.find("model_type is 'mixtral'"), std::string::npos) << e;
  c = tiny_mixtral_config();
  c["model_type"] = "llama";
  e = refusal(c);
  EXPECT_NE(e.find("set model_type to \"mixtral\""), std::string::npos) << e;
  c = tiny_mixtral_config();
  c["num_experts_per_tok"] = 5;
  e = refusal(c);
  EXPECT_NE(e.find("num_experts_per_tok 5"), std::string::npos) << e;
  c = tiny_mixtral_config();
  c["model_type"] = "qwen3_moe";
  c.erase("architectures");
  e = refusal(c);
  EXPECT_NE(e.find("model_type 'qwen3_moe' is not supported"), std::string::npos) << e;
  // A DeepSeek config.json missing its latent sizes names the key.
  c = tiny_mixtral_config();
  c["model_type"] = "deepseek_v3";
  c.erase("architectures");
  e = refusal(c);
  EXPECT_NE(e.find("'kv_lora_rank'"), std::string::npos) << e;
}

TEST(HfConvert, MixtralExportRefusesWhatMixtralCannotExpress) {
  const ModelConfig base = convert::model_config_from_hf(tiny_mixtral_config(), "c.json");
  EXPECT_NO_THROW(convert::check_mixtral_exportable(base, "ckpt/config.json"));
  struct Case {
    const char* key;
    std::function<void(ModelConfig&)> change;
  };
  const std::vector<Case> cases = {
      {"moe_shared_expert_intermediate_size = 64", [](ModelConfig& m) { m.moe_shared_expert_intermediate_size = 64; }},
      {"moe_router_score_function = sigmoid", [](ModelConfig& m) { m.moe_router_score_function = "sigmoid"; }},
      {"moe_router_enable_expert_bias = true", [](ModelConfig& m) { m.moe_router_enable_expert_bias = true; }},
      {"moe_router_num_groups = 2", [](ModelConfig& m) { m.moe_router_num_groups = 2; m.moe_router_group_topk = 1; }},
      {"moe_router_pre_softmax = true", [](ModelConfig& m) { m.moe_router_pre_softmax = true; }},
      {"moe_router_topk_scaling_factor = 2.5", [](ModelConfig& m) { m.moe_router_topk_scaling_factor = 2.5; }},
      {"moe_expert_capacity_factor = 1.25", [](ModelConfig& m) { m.moe_expert_capacity_factor = 1.25; }},
      {"moe_first_k_dense_replace = 1", [](ModelConfig& m) { m.moe_first_k_dense_replace = 1; }},
      {"moe_layer_freq = 2", [](ModelConfig& m) { m.moe_layer_freq = 2; }},
      {"moe_layer_freq = [1,0]", [](ModelConfig& m) { m.moe_layer_pattern = {1, 0}; }},
  };
  for (const Case& c : cases) {
    ModelConfig m = base;
    c.change(m);
    const std::string e = error_of([&] { convert::check_mixtral_exportable(m, "ckpt/config.json"); });
    EXPECT_NE(e.find(std::string("ckpt/config.json: ") + c.key), std::string::npos) << c.key << ": " << e;
    EXPECT_NE(e.find("MixtralForCausalLM"), std::string::npos) << e;
    // hf_config_from_model refuses the same, naming the model.
    EXPECT_NE(error_of([&] { convert::hf_config_from_model(m, "float32", 0, 0); }).find(c.key), std::string::npos)
        << c.key;
  }
  ModelConfig all_moe = base;
  all_moe.moe_layer_pattern = {1, 1};  // a list that makes every layer MoE is fine
  EXPECT_NO_THROW(convert::check_mixtral_exportable(all_moe, "c"));
}

TEST(HfConvert, MixtralNamesInBothLayouts) {
  const ModelConfig mc = convert::model_config_from_hf(tiny_mixtral_config(), "c.json");
  const int64_t E = 4, F = 40, C = 32;
  const auto per = convert::hf_parameter_names(mc, convert::HfMoeLayout::PerExpert);
  const auto fused = convert::hf_parameter_names(mc, convert::HfMoeLayout::Fused);
  EXPECT_EQ(per, convert::hf_parameter_names(mc));  // the default: what primus-to-hf writes
  // embed, norm, lm_head + per layer: 2 norms, q/k/v/o, router, 3 per expert / 2 stacked.
  EXPECT_EQ(per.size(), 3u + 2u * (2u + 4u + 1u + 3u * E));
  EXPECT_EQ(fused.size(), 3u + 2u * (2u + 4u + 1u + 2u));
  const std::vector<std::string> per_layer1 = {
      "model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.q_proj.weight",
      "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
      "model.layers.1.self_attn.o_proj.weight", "model.layers.1.post_attention_layernorm.weight",
      "model.layers.1.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.experts.0.w1.weight",
      "model.layers.1.block_sparse_moe.experts.0.w3.weight", "model.layers.1.block_sparse_moe.experts.1.w1.weight"};
  const size_t at = 1 + (per.size() - 3) / 2;  // layer 1's first name
  for (size_t k = 0; k < per_layer1.size(); ++k) EXPECT_EQ(per[at + k], per_layer1[k]) << k;
  EXPECT_EQ(per[at + 7 + 2 * E], "model.layers.1.block_sparse_moe.experts.0.w2.weight");
  const size_t fat = 1 + (fused.size() - 3) / 2;
  EXPECT_EQ(fused[fat + 6], "model.layers.1.mlp.gate.weight");
  EXPECT_EQ(fused[fat + 7], "model.layers.1.mlp.experts.gate_up_proj");
  EXPECT_EQ(fused[fat + 8], "model.layers.1.mlp.experts.down_proj");
  // The fused tensors have Primus's shapes; the per-expert ones stack into them.
  for (const auto& s : convert::hf_sources(mc, convert::HfMoeLayout::Fused)) {
    if (s.primus.find("experts") == std::string::npos && s.primus.find("router") == std::string::npos) continue;
    ASSERT_EQ(s.pieces.size(), 1u) << s.primus;
    EXPECT_EQ(s.pieces[0].shape, s.shape) << s.primus;
  }
  for (const auto& s : convert::hf_sources(mc)) {
    if (s.primus == "decoder.layers.0.mlp.experts.linear_fc1.weight") {
      EXPECT_EQ(s.shape, (Shape{E, 2 * F, C}));
      ASSERT_EQ(s.pieces.size(), static_cast<size_t>(2 * E));
      EXPECT_EQ(s.pieces[3].name, "model.layers.0.block_sparse_moe.experts.1.w3.weight");
      EXPECT_EQ(s.pieces[3].shape, (Shape{F, C}));
    }
    if (s.primus == "decoder.layers.0.mlp.experts.linear_fc2.weight") {
      EXPECT_EQ(s.shape, (Shape{E, C, F}));
      ASSERT_EQ(s.pieces.size(), static_cast<size_t>(E));
      EXPECT_EQ(s.pieces[2].shape, (Shape{C, F}));
    }
  }
  // A dense model has the same names either way.
  const ModelConfig dense = convert::model_config_from_hf(tiny_hf_config(), "c.json");
  EXPECT_EQ(convert::hf_parameter_names(dense, convert::HfMoeLayout::Fused), convert::hf_parameter_names(dense));

  // Layout detection from the names a checkpoint holds.
  using convert::HfMoeLayout;
  EXPECT_EQ(convert::detect_hf_moe_layout(mc, per, "w"), HfMoeLayout::PerExpert);
  EXPECT_EQ(convert::detect_hf_moe_layout(mc, fused, "w"), HfMoeLayout::Fused);
  EXPECT_EQ(convert::detect_hf_moe_layout(mc, {"model.embed_tokens.weight"}, "w"), HfMoeLayout::PerExpert);
  std::vector<std::string> mixed = per;
  mixed.push_back("model.layers.1.mlp.experts.down_proj");
  const std::string e = error_of([&] { convert::detect_hf_moe_layout(mc, mixed, "/m/model.safetensors"); });
  EXPECT_NE(e.find("/m/model.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.1.mlp.experts.down_proj"), std::string::npos) << e;
  EXPECT_NE(e.find("block_sparse_moe.gate.weight"), std::string::npos) << e;
}

// Per-expert HF tensors -> Primus stacks [w1_e; w3_e] per expert and w2_e, bit for bit; the fused
// layout holding the same values gives the same Primus tensors; both export back exactly.
TEST(HfConvert, MixtralRoundTripBothLayouts) {
  const ModelConfig mc = convert::model_config_from_hf(tiny_mixtral_config(), "c.json");
  const int64_t E = 4, F = 40, C = 32;
  std::map<std::string, Tensor> per;
  for (const auto& s : convert::hf_sources(mc))
    for (const auto& piece : s.pieces) {
      Tensor t = Tensor::empty(piece.shape, DType::F32);
      CounterRng(11, stream_id(piece.name)).fill_normal(t, 0.f, 1.f);
      per[piece.name] = t;
    }
  auto lookup = [](std::map<std::string, Tensor>& m) {
    return [&m](const std::string& n) {
      auto it = m.find(n);
      if (it == m.end()) fail("missing tensor '{}'", n);
      return it->second;
    };
  };
  const auto from_per = convert::hf_to_primus(mc, lookup(per));
  std::map<std::string, Tensor> pm(from_per.begin(), from_per.end());
  ASSERT_EQ(pm.size(), convert::primus_parameter_names(mc).size());
  const Tensor& fc1 = pm["decoder.layers.1.mlp.experts.linear_fc1.weight"];
  const Tensor& fc2 = pm["decoder.layers.1.mlp.experts.linear_fc2.weight"];
  ASSERT_EQ(fc1.shape(), (Shape{E, 2 * F, C}));
  ASSERT_EQ(fc2.shape(), (Shape{E, C, F}));
  for (int64_t e = 0; e < E; ++e) {
    const float* w1 = per[fmt::format("model.layers.1.block_sparse_moe.experts.{}.w1.weight", e)].data<float>();
    const float* w3 = per[fmt::format("model.layers.1.block_sparse_moe.experts.{}.w3.weight", e)].data<float>();
    const float* w2 = per[fmt::format("model.layers.1.block_sparse_moe.experts.{}.w2.weight", e)].data<float>();
    const float* f1 = fc1.data<float>() + e * 2 * F * C;
    EXPECT_EQ(std::memcmp(f1, w1, F * C * 4), 0) << "expert " << e << " gate";
    EXPECT_EQ(std::memcmp(f1 + F * C, w3, F * C * 4), 0) << "expert " << e << " up";
    EXPECT_EQ(std::memcmp(fc2.data<float>() + e * C * F, w2, C * F * 4), 0) << "expert " << e << " down";
  }
  EXPECT_EQ(std::memcmp(pm["decoder.layers.0.mlp.router.weight"].raw(),
                        per["model.layers.0.block_sparse_moe.gate.weight"].raw(), E * C * 4), 0);

  // The fused layout of the same model: gate_up_proj / down_proj are Primus's stacks.
  std::map<std::string, Tensor> fused;
  for (const auto& s : convert::hf_sources(mc, convert::HfMoeLayout::Fused)) {
    ASSERT_EQ(s.pieces.size() == 1 || s.primus.find("linear_qkv") != std::string::npos, true) << s.primus;
    if (s.pieces.size() == 1) fused[s.pieces[0].name] = pm[s.primus].clone();
    else
      for (const auto& piece : s.pieces) fused[piece.name] = per[piece.name];
  }
  const auto from_fused = convert::hf_to_primus(mc, lookup(fused), convert::HfMoeLayout::Fused);
  ASSERT_EQ(from_fused.size(), from_per.size());
  for (const auto& [n, t] : from_fused) {
    ASSERT_EQ(t.shape(), pm[n].shape()) << n;
    EXPECT_EQ(std::memcmp(t.raw(), pm[n].raw(), t.nbytes()), 0) << n;
  }
  // Back to HF in each layout, bit for bit.
  const auto back = convert::primus_to_hf(mc, lookup(pm));
  ASSERT_EQ(back.size(), per.size());
  for (const auto& [n, t] : back) {
    ASSERT_EQ(t.shape(), per[n].shape()) << n;
    EXPECT_EQ(std::memcmp(t.raw(), per[n].raw(), t.nbytes()), 0) << n;
  }
  const auto back_fused = convert::primus_to_hf(mc, lookup(pm), convert::HfMoeLayout::Fused);
  ASSERT_EQ(back_fused.size(), fused.size());
  for (const auto& [n, t] : back_fused) EXPECT_EQ(std::memcmp(t.raw(), fused[n].raw(), t.nbytes()), 0) << n;
  // A wrong expert shape is named.
  per["model.layers.0.block_sparse_moe.experts.3.w2.weight"] = Tensor::empty({C, F + 1}, DType::F32);
  const std::string e = error_of([&] { convert::hf_to_primus(mc, lookup(per)); });
  EXPECT_NE(e.find("model.layers.0.block_sparse_moe.experts.3.w2.weight"), std::string::npos) << e;
}

}  // namespace
}  // namespace primus

// Found by fuzz_hf_config (fuzz/README.md; UBSan): num_attention_heads 0 divided hidden_size for
// the default head_dim, and an integer key holding 1.1e72 went through nlohmann's out-of-range
// float-to-int conversion. Both are named errors now.
TEST(HfConvert, FuzzFoundZeroHeadsIsANamedError) {
  for (const auto& [file, words] : {std::pair<const char*, const char*>{"hf_config_zero_heads.json", "num_attention_heads 0"},
                                    {"hf_config_huge_number.json", "must be an integer"}}) {
    std::ifstream in(std::filesystem::path(PRIMUS_TEST_DATA_DIR) / "fuzz_regressions" / file);
    const nlohmann::json j = nlohmann::json::parse(in);
    try {
      convert::model_config_from_hf(j, "config.json");
      ADD_FAILURE() << file << ": expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << file << ": " << e.what();
    }
  }
}

// HF <-> Primus layout conversion: config mapping, names, and an exact round trip.
#include <gtest/gtest.h>

#include <map>

#include "convert/hf_model.h"
#include "core/rng.h"

using namespace primus;

namespace {
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

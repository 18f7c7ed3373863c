// `primus convert`: HF <-> Primus checkpoints through the library (round trips bit for bit,
// sharded input and output, vocabulary padding, tokenizer files) and through the built
// binary (help, errors naming the file/key and the fix, no half-written output).
// The logits check against an independent PyTorch model is tests/convert/check_hf_import.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "config/config.h"
#include "convert/checkpoint_convert.h"
#include "convert/hf_files.h"
#include "convert/hf_model.h"
#include "convert/hf_tokenizer_info.h"
#include "convert/primus_config.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/decoder.h"
#include "test_cli_util.h"
#include "checkpoint/checkpoint.h"

using namespace primus;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

using test::CliRun;

CliRun run_primus(const std::string& args) { return test::run_shell(std::string("'") + PRIMUS_BINARY + "' " + args); }

// A fresh directory per test under the system temp dir.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = (fs::temp_directory_path() / fmt::format("primus_convert_{}_{}_{}", info->test_suite_name(), info->name(),
                                                     ::getpid())).string();
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

nlohmann::json tiny_hf_config(bool tied = false) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", 32},
          {"intermediate_size", 48},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"vocab_size", 61},
          {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"tie_word_embeddings", tied},
          {"bos_token_id", 3},
          {"eos_token_id", 4},
          {"rope_scaling",
           {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", 32}}}};
}

// Random HF-named weights for `cfg`, in `dtype`.
NamedTensorList random_hf_weights(const nlohmann::json& cfg, DType dtype, uint64_t seed = 5) {
  const ModelConfig mc = convert::model_config_from_hf(cfg, "test config");
  const int64_t C = mc.hidden_size, D = mc.head_dim(), H = mc.num_attention_heads, G = mc.num_query_groups,
                F = mc.ffn_hidden_size, V = mc.padded_vocab_size;
  NamedTensorList out;
  for (const std::string& n : convert::hf_parameter_names(mc)) {
    Shape s;
    if (n.find("layernorm") != std::string::npos || n == "model.norm.weight") s = {C};
    else if (n.find("q_proj") != std::string::npos) s = {H * D, C};
    else if (n.find("k_proj") != std::string::npos || n.find("v_proj") != std::string::npos) s = {G * D, C};
    else if (n.find("o_proj") != std::string::npos) s = {C, H * D};
    else if (n.find("gate_proj") != std::string::npos || n.find("up_proj") != std::string::npos) s = {F, C};
    else if (n.find("down_proj") != std::string::npos) s = {C, F};
    else s = {V, C};
    Tensor t = Tensor::empty(s, DType::F32);
    CounterRng(seed, stream_id(n)).fill_normal(t, 0.f, 1.f);
    out.emplace_back(n, dtype == DType::F32 ? t : convert::cast_float_tensor(t, dtype, n));
  }
  return out;
}

// A MixtralForCausalLM config.json (4 experts, top-2, expert inner size 24).
nlohmann::json tiny_mixtral_config() {
  return {{"architectures", {"MixtralForCausalLM"}},
          {"model_type", "mixtral"},
          {"hidden_size", 32},
          {"intermediate_size", 24},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"vocab_size", 61},
          {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 1e6},
          {"tie_word_embeddings", false},
          {"num_local_experts", 4},
          {"num_experts_per_tok", 2},
          {"router_aux_loss_coef", 0.02},
          {"router_jitter_noise", 0.0},
          {"output_router_logits", false},
          {"sliding_window", nullptr},
          {"bos_token_id", 1},
          {"eos_token_id", 2}};
}

// Random weights for every HF tensor of `cfg` in `layout`, shapes from the converter's table.
NamedTensorList random_hf_weights_of(const nlohmann::json& cfg, convert::HfMoeLayout layout, uint64_t seed) {
  const ModelConfig mc = convert::model_config_from_hf(cfg, "test config");
  NamedTensorList out;
  for (const auto& s : convert::hf_sources(mc, layout))
    for (const auto& piece : s.pieces) {
      Tensor t = Tensor::empty(piece.shape, DType::F32);
      CounterRng(seed, stream_id(piece.name)).fill_normal(t, 0.f, 1.f);
      out.emplace_back(piece.name, t);
    }
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

// An HF directory: config.json + one model.safetensors, or `shards` files + the index.
void write_hf_dir(const std::string& dir, const nlohmann::json& cfg, const NamedTensorList& tensors, int shards = 1) {
  fs::create_directories(dir);
  write_text(dir + "/config.json", cfg.dump(2));
  if (shards == 1) {
    save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    return;
  }
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  const size_t per = (tensors.size() + shards - 1) / shards;
  for (int s = 0; s < shards; ++s) {
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
    NamedTensorList part(tensors.begin() + std::min(tensors.size(), s * per),
                         tensors.begin() + std::min(tensors.size(), (s + 1) * per));
    save_safetensors(dir + "/" + file, part, {{"format", "pt"}});
    for (const auto& [n, t] : part) index["weight_map"][n] = file;
  }
  write_text(dir + "/model.safetensors.index.json", index.dump(2));
}

// Every tensor of `expected` is in the HF directory `dir` with the same bytes.
void expect_hf_weights_equal(const std::string& dir, const NamedTensorList& expected) {
  const convert::HfWeights w(dir);
  ASSERT_EQ(w.names().size(), expected.size()) << dir;
  for (const auto& [name, t] : expected) {
    ASSERT_TRUE(w.contains(name)) << name;
    const Tensor got = w.view(name);
    ASSERT_EQ(got.dtype(), t.dtype()) << name;
    ASSERT_EQ(got.shape(), t.shape()) << name;
    EXPECT_EQ(std::memcmp(got.raw(), t.raw(), t.nbytes()), 0) << name << " differs";
  }
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---- config.json of a converted checkpoint -------------------------------------------

TEST(ConvertConfig, ModelConfigSurvivesTheCheckpointConfig) {
  const ModelConfig mc = convert::model_config_from_hf(tiny_hf_config(), "config.json");
  const nlohmann::json j = convert::config_for_model(mc).to_json();
  const ModelConfig back = config::model_config(config::from_json(j));
  EXPECT_EQ(back.num_layers, mc.num_layers);
  EXPECT_EQ(back.hidden_size, mc.hidden_size);
  EXPECT_EQ(back.ffn_hidden_size, mc.ffn_hidden_size);
  EXPECT_EQ(back.num_attention_heads, mc.num_attention_heads);
  EXPECT_EQ(back.num_query_groups, 2);
  EXPECT_EQ(back.head_dim(), 8);
  EXPECT_EQ(back.padded_vocab_size, 61);  // not padded to 128
  EXPECT_EQ(back.vocab_size, 61);
  EXPECT_EQ(back.max_position_embeddings, 128);
  EXPECT_EQ(back.norm_epsilon, 1e-5);
  EXPECT_EQ(back.rotary_base, 500000.0);
  EXPECT_TRUE(back.use_rope_scaling);
  EXPECT_EQ(back.rope_scaling_factor, 8.0);
  EXPECT_EQ(back.original_max_position_embeddings, 32);
  EXPECT_TRUE(back.untie_embeddings_and_output_weights);
  EXPECT_TRUE(back.swiglu);
  EXPECT_EQ(back.normalization, "RMSNorm");
  EXPECT_EQ(back.position_embedding_type, "rope");
  EXPECT_FALSE(back.add_bias_linear);
  EXPECT_EQ(back.attention_dropout, 0.0);
  EXPECT_EQ(back.hidden_dropout, 0.0);
  // The model code accepts it as is.
  auto ctx = ops::Context::cpu();
  EXPECT_NO_THROW(DecoderModel(back, ctx));
}

TEST(ConvertConfig, PaddedVocabularyKeepsBothSizes) {
  ModelConfig mc = convert::model_config_from_hf(tiny_hf_config(true), "config.json");
  for (auto [vocab, padded] : {std::pair<int64_t, int64_t>{61, 64}, {50257, 50304}, {61, 61}, {100, 173}}) {
    mc.vocab_size = vocab;
    mc.padded_vocab_size = padded;
    const ModelConfig back = config::model_config(config::from_json(convert::config_for_model(mc).to_json()));
    EXPECT_EQ(back.vocab_size, vocab);
    EXPECT_EQ(back.padded_vocab_size, padded) << vocab;
    EXPECT_FALSE(back.untie_embeddings_and_output_weights);
  }
  // Multi-latent attention and DeepSeek's MTP modules survive the checkpoint config; MTP
  // without it (no HF form) is refused by key.
  mc.multi_latent_attention = true;
  mc.qk_layernorm = true;
  mc.q_lora_rank = 24;
  mc.kv_lora_rank = 32;
  mc.qk_head_dim = 16;
  mc.qk_pos_emb_head_dim = 8;
  mc.v_head_dim = 12;
  mc.rotary_scaling_factor = 40;
  const ModelConfig mla = config::model_config(config::from_json(convert::config_for_model(mc).to_json()));
  EXPECT_TRUE(mla.multi_latent_attention && mla.qk_layernorm);
  EXPECT_EQ(mla.q_lora_rank, 24);
  EXPECT_EQ(mla.kv_lora_rank, 32);
  EXPECT_EQ(mla.qk_head_dim + mla.qk_pos_emb_head_dim + mla.v_head_dim, 36);
  EXPECT_EQ(mla.rotary_scaling_factor, 40);
  mc.mtp_num_layers = 1;
  mc.mtp_loss_scaling_factor = 0.3;
  const ModelConfig mtp = config::model_config(config::from_json(convert::config_for_model(mc).to_json()));
  EXPECT_EQ(mtp.mtp_num_layers, 1);
  EXPECT_EQ(mtp.mtp_loss_scaling_factor, 0.3);
  mc.multi_latent_attention = false;
  try {
    convert::config_for_model(mc);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("mtp_num_layers"));
  }
}

TEST(ConvertConfig, MoeFieldsSurviveTheCheckpointConfig) {
  const ModelConfig mc = convert::model_config_from_hf(tiny_mixtral_config(), "config.json");
  const nlohmann::json j = convert::config_for_model(mc).to_json();
  EXPECT_EQ(j["options"]["moe_layer_freq"], "1");
  const ModelConfig back = config::model_config(config::from_json(j));
  EXPECT_EQ(back.num_experts, 4);
  EXPECT_EQ(back.moe_router_topk, 2);
  EXPECT_EQ(back.moe_ffn_hidden_size, 24);
  EXPECT_EQ(back.ffn_hidden_size, 24);
  EXPECT_EQ(back.moe_aux_loss_coeff, 0.02);
  EXPECT_EQ(back.moe_router_score_function, "softmax");
  EXPECT_FALSE(back.moe_router_pre_softmax);
  EXPECT_EQ(back.moe_router_load_balancing_type, "aux_loss");
  EXPECT_EQ(back.moe_layer_freq, 1);
  EXPECT_TRUE(back.moe_layer_pattern.empty());
  EXPECT_EQ(back.moe_shared_expert_intermediate_size, 0);
  EXPECT_EQ(back.moe_expert_capacity_factor, 0.0);
  EXPECT_EQ(back.rotary_base, 1e6);
  auto ctx = ops::Context::cpu();
  EXPECT_NO_THROW(DecoderModel(back, ctx));

  // Every MoE field, DeepSeek-style values included, comes back as it was.
  ModelConfig ds = mc;
  ds.num_layers = 4;
  ds.num_experts = 8;
  ds.moe_router_topk = 4;
  ds.moe_shared_expert_intermediate_size = 48;
  ds.moe_layer_pattern = {0, 1, 1, 1};
  ds.moe_first_k_dense_replace = 1;
  ds.moe_router_score_function = "sigmoid";
  ds.moe_router_topk_scaling_factor = 2.5;
  ds.moe_router_num_groups = 4;
  ds.moe_router_group_topk = 2;
  ds.moe_router_enable_expert_bias = true;
  ds.moe_router_bias_update_rate = 1e-4;
  ds.moe_router_load_balancing_type = "seq_aux_loss";
  ds.moe_z_loss_coeff = 1e-3;
  ds.moe_expert_capacity_factor = 1.25;
  ds.moe_token_drop_policy = "position";
  ds.moe_pad_expert_input_to_capacity = true;
  const ModelConfig b = config::model_config(config::from_json(convert::config_for_model(ds).to_json()));
  EXPECT_EQ(b.num_experts, 8);
  EXPECT_EQ(b.moe_router_topk, 4);
  EXPECT_EQ(b.moe_shared_expert_intermediate_size, 48);
  EXPECT_EQ(b.moe_layer_pattern, (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(b.moe_first_k_dense_replace, 1);
  EXPECT_EQ(b.moe_router_score_function, "sigmoid");
  EXPECT_EQ(b.moe_router_topk_scaling_factor, 2.5);
  EXPECT_EQ(b.moe_router_num_groups, 4);
  EXPECT_EQ(b.moe_router_group_topk, 2);
  EXPECT_TRUE(b.moe_router_enable_expert_bias);
  EXPECT_EQ(b.moe_router_bias_update_rate, 1e-4);
  EXPECT_EQ(b.moe_router_load_balancing_type, "seq_aux_loss");
  EXPECT_EQ(b.moe_z_loss_coeff, 1e-3);
  EXPECT_EQ(b.moe_expert_capacity_factor, 1.25);
  EXPECT_EQ(b.moe_token_drop_policy, "position");
  EXPECT_TRUE(b.moe_pad_expert_input_to_capacity);
  ds.moe_layer_pattern.clear();
  ds.moe_layer_freq = 2;
  EXPECT_EQ(config::model_config(config::from_json(convert::config_for_model(ds).to_json())).moe_layer_freq, 2);
  // A dense model's config carries no MoE keys (as before).
  const nlohmann::json dense =
      convert::config_for_model(convert::model_config_from_hf(tiny_hf_config(), "c")).to_json();
  EXPECT_TRUE(dense["options"]["num_experts"].is_null());
}

TEST(ConvertFiles, ByteSizes) {
  EXPECT_EQ(convert::parse_byte_size("5GB"), 5'000'000'000ull);
  EXPECT_EQ(convert::parse_byte_size("500MB"), 500'000'000ull);
  EXPECT_EQ(convert::parse_byte_size("2GiB"), 2ull << 30);
  EXPECT_EQ(convert::parse_byte_size("40kb"), 40'000ull);
  EXPECT_EQ(convert::parse_byte_size("1234"), 1234ull);
  EXPECT_THROW(convert::parse_byte_size("5 parsecs"), Error);
  EXPECT_THROW(convert::parse_byte_size("GB"), Error);
  EXPECT_THROW(convert::parse_byte_size("0"), Error);
}

// ---- round trips through the library -------------------------------------------------

TEST(ConvertRoundTrip, Fp32ShardedIsBitIdentical) {
  TempDir tmp;
  const nlohmann::json cfg = tiny_hf_config();
  const NamedTensorList hf = random_hf_weights(cfg, DType::F32);
  write_hf_dir(tmp / "hf", cfg, hf, /*shards=*/3);

  convert::HfToPrimusOptions in;
  in.hf_dir = tmp / "hf";
  in.output = tmp / "primus";
  in.iteration = 12;
  const auto r = convert::hf_to_primus_checkpoint(in);
  EXPECT_EQ(r.source_files, 3u);
  EXPECT_EQ(r.tensors, 2u + 6u * 2u + 1u);
  EXPECT_EQ(r.checkpoint_dir, tmp / "primus/iter_0000012");
  // The training loop's layout: tracker + iter dir with model, config, meta; nothing else.
  EXPECT_EQ(dir_entries(tmp / "primus"), (std::vector<std::string>{"iter_0000012", checkpoint::kTrackerFileName}));
  EXPECT_EQ(dir_entries(r.checkpoint_dir),
            (std::vector<std::string>{"config.json", "meta.json", "model.safetensors"}));
  const checkpoint::CheckpointReader reader(tmp / "primus");
  EXPECT_EQ(reader.iteration(), 12);
  EXPECT_FALSE(reader.parts().optimizer);
  EXPECT_EQ(reader.extra()["converted_from"]["format"], "huggingface");

  // A model built from the stored config takes the weights strictly by name and shape.
  const ModelConfig mc = config::model_config(config::from_json(reader.config()));
  auto ctx = ops::Context::cpu();
  DecoderModel model(mc, ctx);
  NamedTensorList targets;
  for (NamedTensor* p : model.parameters()) targets.emplace_back(p->name, p->value);
  checkpoint::load_tensors_into(reader.model_file(), targets, /*strict=*/true);
  EXPECT_EQ(std::memcmp(model.parameter("decoder.final_layernorm.weight").value.raw(),
                        hf[hf.size() - 2].second.raw(), 32 * 4), 0);

  convert::PrimusToHfOptions out;
  out.load = tmp / "primus";
  out.output = tmp / "hf_back";
  out.dtype = DType::F32;
  out.max_shard_bytes = 20'000;  // several shards for this ~80 KB model
  const auto back = convert::primus_to_hf_dir(out);
  EXPECT_EQ(back.vocab_rows_dropped, 0);
  EXPECT_TRUE(fs::exists(tmp / "hf_back/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(tmp / "hf_back/model-00001-of-00005.safetensors")) << fmt::format("{}", fmt::join(back.files, " "));
  expect_hf_weights_equal(tmp / "hf_back", hf);
  const nlohmann::json index = convert::read_json_file(tmp / "hf_back/model.safetensors.index.json", "index");
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), back.weight_bytes);
  EXPECT_EQ(index["weight_map"].size(), hf.size());
  // config.json: transformers' keys, ids carried over from the imported config.
  const nlohmann::json c = convert::read_json_file(tmp / "hf_back/config.json", "config");
  for (const char* k : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                        "bos_token_id", "eos_token_id", "rope_scaling", "max_position_embeddings"})
    EXPECT_EQ(c[k], cfg[k]) << k;
  EXPECT_EQ(c["torch_dtype"], "float32");
  EXPECT_EQ(convert::model_config_from_hf(c, "back").head_dim(), 8);
  EXPECT_TRUE(fs::exists(tmp / "hf_back/generation_config.json"));
}

TEST(ConvertRoundTrip, Bf16TiedSingleFileIsBitIdentical) {
  TempDir tmp;
  const nlohmann::json cfg = tiny_hf_config(/*tied=*/true);
  const NamedTensorList hf = random_hf_weights(cfg, DType::BF16, 9);
  write_hf_dir(tmp / "hf", cfg, hf);
  convert::HfToPrimusOptions in;
  in.hf_dir = tmp / "hf";
  in.output = tmp / "primus";
  convert::hf_to_primus_checkpoint(in);
  {
    const checkpoint::CheckpointReader reader(tmp / "primus");
    EXPECT_FALSE(reader.model_file().contains("output_layer.weight"));
    EXPECT_EQ(reader.model_file().entry("decoder.layers.0.mlp.linear_fc1.weight").dtype, DType::BF16);
  }
  convert::PrimusToHfOptions out;  // bf16 by default, one file
  out.load = tmp / "primus";
  out.output = tmp / "hf_back";
  const auto back = convert::primus_to_hf_dir(out);
  EXPECT_EQ(back.files.front(), "model.safetensors");
  EXPECT_FALSE(fs::exists(tmp / "hf_back/model.safetensors.index.json"));
  expect_hf_weights_equal(tmp / "hf_back", hf);
  EXPECT_EQ(convert::read_json_file(tmp / "hf_back/config.json", "config")["tie_word_embeddings"], true);
}

TEST(ConvertRoundTrip, DtypeOptionCastsLikeRoundToNearestEven) {
  TempDir tmp;
  const nlohmann::json cfg = tiny_hf_config();
  const NamedTensorList hf = random_hf_weights(cfg, DType::F32);
  write_hf_dir(tmp / "hf", cfg, hf, 2);
  convert::HfToPrimusOptions in;
  in.hf_dir = tmp / "hf";
  in.output = tmp / "primus";
  in.dtype = DType::BF16;
  convert::hf_to_primus_checkpoint(in);
  convert::PrimusToHfOptions out;
  out.load = tmp / "primus";
  out.output = tmp / "hf_back";
  out.dtype = DType::F32;  // bf16 -> fp32 is exact, so the export shows the stored bf16 values
  convert::primus_to_hf_dir(out);
  const convert::HfWeights back(tmp / "hf_back");
  for (const auto& [name, t] : hf) {
    const Tensor got = back.view(name);
    const float* a = t.data<float>();
    const float* b = got.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      // Independent rounding: add half an ulp of bf16 (plus the tie-to-even bit) and truncate.
      uint32_t u;
      std::memcpy(&u, &a[i], 4);
      u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
      float want;
      std::memcpy(&want, &u, 4);
      ASSERT_EQ(b[i], want) << name << "[" << i << "]";
    }
  }
}

// Mixtral in both HF layouts: per expert (sharded) and transformers 5's fused one give the same
// checkpoint; the model loads it strictly; the export is the per-expert layout, bit for bit.
TEST(ConvertRoundTrip, MixtralBothLayoutsGiveOneCheckpointAndExportPerExpert) {
  TempDir tmp;
  const nlohmann::json cfg = tiny_mixtral_config();
  const ModelConfig mc = convert::model_config_from_hf(cfg, "config.json");
  const NamedTensorList per = random_hf_weights_of(cfg, convert::HfMoeLayout::PerExpert, 21);
  write_hf_dir(tmp / "hf_per", cfg, per, /*shards=*/3);
  // The fused layout of the same weights.
  const std::map<std::string, Tensor> per_map(per.begin(), per.end());
  const convert::NamedTensors primus = convert::hf_to_primus(mc, [&](const std::string& n) { return per_map.at(n); });
  const std::map<std::string, Tensor> primus_map(primus.begin(), primus.end());
  NamedTensorList fused;
  for (const auto& [n, t] : convert::primus_to_hf(mc, [&](const std::string& n) { return primus_map.at(n); },
                                                  convert::HfMoeLayout::Fused))
    fused.emplace_back(n, t.clone());
  EXPECT_EQ(fused.size(), 3u + 2u * 9u);
  write_hf_dir(tmp / "hf_fused", cfg, fused);

  convert::HfToPrimusOptions in;
  in.hf_dir = tmp / "hf_per";
  in.output = tmp / "primus_per";
  const auto r = convert::hf_to_primus_checkpoint(in);
  EXPECT_EQ(r.tensors, 3u + 2u * 7u);  // per layer: 2 norms, qkv, proj, router, fc1, fc2
  EXPECT_EQ(r.model.num_experts, 4);
  EXPECT_THAT(fmt::format("{}", fmt::join(r.notes, "\n")), HasSubstr("per-expert layout"));
  in.hf_dir = tmp / "hf_fused";
  in.output = tmp / "primus_fused";
  const auto rf = convert::hf_to_primus_checkpoint(in);
  EXPECT_THAT(fmt::format("{}", fmt::join(rf.notes, "\n")), HasSubstr("fused layout"));
  {
    const checkpoint::CheckpointReader a(tmp / "primus_per"), b(tmp / "primus_fused");
    ASSERT_EQ(a.model_file().entries().size(), b.model_file().entries().size());
    for (const auto& e : a.model_file().entries()) {
      const Tensor x = a.model_file().view(e.name), y = b.model_file().view(e.name);
      ASSERT_EQ(x.shape(), y.shape()) << e.name;
      EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << e.name;
    }
    const Tensor fc1 = a.model_file().view("decoder.layers.0.mlp.experts.linear_fc1.weight");
    EXPECT_EQ(fc1.shape(), (Shape{4, 48, 32}));
    // Expert 2's up rows are HF's experts.2.w3.
    EXPECT_EQ(std::memcmp(fc1.data<float>() + (2 * 48 + 24) * 32,
                          per_map.at("model.layers.0.block_sparse_moe.experts.2.w3.weight").raw(), 24 * 32 * 4), 0);
    // The model built from the stored config takes the weights strictly by name and shape.
    const ModelConfig back = config::model_config(config::from_json(a.config()));
    EXPECT_EQ(back.num_experts, 4);
    auto ctx = ops::Context::cpu();
    DecoderModel model(back, ctx);
    NamedTensorList targets;
    for (NamedTensor* p : model.parameters()) targets.emplace_back(p->name, p->value);
    checkpoint::load_tensors_into(a.model_file(), targets, /*strict=*/true);
  }
  for (const char* save : {"primus_per", "primus_fused"}) {
    convert::PrimusToHfOptions out;
    out.load = tmp / save;
    out.output = tmp / (std::string("back_") + save);
    out.dtype = DType::F32;
    out.max_shard_bytes = 30'000;
    convert::primus_to_hf_dir(out);
    expect_hf_weights_equal(out.output, per);
    const nlohmann::json c = convert::read_json_file(out.output + "/config.json", "config");
    for (const char* k : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                          "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "bos_token_id",
                          "eos_token_id", "max_position_embeddings"})
      EXPECT_EQ(c[k], cfg[k]) << k;
    EXPECT_EQ(c["architectures"], nlohmann::json({"MixtralForCausalLM"}));
    EXPECT_EQ(c["model_type"], "mixtral");
    EXPECT_EQ(c["router_jitter_noise"], 0.0);
    EXPECT_EQ(c["output_router_logits"], false);
    EXPECT_TRUE(c["sliding_window"].is_null());
  }
}

// ---- vocabulary padding and tokenizer files --------------------------------------------

namespace {
// A Primus checkpoint as training writes it: vocab 61 padded to 64 rows.
void write_padded_checkpoint(const std::string& save_dir, NamedTensorList& tensors) {
  ModelConfig mc = convert::model_config_from_hf(tiny_hf_config(), "config.json");
  mc.vocab_size = 61;
  mc.padded_vocab_size = 64;
  auto ctx = ops::Context::cpu();
  DecoderModel model(mc, ctx);
  for (NamedTensor* p : model.parameters()) tensors.emplace_back(p->name, p->value.clone());
  checkpoint::CheckpointContent content;
  content.iteration = 30;
  content.model = tensors;
  content.config = convert::config_for_model(mc).to_json();
  checkpoint::CheckpointWriter(save_dir).save(content);
}

void write_tokenizer(const std::string& dir, int64_t num_ids) {
  fs::create_directories(dir);
  nlohmann::json vocab = nlohmann::json::object();
  for (int64_t i = 0; i + 3 < num_ids; ++i) vocab[fmt::format("t{}", i)] = i;
  nlohmann::json tok = {{"version", "1.0"},
                        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
                        {"added_tokens",
                         {{{"id", num_ids - 3}, {"content", "<|begin_of_text|>"}, {"special", true}},
                          {{"id", num_ids - 2}, {"content", "<|end_of_text|>"}, {"special", true}},
                          {{"id", num_ids - 1}, {"content", "<|eot_id|>"}, {"special", true}}}}};
  write_text(dir + "/tokenizer.json", tok.dump());
  write_text(dir + "/tokenizer_config.json",
             nlohmann::json({{"bos_token", "<|begin_of_text|>"}, {"eos_token", {{"content", "<|eot_id|>"}}}}).dump());
}
}  // namespace

TEST(ConvertVocab, PaddingRowsAreDroppedAndTokenizerFilesCopied) {
  TempDir tmp;
  NamedTensorList tensors;
  write_padded_checkpoint(tmp / "primus", tensors);
  write_tokenizer(tmp / "tok", 58);

  convert::PrimusToHfOptions out;
  out.load = tmp / "primus";
  out.output = tmp / "hf";
  out.dtype = DType::F32;
  out.tokenizer = tmp / "tok/tokenizer.json";
  const auto r = convert::primus_to_hf_dir(out);
  EXPECT_EQ(r.vocab_rows_dropped, 3);
  EXPECT_EQ(r.bos_token_id, 55);
  EXPECT_EQ(r.eos_token_id, 57);  // tokenizer_config.json's eos (<|eot_id|>), not <|end_of_text|>
  const convert::HfWeights w(tmp / "hf");
  const Tensor emb = w.view("model.embed_tokens.weight");
  ASSERT_EQ(emb.shape(), (Shape{61, 32}));
  EXPECT_EQ(std::memcmp(emb.raw(), tensors[0].second.raw(), emb.nbytes()), 0);
  EXPECT_EQ(w.view("lm_head.weight").shape(), (Shape{61, 32}));
  const nlohmann::json c = convert::read_json_file(tmp / "hf/config.json", "config");
  EXPECT_EQ(c["vocab_size"], 61);
  EXPECT_EQ(c["bos_token_id"], 55);
  EXPECT_EQ(c["eos_token_id"], 57);
  EXPECT_EQ(convert::read_json_file(tmp / "hf/generation_config.json", "g")["eos_token_id"], 57);
  EXPECT_TRUE(fs::exists(tmp / "hf/tokenizer.json"));
  EXPECT_TRUE(fs::exists(tmp / "hf/tokenizer_config.json"));

  // --vocab-size keeps more rows; a tokenizer larger than the kept rows is refused.
  out.output = tmp / "hf64";
  out.vocab_size = 64;
  out.tokenizer.clear();
  EXPECT_EQ(convert::primus_to_hf_dir(out).vocab_rows_dropped, 0);
  EXPECT_EQ(convert::HfWeights(tmp / "hf64").view("lm_head.weight").shape(), (Shape{64, 32}));
  write_tokenizer(tmp / "big", 70);
  out.output = tmp / "hf_big";
  out.vocab_size.reset();
  out.tokenizer = tmp / "big";
  try {
    convert::primus_to_hf_dir(out);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("ids up to 69"));
    EXPECT_THAT(e.what(), HasSubstr("--vocab-size"));
  }
  EXPECT_FALSE(fs::exists(tmp / "hf_big"));
  // No tokenizer and Llama 3's ids do not fit 61 rows: null ids, said so.
  out.output = tmp / "hf_noids";
  out.tokenizer.clear();
  const auto r2 = convert::primus_to_hf_dir(out);
  EXPECT_FALSE(r2.bos_token_id.has_value());
  EXPECT_TRUE(convert::read_json_file(tmp / "hf_noids/config.json", "c")["bos_token_id"].is_null());
}

TEST(ConvertVocab, TokenizerInfoFallsBackToWellKnownNames) {
  TempDir tmp;
  write_tokenizer(tmp / "t", 10);
  fs::remove(tmp / "t/tokenizer_config.json");
  const auto info = convert::inspect_hf_tokenizer(tmp / "t");
  EXPECT_EQ(info.vocab_size, 10);
  EXPECT_EQ(info.bos_token_id, 7);
  EXPECT_EQ(info.eos_token_id, 8);  // <|end_of_text|>
  EXPECT_TRUE(info.siblings.empty());
  write_text(tmp / "t/tokenizer.model", "x");
  EXPECT_THROW(convert::inspect_hf_tokenizer(tmp / "t/tokenizer.model"), Error);
}

// ---- the command line -------------------------------------------------------------------

TEST(ConvertCli, HelpListsBothDirections) {
  CliRun r = run_primus("convert --help");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("hf-to-primus"));
  EXPECT_THAT(r.output, HasSubstr("primus-to-hf"));
  r = run_primus("convert hf-to-primus --help");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--hf-dir"));
  EXPECT_THAT(r.output, HasSubstr("finetune"));
  r = run_primus("convert primus-to-hf --help");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--tokenizer-model"));
  EXPECT_THAT(r.output, HasSubstr("--max-shard-size"));
  r = run_primus("convert hf-to-primsu");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("did you mean 'hf-to-primus'"));
  r = run_primus("convert hf-to-primus --hf-dir x --output y --dtpye bf16");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown option '--dtpye', did you mean '--dtype'"));
  r = run_primus("convert primus-to-hf --output y");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("--load"));
}

TEST(ConvertCli, ConvertsBothWaysAndRefusesNonEmptyOutput) {
  TempDir tmp;
  const nlohmann::json cfg = tiny_hf_config();
  const NamedTensorList hf = random_hf_weights(cfg, DType::BF16);
  write_hf_dir(tmp / "hf", cfg, hf, 2);
  CliRun r = run_primus("convert hf-to-primus --hf-dir " + (tmp / "hf") + " --output " + (tmp / "save"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("make_vocab_size_divisible_by: 1"));
  EXPECT_THAT(r.output, HasSubstr("finetune: true"));
  r = run_primus("convert primus-to-hf --load " + (tmp / "save") + " --output " + (tmp / "back"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("bos_token_id 3, eos_token_id 4"));
  expect_hf_weights_equal(tmp / "back", hf);

  // A non-empty output is refused and left as it was; --force replaces it.
  write_text(tmp / "back/keep.txt", "mine");
  r = run_primus("convert primus-to-hf --load " + (tmp / "save") + " --output " + (tmp / "back"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("is not empty; pass --force"));
  EXPECT_TRUE(fs::exists(tmp / "back/keep.txt"));
  r = run_primus("convert hf-to-primus --hf-dir " + (tmp / "hf") + " --output " + (tmp / "save"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("--force"));
  r = run_primus("convert primus-to-hf --force --dtype fp32 --load " + (tmp / "save") + " --output " + (tmp / "back"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "back/keep.txt"));
  EXPECT_EQ(convert::HfWeights(tmp / "back").view("model.norm.weight").dtype(), DType::F32);
  // Converting into (or over) the input is refused even with --force.
  r = run_primus("convert hf-to-primus --force --hf-dir " + (tmp / "hf") + " --output " + tmp.path());
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("contains the input"));
  EXPECT_TRUE(fs::exists(tmp / "hf/config.json"));
  // Nothing staged is left behind.
  for (const auto& name : dir_entries(tmp.path())) EXPECT_EQ(name.find(".tmp-"), std::string::npos) << name;

  // --iteration on both sides; a missing iteration lists the complete ones.
  r = run_primus("convert hf-to-primus --iteration 5 --hf-dir " + (tmp / "hf") + " --output " + (tmp / "save5"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_primus("convert primus-to-hf --iteration 6 --load " + (tmp / "save5") + " --output " + (tmp / "back5"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("complete checkpoints in"));
  r = run_primus("convert primus-to-hf --iteration 5 --load " + (tmp / "save5") + " --output " + (tmp / "back5"));
  EXPECT_EQ(r.code, 0) << r.output;
  // An iter_XXXXXXX directory works as --load too.
  r = run_primus("convert primus-to-hf --load " + (tmp / "save5/iter_0000005") + " --output " + (tmp / "back6"));
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST(ConvertCli, StagingOfAKilledConversionIsRemoved) {
  TempDir tmp;
  const nlohmann::json cfg = tiny_hf_config();
  write_hf_dir(tmp / "hf", cfg, random_hf_weights(cfg, DType::F32));
  // What a conversion killed mid-write leaves: a hidden staging directory of a dead pid
  // (beyond any pid_max), while a live process's staging (ours) is kept.
  fs::create_directories(tmp / ".save.tmp-99999999/iter_0000000");
  fs::create_directories(tmp / fmt::format(".save.tmp-{}", ::getppid()));
  convert::HfToPrimusOptions in;
  in.hf_dir = tmp / "hf";
  in.output = tmp / "save";
  convert::hf_to_primus_checkpoint(in);
  EXPECT_FALSE(fs::exists(tmp / ".save.tmp-99999999"));
  EXPECT_TRUE(fs::exists(tmp / fmt::format(".save.tmp-{}", ::getppid())));
  EXPECT_TRUE(fs::exists(tmp / "save/iter_0000000/meta.json"));
}

TEST(ConvertCli, BadInputsNameTheFileAndTheFix) {
  TempDir tmp;
  nlohmann::json cfg = tiny_hf_config();
  NamedTensorList hf = random_hf_weights(cfg, DType::F32);
  auto convert_in = [&](const std::string& dir) {
    return run_primus("convert hf-to-primus --hf-dir " + dir + " --output " + (tmp / "out"));
  };

  // Missing config.json.
  fs::create_directories(tmp / "no_config");
  save_safetensors(tmp / "no_config/model.safetensors", hf);
  CliRun r = convert_in(tmp / "no_config");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr(tmp / "no_config/config.json"));
  EXPECT_THAT(r.output, HasSubstr("not found"));

  // No weights at all / pytorch_model.bin only.
  fs::create_directories(tmp / "bin_only");
  write_text(tmp / "bin_only/config.json", cfg.dump());
  write_text(tmp / "bin_only/pytorch_model.bin", "pickle");
  r = convert_in(tmp / "bin_only");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("safe_serialization=True"));

  // A missing tensor is named, with the file.
  NamedTensorList missing;
  for (const auto& [n, t] : hf)
    if (n != "model.layers.1.self_attn.v_proj.weight") missing.emplace_back(n, t);
  write_hf_dir(tmp / "missing", cfg, missing);
  r = convert_in(tmp / "missing");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("missing tensor 'model.layers.1.self_attn.v_proj.weight'"));
  EXPECT_THAT(r.output, HasSubstr(tmp / "missing/model.safetensors"));

  // A shape that disagrees with config.json.
  nlohmann::json wrong = cfg;
  wrong["intermediate_size"] = 64;
  write_hf_dir(tmp / "wrong_shape", wrong, hf);
  r = convert_in(tmp / "wrong_shape");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_THAT(r.output, HasSubstr("[48, 32]"));

  // A sharded index naming a shard that is not there.
  write_hf_dir(tmp / "lost_shard", cfg, hf, 3);
  fs::remove(tmp / "lost_shard/model-00002-of-00003.safetensors");
  r = convert_in(tmp / "lost_shard");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("model-00002-of-00003.safetensors"));
  EXPECT_THAT(r.output, HasSubstr("missing"));

  // A DeepSeek config.json over Llama weights: the first DeepSeek key it lacks is named.
  nlohmann::json deepseek = cfg;
  deepseek["model_type"] = "deepseek_v3";
  deepseek["architectures"] = {"DeepseekV3ForCausalLM"};
  write_hf_dir(tmp / "deepseek", deepseek, hf);
  r = convert_in(tmp / "deepseek");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("missing required key 'kv_lora_rank'"));
  // An unsupported model_type.
  nlohmann::json qwen = cfg;
  qwen["model_type"] = "qwen3_moe";
  qwen.erase("architectures");
  write_hf_dir(tmp / "qwen", qwen, hf);
  r = convert_in(tmp / "qwen");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("model_type 'qwen3_moe' is not supported"));
  // A Mixtral config over dense Llama weights: the dense MLPs are not in a Mixtral.
  nlohmann::json mixtral = cfg;
  mixtral["model_type"] = "mixtral";
  mixtral["architectures"] = {"MixtralForCausalLM"};
  write_hf_dir(tmp / "moe", mixtral, hf);
  r = convert_in(tmp / "moe");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("2-layer Mixtral with 8 experts of this config.json does not have"));
  EXPECT_THAT(r.output, HasSubstr("model.layers.0.mlp.down_proj.weight"));
  // Expert weights under a dense config.json.
  NamedTensorList with_experts = hf;
  with_experts.emplace_back("model.layers.0.block_sparse_moe.experts.0.w1.weight", hf[7].second);
  write_hf_dir(tmp / "dense_cfg", cfg, with_experts);
  r = convert_in(tmp / "dense_cfg");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("config.json describes a dense model"));
  // Mixtral weights that mix the per-expert and the fused layout: one tensor of each is named.
  const nlohmann::json mcfg = tiny_mixtral_config();
  NamedTensorList mix = random_hf_weights_of(mcfg, convert::HfMoeLayout::PerExpert, 3);
  mix.emplace_back("model.layers.1.mlp.experts.down_proj", Tensor::zeros({4, 32, 24}, DType::F32));
  write_hf_dir(tmp / "mix", mcfg, mix);
  r = convert_in(tmp / "mix");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("mix HuggingFace's two Mixtral layouts"));
  EXPECT_THAT(r.output, HasSubstr("'model.layers.1.mlp.experts.down_proj'"));
  nlohmann::json other = cfg;
  other["architectures"] = {"GPT2LMHeadModel"};
  write_hf_dir(tmp / "other", other, hf);
  r = convert_in(tmp / "other");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("GPT2LMHeadModel"));

  // Extra tensors that this config does not have (a third layer).
  nlohmann::json two = cfg;
  NamedTensorList extra = hf;
  extra.emplace_back("model.layers.2.mlp.up_proj.weight", hf[7].second);
  write_hf_dir(tmp / "extra", two, extra);
  r = convert_in(tmp / "extra");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("model.layers.2.mlp.up_proj.weight"));

  // Mixed dtypes without --dtype, then with it.
  NamedTensorList mixed = hf;
  mixed[1].second = convert::cast_float_tensor(mixed[1].second, DType::BF16, mixed[1].first);
  write_hf_dir(tmp / "mixed", cfg, mixed);
  r = convert_in(tmp / "mixed");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("--dtype"));
  r = run_primus("convert hf-to-primus --dtype bf16 --hf-dir " + (tmp / "mixed") + " --output " + (tmp / "out"));
  EXPECT_EQ(r.code, 0) << r.output;
  fs::remove_all(tmp / "out");

  // Failed conversions left no output and no staging directory.
  EXPECT_FALSE(fs::exists(tmp / "out"));
  for (const auto& name : dir_entries(tmp.path())) EXPECT_EQ(name.find(".out."), std::string::npos) << name;

  // primus-to-hf: no checkpoint, and a checkpoint whose tensors disagree with its config.
  r = run_primus("convert primus-to-hf --load " + (tmp / "nothing") + " --output " + (tmp / "hf_out"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("does not exist"));
  ModelConfig mc = convert::model_config_from_hf(cfg, "c");
  checkpoint::CheckpointContent content;
  content.model = {{"embedding.word_embeddings.weight", Tensor::zeros({61, 32}, DType::F32)}};
  content.config = convert::config_for_model(mc).to_json();
  checkpoint::CheckpointWriter(tmp / "partial").save(content);
  r = run_primus("convert primus-to-hf --load " + (tmp / "partial") + " --output " + (tmp / "hf_out"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("missing tensor 'decoder.layers.0.input_layernorm.weight'"));
  EXPECT_FALSE(fs::exists(tmp / "hf_out"));
  // An MoE checkpoint config that MixtralForCausalLM cannot express is refused by key.
  config::Config moe_cfg = convert::config_for_model(mc);
  moe_cfg.set("num_experts", 4, config::Source{"test", 0});
  moe_cfg.set("moe_shared_expert_intermediate_size", 64, config::Source{"test", 0});
  content.config = moe_cfg.to_json();
  checkpoint::CheckpointWriter(tmp / "moe_ckpt").save(content);
  r = run_primus("convert primus-to-hf --load " + (tmp / "moe_ckpt") + " --output " + (tmp / "hf_out"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("moe_ckpt/iter_0000000/config.json: moe_shared_expert_intermediate_size = 64"));
  EXPECT_THAT(r.output, HasSubstr("no shared experts"));
  EXPECT_FALSE(fs::exists(tmp / "hf_out"));
}

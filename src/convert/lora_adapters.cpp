#include "convert/lora_adapters.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/decoder_spec.h"

namespace primus::convert {

namespace fs = std::filesystem;

std::vector<std::string> write_peft_adapter(const std::string& dir, const ModelConfig& mc, const SafetensorsFile& file,
                                            const LoraConfig& lora) {
  PRIMUS_CHECK(!mc.multi_latent_attention && mc.num_experts == 0,
               "--peft-adapter: PEFT export of adapters on {} is not built yet (DeepSeek's q_a_proj / q_b_proj / "
               "kv_a_proj_with_mqa / kv_b_proj and per-expert gate_proj / up_proj / down_proj, Mixtral's "
               "experts.N.w1 / w3 / w2); export the merged model instead (primus convert primus-to-hf without "
               "--peft-adapter merges W + lora_alpha / lora_dim B A)",
               mc.multi_latent_attention && mc.num_experts > 0 ? "multi-latent attention and MoE layers"
               : mc.multi_latent_attention                     ? "multi-latent attention layers"
                                                               : "MoE layers");
  fs::create_directories(dir);
  const int64_t D = mc.head_dim(), Hq = mc.num_attention_heads, Hkv = mc.query_groups(), F = mc.ffn_hidden_size;
  NamedTensorList out;
  std::vector<std::string> hf_modules;
  auto add_module = [&](const std::string& m) {
    if (std::find(hf_modules.begin(), hf_modules.end(), m) == hf_modules.end()) hf_modules.push_back(m);
  };
  for (int64_t l = 0; l < mc.num_layers; ++l) {
    const std::string pre = fmt::format("decoder.layers.{}.", l);
    const std::string hf = fmt::format("base_model.model.model.layers.{}.", l);
    // (Megatron base, [(HF module, first row of B, rows)])
    const std::vector<std::pair<std::string, std::vector<std::tuple<std::string, int64_t, int64_t>>>> map = {
        {"self_attention.linear_qkv",
         {{"self_attn.q_proj", 0, Hq * D}, {"self_attn.k_proj", Hq * D, Hkv * D}, {"self_attn.v_proj", (Hq + Hkv) * D, Hkv * D}}},
        {"self_attention.linear_proj", {{"self_attn.o_proj", 0, -1}}},
        {"mlp.linear_fc1", {{"mlp.gate_proj", 0, F}, {"mlp.up_proj", F, F}}},
        {"mlp.linear_fc2", {{"mlp.down_proj", 0, -1}}},
    };
    for (const auto& [megatron, parts] : map) {
      const std::string base = pre + megatron + ".weight";
      if (!file.contains(lora_a_name(base))) continue;
      const Tensor a = load_f32(file, lora_a_name(base)), b = load_f32(file, lora_b_name(base));
      for (const auto& [module, first, rows] : parts) {
        const int64_t n = rows < 0 ? b.size(0) : rows;
        out.emplace_back(hf + module + ".lora_A.weight", a.clone());
        out.emplace_back(hf + module + ".lora_B.weight", b.rows(first, first + n).clone());
        add_module(module.substr(module.find('.') + 1));
      }
    }
  }
  PRIMUS_CHECK(!out.empty(), "{}: no LoRA adapters to export", file.path());
  const std::string weights = (fs::path(dir) / "adapter_model.safetensors").string();
  save_safetensors(weights, out, {{"format", "pt"}});
  nlohmann::json cfg = {{"peft_type", "LORA"},
                        {"task_type", "CAUSAL_LM"},
                        {"r", lora.rank},
                        {"lora_alpha", lora.alpha},
                        {"lora_dropout", 0.0},
                        {"target_modules", hf_modules},
                        {"bias", "none"},
                        {"fan_in_fan_out", false},
                        {"use_rslora", false},
                        {"use_dora", false},
                        {"inference_mode", true},
                        {"init_lora_weights", true},
                        {"modules_to_save", nullptr},
                        {"layers_to_transform", nullptr},
                        {"layers_pattern", nullptr},
                        {"rank_pattern", nlohmann::json::object()},
                        {"alpha_pattern", nlohmann::json::object()},
                        {"base_model_name_or_path", nullptr},
                        {"revision", nullptr}};
  const std::string config = (fs::path(dir) / "adapter_config.json").string();
  std::ofstream f(config);
  f << cfg.dump(2) << "\n";
  f.close();
  PRIMUS_CHECK(f.good(), "could not write {}", config);
  return {weights, config};
}

}  // namespace primus::convert

#include "convert/checkpoint_convert.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "config/config.h"
#include "convert/hf_files.h"
#include "convert/hf_model.h"
#include "convert/hf_tokenizer_info.h"
#include "convert/lora_adapters.h"
#include "model/fp8_training.h"
#include "model/lora_weights.h"
#include "convert/primus_config.h"
#include "convert/staged_dir.h"
#include "core/error.h"
#include "core/strings.h"
#include "checkpoint/checkpoint.h"

namespace primus::convert {

namespace fs = std::filesystem;

namespace {

bool is_float_weight(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string dir_name_of(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The HF tensors that are not model weights: rotary inverse frequencies (older exports
// store them; they are recomputed from rope_theta), for tied embeddings an lm_head copy of the
// embedding, and DeepSeek's MTP layers' copies of the embedding and output layer
// (hf_mtp_shared_copies; they must equal them). Anything else is an error (biases, more layers
// or experts than config.json says, another model).
std::vector<std::string> check_hf_tensor_set(const HfWeights& w, const ModelConfig& mc, HfMoeLayout layout) {
  const std::vector<std::string> expected = hf_parameter_names(mc, layout);
  const std::set<std::string> want(expected.begin(), expected.end());
  std::map<std::string, std::string> copies;  // HF name of an MTP copy -> the HF tensor it copies
  for (const auto& [name, shared] : hf_mtp_shared_copies(mc))
    copies[name] = shared == "output_layer.weight" ? "lm_head.weight" : "model.embed_tokens.weight";
  std::vector<std::string> notes, unknown;
  int64_t mtp_tensors = 0;
  for (const std::string& name : w.names()) {
    if (want.count(name)) continue;
    if (const auto it = copies.find(name); it != copies.end()) {
      PRIMUS_CHECK(same_bytes(w.view(name), w.view(it->second)),
                   "{}: '{}' differs from '{}'; Primus's MTP modules share the main model's embedding and output "
                   "layer, so it imports only checkpoints where they are copies (as DeepSeek-V3's are)",
                   w.source(), name, it->second);
      notes.push_back(fmt::format("'{}' is a copy of '{}' (shared)", name, it->second));
      continue;
    }
    // Multi-token-prediction layers past the imported ones follow the main layers: not imported.
    int64_t layer = -1;
    if (mc.multi_latent_attention && std::sscanf(name.c_str(), "model.layers.%ld.", &layer) == 1 &&
        layer >= mc.num_layers + mc.mtp_num_layers) {
      ++mtp_tensors;
      continue;
    }
    if (ends_with(name, ".rotary_emb.inv_freq")) {
      notes.push_back(fmt::format("ignored '{}' (recomputed from rope_theta)", name));
      continue;
    }
    if (name == "lm_head.weight" && !mc.untie_embeddings_and_output_weights) {
      PRIMUS_CHECK(same_bytes(w.view(name), w.view("model.embed_tokens.weight")),
                   "{}: config.json says tie_word_embeddings: true but lm_head.weight differs from "
                   "model.embed_tokens.weight; set tie_word_embeddings to false if the model has a separate "
                   "output layer", w.source());
      notes.push_back("ignored 'lm_head.weight' (a copy of the tied embedding)");
      continue;
    }
    unknown.push_back(name);
  }
  if (mtp_tensors > 0)
    notes.push_back(fmt::format("ignored {} tensors of model.layers.{}+ (multi-token-prediction layers beyond "
                                "num_nextn_predict_layers {} of config.json: not imported)",
                                mtp_tensors, mc.num_layers + mc.mtp_num_layers, mc.mtp_num_layers));
  if (!unknown.empty()) {
    std::string hint;
    for (const auto& n : unknown) {
      if (n.find("experts") != std::string::npos && mc.num_experts == 0)
        hint = " (MoE expert weights, but config.json describes a dense model)";
      else if (ends_with(n, ".bias") && hint.empty()) hint = " (biases: Llama and Mixtral have none)";
    }
    fail("{}: {} tensor(s) that the {}-layer {} of this config.json does not have, e.g. '{}'{}; the weights and "
         "config.json do not describe the same model", w.source(), unknown.size(), mc.num_layers,
         mc.multi_latent_attention ? fmt::format("DeepSeek with {} experts", mc.num_experts)
         : mc.num_experts > 0      ? fmt::format("Mixtral with {} experts", mc.num_experts)
                                   : std::string("Llama"),
         unknown.front(), hint);
  }
  return notes;
}

// The features HF's LlamaForCausalLM (dense) and MixtralForCausalLM (MoE) can express; errors
// name the key.
void check_exportable(const ModelConfig& mc, const std::string& source) {
  auto need = [&](bool ok, const std::string& key, const std::string& value, const char* why) {
    PRIMUS_CHECK(ok, "{}: {} = {}: {} (the HF export writes LlamaForCausalLM or MixtralForCausalLM: RMSNorm, "
                 "SwiGLU, rotate-half RoPE, no biases)", source, key, value, why);
  };
  if (mc.multi_latent_attention) {  // DeepSeek: its own rules
    need(!mc.add_bias_linear, "add_bias_linear", "true", "biases are not exported");
    check_deepseek_exportable(mc, source);
    return;
  }
  need(mc.mtp_num_layers == 0, "mtp_num_layers", std::to_string(mc.mtp_num_layers),
       "MTP layers have no HF Llama or Mixtral form");
  need(mc.swiglu, "swiglu", "false", "the HF models' MLPs are SwiGLU");
  need(mc.normalization == "RMSNorm", "normalization", mc.normalization, "the HF models use RMSNorm");
  need(mc.position_embedding_type == "rope", "position_embedding_type", mc.position_embedding_type,
       "the HF models use RoPE");
  need(!mc.add_bias_linear && !mc.add_qkv_bias, "add_bias_linear/add_qkv_bias", "true",
       "biases are not exported");
  need(mc.rotary_percent == 1.0, "rotary_percent", fmt::format("{}", mc.rotary_percent),
       "the HF models rotate the whole head");
  need(!mc.rotary_interleaved, "rotary_interleaved", "true", "the HF models rotate halves");
  need(mc.rotary_scaling_factor == 1.0, "rotary_scaling_factor", fmt::format("{}", mc.rotary_scaling_factor),
       "YaRN scaling has no LlamaForCausalLM / MixtralForCausalLM form");
  check_mixtral_exportable(mc, source);  // MoE: what MixtralForCausalLM cannot express
}

}  // namespace

DType parse_weight_dtype(const std::string& text) {
  if (text == "fp32" || text == "float32" || text == "f32") return DType::F32;
  if (text == "bf16" || text == "bfloat16") return DType::BF16;
  if (text == "fp16" || text == "float16" || text == "f16") return DType::F16;
  fail("dtype '{}' is not one of fp32, bf16, fp16", text);
}

std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: fail("dtype {} has no torch_dtype name for config.json", dtype_name(dtype));
  }
}

// ---- HF -> Primus -------------------------------------------------------------------

HfToPrimusResult hf_to_primus_checkpoint(const HfToPrimusOptions& o) {
  PRIMUS_CHECK(!o.hf_dir.empty(), "--hf-dir is required (the HuggingFace model directory)");
  PRIMUS_CHECK(!o.output.empty(), "--output is required (the Primus save directory to create)");
  PRIMUS_CHECK(o.iteration >= 0, "--iteration must be >= 0, got {}", o.iteration);
  check_output_apart_from_input(o.output, o.hf_dir);
  const std::string config_path = (fs::path(o.hf_dir) / "config.json").string();
  const nlohmann::json hf_config = read_json_file(config_path, "the model's HuggingFace config.json");
  ModelConfig mc;
  try {
    mc = model_config_from_hf(hf_config, config_path);
  } catch (const Error& e) {
    if (std::string(e.what()).rfind(config_path, 0) == 0) throw;
    fail("{}: {}", config_path, e.what());
  }
  if (!hf_config.contains("_name_or_path")) mc.name = dir_name_of(o.hf_dir);

  const HfWeights weights(o.hf_dir);
  HfToPrimusResult result;
  result.weights_source = weights.source();
  result.source_files = weights.num_files();
  // DeepSeek-V3's MTP layers: imported when config.json counts them (num_nextn_predict_layers)
  // and the weights hold them; transformers' own saves drop them (its model does not build them).
  if (mc.multi_latent_attention && mc.mtp_num_layers > 0) {
    const std::vector<std::string> names = weights.names();
    int64_t held = 0;
    while (held < mc.mtp_num_layers &&
           std::find(names.begin(), names.end(), fmt::format("model.layers.{}.eh_proj.weight", mc.num_layers + held)) !=
               names.end())
      ++held;
    if (held < mc.mtp_num_layers)
      result.notes.push_back(fmt::format("config.json has num_nextn_predict_layers {} but the weights hold {} "
                                         "multi-token-prediction layer(s) (no model.layers.{}.eh_proj.weight): "
                                         "imported with mtp_num_layers {}",
                                         mc.mtp_num_layers, held, mc.num_layers + held, held));
    else
      result.notes.push_back(fmt::format("imported {} multi-token-prediction layer(s) model.layers.{}+ as mtp.layers.*",
                                         held, mc.num_layers));
    mc.mtp_num_layers = held;
  }
  // Mixtral's experts come per expert or fused (transformers >= 5): the names say which.
  const HfMoeLayout layout = detect_hf_moe_layout(mc, weights.names(), weights.source());
  for (std::string& note : check_hf_tensor_set(weights, mc, layout)) result.notes.push_back(std::move(note));
  if (mc.num_experts > 0 && !mc.multi_latent_attention)
    result.notes.push_back(layout == HfMoeLayout::Fused
                               ? "MoE weights read from transformers >= 5's fused layout "
                                 "(model.layers.N.mlp.gate, mlp.experts.gate_up_proj / down_proj)"
                               : "MoE weights read from Mixtral's per-expert layout "
                                 "(model.layers.N.block_sparse_moe.gate, experts.E.w1/w2/w3)");

  // Stored dtypes: floats only; without --dtype the fused groups must agree to concatenate.
  std::map<DType, std::string> stored;  // dtype -> one tensor having it
  for (const std::string& name : hf_parameter_names(mc, layout)) {
    const DType d = weights.file_of(name).entry(name).dtype;
    PRIMUS_CHECK(is_float_weight(d), "{}: tensor '{}' is {}; only fp32/bf16/fp16 weights convert (quantized "
                 "checkpoints are not supported)", weights.file_of(name).path(), name, dtype_name(d));
    stored.emplace(d, name);
  }
  if (!o.dtype && stored.size() > 1)
    fail("{}: the weights mix dtypes ('{}' is {}, '{}' is {}); pass --dtype fp32|bf16 to store them in one",
         weights.source(), stored.begin()->second, dtype_name(stored.begin()->first), stored.rbegin()->second,
         dtype_name(stored.rbegin()->first));

  auto lookup = [&](const std::string& name) {
    const Tensor v = weights.view(name);  // borrowed from the mapping
    return o.dtype ? cast_float_tensor(v, *o.dtype, name) : v;
  };
  NamedTensors tensors;
  try {
    tensors = hf_to_primus(mc, lookup, layout);
  } catch (const Error& e) {
    fail("{} (weights {}, config {}): {}", o.hf_dir, weights.source(), config_path, e.what());
  }

  const nlohmann::json config = config_for_model(mc).to_json();
  // The promise readers rely on: the stored config gives back this architecture.
  const ModelConfig back = config::model_config(config::from_json(config));
  PRIMUS_CHECK(back.padded_vocab_size == mc.padded_vocab_size && back.head_dim() == mc.head_dim() &&
                   back.num_query_groups == mc.num_query_groups && back.ffn_hidden_size == mc.ffn_hidden_size &&
                   back.num_experts == mc.num_experts && back.moe_router_topk == mc.moe_router_topk &&
                   back.moe_ffn_hidden_size == mc.moe_ffn_hidden_size,
               "internal: the checkpoint config does not reproduce the model (vocab {} vs {}, experts {} vs {}, "
               "top-k {} vs {}, expert inner size {} vs {})", back.padded_vocab_size, mc.padded_vocab_size,
               back.num_experts, mc.num_experts, back.moe_router_topk, mc.moe_router_topk, back.moe_ffn_hidden_size,
               mc.moe_ffn_hidden_size);

  StagedDir out(o.output, o.force);
  checkpoint::CheckpointContent content;
  content.iteration = o.iteration;
  content.model = std::move(tensors);
  content.config = config;
  content.extra = {{"converted_from",
                    {{"format", "huggingface"},
                     {"dir", fs::absolute(o.hf_dir).lexically_normal().string()},
                     {"config", hf_config}}}};
  checkpoint::CheckpointWriter writer(out.path());
  writer.save(content);
  const checkpoint::SaveResult saved = *writer.last_result();
  out.commit();

  result.checkpoint_dir = (fs::path(out.target()) / checkpoint::checkpoint_dir_name(o.iteration)).string();
  result.model = mc;
  result.tensors = content.model.size();
  result.bytes = saved.bytes;
  return result;
}

// ---- Primus -> HF -------------------------------------------------------------------

PrimusToHfResult primus_to_hf_dir(const PrimusToHfOptions& o) {
  PRIMUS_CHECK(!o.load.empty(), "--load is required (the Primus save directory or an iter_XXXXXXX directory)");
  PRIMUS_CHECK(!o.output.empty(), "--output is required (the HuggingFace directory to create)");
  check_output_apart_from_input(o.output, o.load);
  PRIMUS_CHECK(is_float_weight(o.dtype), "--dtype must be fp32, bf16 or fp16");
  const checkpoint::CheckpointReader reader(o.load, o.iteration);
  const std::string config_path = (fs::path(reader.path()) / "config.json").string();
  PRIMUS_CHECK(reader.parts().config, "'{}' has no config.json, so its architecture is unknown; re-save it with a "
               "current primus (every checkpoint of `primus train` and `primus convert` carries one)", reader.path());
  ModelConfig mc;
  try {
    mc = config::model_config(config::from_json(reader.config()));
  } catch (const Error& e) {
    fail("{}: {}", config_path, e.what());
  }
  check_exportable(mc, config_path);

  const SafetensorsFile& file = reader.model_file();
  const std::vector<std::string> expected = primus_parameter_names(mc);
  const std::set<std::string> want(expected.begin(), expected.end());
  for (const auto& e : file.entries())
    PRIMUS_CHECK(want.count(e.name) || is_lora_tensor(e.name) || e.name.ends_with(kFp8StateSuffix),
                 "{}: tensor '{}' {} is not a parameter of the model in {}{}; the checkpoint "
                 "and its config.json disagree", file.path(), e.name, shape_str(e.shape), config_path,
                 did_you_mean(e.name, expected));
  // A LoRA run: the exported weights are the merged ones (W + s B A); --peft-adapter also writes
  // the adapters alone in PEFT's layout.
  const std::vector<std::string> adapted = lora_adapted_weights(file);
  std::map<std::string, Tensor> merged;
  std::optional<LoraConfig> lora;
  if (!adapted.empty()) {
    lora = lora_config_of(reader.config(), config_path);
    for (const std::string& w : adapted) merged[w] = merged_lora_weight(file, w, lora->scaling());
  }
  PRIMUS_CHECK(o.peft_adapter.empty() || lora, "--peft-adapter {}: {} holds no LoRA adapters (train with peft: lora)",
               o.peft_adapter, reader.path());
  for (const auto& name : expected)
    PRIMUS_CHECK(file.contains(name), "{}: missing tensor '{}' that the model in {} has ({} tensors in the file); "
                 "the checkpoint and its config.json disagree", file.path(), name, config_path, file.entries().size());
  const int64_t rows = file.entry("embedding.word_embeddings.weight").shape.at(0);
  PRIMUS_CHECK(rows == mc.padded_vocab_size, "{}: embedding.word_embeddings.weight has {} rows but {} implies {} "
               "(vocab_size {} padded by make_vocab_size_divisible_by x tensor_model_parallel_size)", file.path(),
               rows, config_path, mc.padded_vocab_size, mc.vocab_size);

  // The rows to keep: the true vocabulary.
  const int64_t keep = o.vocab_size ? *o.vocab_size : (mc.vocab_size > 0 ? mc.vocab_size : rows);
  PRIMUS_CHECK(keep > 0 && keep <= rows, "--vocab-size {} must be in [1, {}] (the checkpoint's embedding rows)",
               keep, rows);
  std::optional<HfTokenizerInfo> tok;
  if (!o.tokenizer.empty()) {
    tok = inspect_hf_tokenizer(o.tokenizer);
    PRIMUS_CHECK(tok->vocab_size <= keep, "{}: the tokenizer has ids up to {} but the exported vocabulary keeps "
                 "{} rows ({}); is it the tokenizer the model was trained with? (--vocab-size N keeps more of the "
                 "{} rows)", tok->tokenizer_json, tok->vocab_size - 1, keep,
                 o.vocab_size ? "--vocab-size" : "vocab_size in " + config_path, rows);
  }

  auto lookup = [&](const std::string& name) {  // borrowed from the mapping, or merged
    const auto it = merged.find(name);
    return it != merged.end() ? it->second : file.view(name);
  };
  NamedTensors hf = primus_to_hf(mc, lookup);
  for (auto& [name, t] : hf)
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight" || ends_with(name, ".embed_tokens.weight") ||
        ends_with(name, ".shared_head.head.weight"))
      t = t.rows(0, keep);

  PrimusToHfResult result;
  result.checkpoint_dir = reader.path();
  result.vocab_rows_dropped = rows - keep;
  mc.padded_vocab_size = keep;
  mc.vocab_size = keep;
  result.model = mc;

  // bos / eos.
  const nlohmann::json imported = reader.extra().value("converted_from", nlohmann::json::object());
  const nlohmann::json imported_config = imported.value("config", nlohmann::json::object());
  auto imported_id = [&](const char* key) -> std::optional<int64_t> {
    if (imported_config.contains(key) && imported_config[key].is_number_integer())
      return imported_config[key].get<int64_t>();
    return std::nullopt;
  };
  if (tok) {
    result.bos_token_id = tok->bos_token_id;
    result.eos_token_id = tok->eos_token_id;
    result.bos_eos_source = "the tokenizer " + tok->tokenizer_json;
  } else if (imported_id("bos_token_id") || imported_id("eos_token_id")) {
    result.bos_token_id = imported_id("bos_token_id");
    result.eos_token_id = imported_id("eos_token_id");
    result.bos_eos_source = "the HF config.json the checkpoint was imported from";
  } else if (kLlama3EosTokenId < keep) {
    result.bos_token_id = kLlama3BosTokenId;
    result.eos_token_id = kLlama3EosTokenId;
    result.bos_eos_source = "Llama 3 defaults (no --tokenizer-model given)";
  } else {
    result.bos_eos_source = fmt::format("none: no tokenizer given and Llama 3's ids do not fit {} rows", keep);
  }
  if (o.bos_token_id) result.bos_token_id = o.bos_token_id;
  if (o.eos_token_id) result.eos_token_id = o.eos_token_id;
  if (o.bos_token_id || o.eos_token_id) result.bos_eos_source = "the command line";
  for (const auto& id : {result.bos_token_id, result.eos_token_id})
    PRIMUS_CHECK(!id || (*id >= 0 && *id < keep), "bos/eos token id {} is outside the exported vocabulary of {} rows",
                 *id, keep);

  nlohmann::json hf_config = hf_config_from_model(mc, torch_dtype_name(o.dtype), 0, 0);
  auto id_json = [](const std::optional<int64_t>& id) { return id ? nlohmann::json(*id) : nlohmann::json(); };
  hf_config["bos_token_id"] = id_json(result.bos_token_id);
  hf_config["eos_token_id"] = id_json(result.eos_token_id);
  nlohmann::json generation = {{"_from_model_config", true},
                               {"bos_token_id", id_json(result.bos_token_id)},
                               {"eos_token_id", id_json(result.eos_token_id)}};

  StagedDir out(o.output, o.force);
  const HfWeightsWritten written = write_hf_weights(out.path(), hf, o.dtype, o.max_shard_bytes);
  result.files = written.files;
  result.weight_bytes = written.total_bytes;
  write_json_file((fs::path(out.path()) / "config.json").string(), hf_config);
  write_json_file((fs::path(out.path()) / "generation_config.json").string(), generation);
  result.files.push_back("config.json");
  result.files.push_back("generation_config.json");
  if (tok) {
    copy_file_synced(tok->tokenizer_json, (fs::path(out.path()) / "tokenizer.json").string());
    result.files.push_back("tokenizer.json");
    for (const auto& s : tok->siblings) {
      const std::string name = fs::path(s).filename().string();
      copy_file_synced(s, (fs::path(out.path()) / name).string());
      result.files.push_back(name);
    }
  }
  out.commit();
  result.output = out.target();
  result.lora_merged = static_cast<int64_t>(adapted.size());
  if (!o.peft_adapter.empty()) {
    check_output_apart_from_input(o.peft_adapter, o.load);
    StagedDir adapter(o.peft_adapter, o.force);
    for (const std::string& f : write_peft_adapter(adapter.path(), mc, file, *lora))
      result.peft_files.push_back(fs::path(f).filename().string());
    adapter.commit();
  }
  return result;
}

}  // namespace primus::convert

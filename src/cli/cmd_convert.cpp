// primus convert hf-to-primus | primus-to-hf: HuggingFace (Llama, Mixtral, DeepSeek) <-> Primus checkpoints.
// The work is in convert/checkpoint_convert.h; this file parses options and prints.
#include <fmt/format.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "convert/checkpoint_convert.h"
#include "convert/primus_config.h"
#include "convert/hf_files.h"
#include "core/strings.h"

namespace primus::cli {

namespace {

constexpr const char* kDirections[] = {"hf-to-primus", "primus-to-hf"};

void print_convert_usage() {
  fmt::print(
      "Convert checkpoints between HuggingFace (Llama, Mistral, Mixtral) and Primus.\n\n"
      "usage: primus convert <direction> [options]   (primus convert <direction> --help)\n\n"
      "directions:\n"
      "  hf-to-primus   HF directory (config.json + safetensors, sharded or not) -> Primus checkpoint\n"
      "                 primus convert hf-to-primus --hf-dir DIR --output SAVE_DIR [--dtype fp32|bf16]\n"
      "                 then train from it with `load: SAVE_DIR` and `finetune: true`\n"
      "  primus-to-hf   Primus checkpoint -> HF directory that transformers loads\n"
      "                 primus convert primus-to-hf --load SAVE_DIR --output HF_DIR [--tokenizer-model tokenizer.json]\n");
}

// The architecture keys a training experiment needs to load the converted weights: every key
// that convert::config_for_model sets from the model (the config.json written beside the
// weights), so the list cannot drift from what the checkpoint records.
void print_model_keys(const ModelConfig& m, const std::string& save_dir) {
  fmt::print("\nTo train from it, put these model keys in the experiment's model file (or overrides):\n");
  const config::Config c = convert::config_for_model(m);
  for (const auto& [key, entry] : c.entries())
    if (entry.source.file.starts_with("derived") && !entry.value.is_null())
      fmt::print("  {}: {}\n", key, entry.value.dump());  // JSON scalars and lists are YAML too
  fmt::print("and\n  load: {}\n  finetune: true\n", save_dir);
}

int hf_to_primus(int argc, char** argv) {
  CLI::App app{"Convert a HuggingFace Llama / Mistral / Mixtral / DeepSeek-V2 / DeepSeek-V3 directory (config.json + model.safetensors, or the sharded "
               "model.safetensors.index.json + shards) into a Primus checkpoint: <output>/iter_XXXXXXX/"
               "{model.safetensors, config.json, meta.json} + latest_checkpointed_iteration.txt. Train from it with "
               "`load: <output>` and `finetune: true`.",
               "convert hf-to-primus"};
  convert::HfToPrimusOptions o;
  std::string dtype;
  app.add_option("--hf-dir", o.hf_dir, "HF model directory (required)");
  app.add_option("--output,-o", o.output, "Primus save directory to create (required; must be empty or absent)");
  app.add_option("--dtype", dtype, "weights dtype: fp32, bf16 or fp16 (default: as stored)");
  app.add_option("--iteration", o.iteration, "iteration number of the written checkpoint")->capture_default_str();
  app.add_flag("--force", o.force, "replace a non-empty --output");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (o.hf_dir.empty() || o.output.empty()) {
    fmt::print(stderr, "primus convert hf-to-primus: --hf-dir and --output are required\n"
                       "Run 'primus convert hf-to-primus --help' for the options.\n");
    return 2;
  }
  if (!dtype.empty()) o.dtype = convert::parse_weight_dtype(dtype);
  const convert::HfToPrimusResult r = convert::hf_to_primus_checkpoint(o);
  const ModelConfig& m = r.model;
  fmt::print("read {} ({} file{}): {} layers, hidden {}, {} heads / {} kv heads, vocab {}, {} embeddings{}\n",
             r.weights_source, r.source_files, r.source_files == 1 ? "" : "s", m.num_layers, m.hidden_size,
             m.num_attention_heads, m.num_query_groups, m.padded_vocab_size,
             m.untie_embeddings_and_output_weights ? "untied" : "tied",
             m.num_experts > 0 ? fmt::format(", {} experts (top-{}) of ffn {}", m.num_experts, m.moe_router_topk,
                                             m.moe_ffn_hidden_size)
                               : "");
  for (const auto& n : r.notes) fmt::print("note: {}\n", n);
  fmt::print("wrote {}: {} tensors, {:.1f} MB\n", r.checkpoint_dir, r.tensors, r.bytes / 1e6);
  print_model_keys(m, std::filesystem::path(r.checkpoint_dir).parent_path().string());
  return 0;
}

int primus_to_hf(int argc, char** argv) {
  CLI::App app{"Convert a Primus checkpoint into a HuggingFace LlamaForCausalLM (MoE: MixtralForCausalLM; multi-latent attention: DeepseekV3ForCausalLM or DeepseekV2ForCausalLM) directory: config.json, "
               "model.safetensors (or shards + model.safetensors.index.json), generation_config.json and the "
               "tokenizer files. The vocabulary is cut back from the padded training rows to vocab_size.",
               "convert primus-to-hf"};
  convert::PrimusToHfOptions o;
  std::string dtype = "bf16", max_shard = "5GB";
  std::optional<int64_t> iteration, vocab, bos, eos;
  app.add_option("--load", o.load, "Primus save directory, or an iter_XXXXXXX directory (required)");
  app.add_option("--iteration", iteration, "iteration to convert (default: latest_checkpointed_iteration.txt)");
  app.add_option("--output,-o", o.output, "HF directory to create (required; must be empty or absent)");
  app.add_option("--dtype", dtype, "weights dtype: bf16, fp32 or fp16")->capture_default_str();
  app.add_option("--tokenizer-model", o.tokenizer,
                 "HF tokenizer.json (or its directory) to copy along, with tokenizer_config.json / "
                 "special_tokens_map.json beside it; gives bos/eos ids");
  app.add_option("--max-shard-size", max_shard, "largest safetensors shard (5GB = 5*10^9 bytes, as HF; 2GiB, 500MB)")
      ->capture_default_str();
  app.add_option("--vocab-size", vocab, "embedding rows to keep (default: the checkpoint config's vocab_size, "
                                        "dropping the training padding)");
  app.add_option("--bos-token-id", bos, "bos_token_id for config.json (default: from the tokenizer)");
  app.add_option("--eos-token-id", eos, "eos_token_id for config.json (default: from the tokenizer)");
  app.add_flag("--force", o.force, "replace a non-empty --output");
  app.add_option("--peft-adapter", o.peft_adapter,
                 "LoRA checkpoints: also write the adapters alone in PEFT's layout (adapter_model.safetensors + "
                 "adapter_config.json) into this directory; --output gets the merged weights");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (o.load.empty() || o.output.empty()) {
    fmt::print(stderr, "primus convert primus-to-hf: --load and --output are required\n"
                       "Run 'primus convert primus-to-hf --help' for the options.\n");
    return 2;
  }
  o.iteration = iteration;
  o.vocab_size = vocab;
  o.bos_token_id = bos;
  o.eos_token_id = eos;
  o.dtype = convert::parse_weight_dtype(dtype);
  o.max_shard_bytes = convert::parse_byte_size(max_shard);
  const convert::PrimusToHfResult r = convert::primus_to_hf_dir(o);
  const ModelConfig& m = r.model;
  fmt::print("read {}: {} layers, hidden {}, {} heads / {} kv heads\n", r.checkpoint_dir, m.num_layers,
             m.hidden_size, m.num_attention_heads, m.num_query_groups);
  fmt::print("vocabulary: {} rows exported{}\n", m.padded_vocab_size,
             r.vocab_rows_dropped > 0 ? fmt::format(" ({} padding rows dropped)", r.vocab_rows_dropped) : "");
  auto id = [](const std::optional<int64_t>& v) { return v ? std::to_string(*v) : std::string("null"); };
  fmt::print("bos_token_id {}, eos_token_id {} (from {})\n", id(r.bos_token_id), id(r.eos_token_id),
             r.bos_eos_source);
  fmt::print("wrote {}: {} ({:.1f} MB of {} weights)\n", r.output, fmt::join(r.files, ", "), r.weight_bytes / 1e6,
             dtype);
  if (r.lora_merged > 0)
    fmt::print("LoRA: {} weights exported with their adapters merged (W + lora_alpha / lora_dim B A)\n",
               r.lora_merged);
  if (!r.peft_files.empty())
    fmt::print("wrote {}: {} (the adapters alone, PEFT layout)\n", o.peft_adapter, fmt::join(r.peft_files, ", "));
  return 0;
}

}  // namespace

int cmd_convert(int argc, char** argv) {
  const std::string direction = argc > 1 ? argv[1] : "";
  if (direction.empty() || direction == "--help" || direction == "-h" || direction == "help") {
    print_convert_usage();
    return direction.empty() ? 2 : 0;
  }
  if (direction == "hf-to-primus") return hf_to_primus(argc - 1, argv + 1);
  if (direction == "primus-to-hf") return primus_to_hf(argc - 1, argv + 1);
  const std::vector<std::string> names(std::begin(kDirections), std::end(kDirections));
  fmt::print(stderr, "primus convert: unknown direction '{}'{}\nRun 'primus convert --help' for the directions.\n",
             direction, did_you_mean(direction, names));
  return 2;
}

}  // namespace primus::cli

// `primus convert`: HuggingFace Llama / Mistral / Mixtral directories <-> Primus checkpoints.
//
// hf-to-primus: <hf_dir>/config.json + model.safetensors (or the sharded index and its
// shards), mapped read-only; q/k/v and gate/up are concatenated into Primus' fused
// linear_qkv / linear_fc1, and Mixtral's per-expert w1/w3 and w2 into the stacked
// experts' linear_fc1 / linear_fc2 (the only copies made besides dtype casts), every other
// tensor is written straight from the mapping. Mixtral's experts are read in either HF layout
// (per expert, or transformers >= 5's fused gate_up_proj / down_proj: hf_model.h), detected
// from the tensor names. Output: a checkpoint in the training loop's layout
//   <output>/latest_checkpointed_iteration.txt
//   <output>/iter_XXXXXXX/{model.safetensors, config.json, meta.json}
// where config.json is config_for_model(model).to_json() and meta.json's "extra" records
// {"converted_from": {"format": "huggingface", "dir", "config": <the HF config.json>}}.
// No optimizer or RNG state: train from it with `load: <output>` and `finetune: true`.
//
// primus-to-hf: a checkpoint (tracker's iteration unless one is given) -> <output>/
//   config.json (LlamaForCausalLM, or MixtralForCausalLM for an MoE model that Mixtral can
//   express, its experts written per expert), model.safetensors or model-0000i-of-0000N.safetensors +
//   model.safetensors.index.json, generation_config.json, and the tokenizer files when a
//   tokenizer is given.
// Vocabulary: training pads the embedding/output rows to a multiple of
// make_vocab_size_divisible_by x tensor_model_parallel_size; the padding rows are never a
// token. The export keeps the first `vocab_size` rows, where vocab_size is --vocab-size
// when given, else the checkpoint config's vocab_size (the true vocabulary before
// padding), and drops the rest (what Megatron's HF saver does with its true vocab size).
// A given tokenizer must fit in the kept rows (its largest id < vocab_size).
// bos/eos ids: --bos/--eos-token-id, else the tokenizer's, else those of the HF config the
// checkpoint was imported from, else Llama 3's 128000/128001 when they fit in the
// vocabulary, else null.
//
// Both directions write into a hidden staging directory beside the output and rename it
// into place (StagedDir): a failure or kill leaves no half-written output, and a
// non-empty output is replaced only with force.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/model_config.h"

namespace primus::convert {

struct HfToPrimusOptions {
  std::string hf_dir;
  std::string output;           // the save directory
  std::optional<DType> dtype;   // F32/BF16/F16; nullopt: as stored
  int64_t iteration = 0;
  bool force = false;
};

struct HfToPrimusResult {
  std::string checkpoint_dir;   // <output>/iter_XXXXXXX
  ModelConfig model;
  std::string weights_source;   // model.safetensors or the index
  size_t source_files = 0;      // safetensors files read
  size_t tensors = 0;           // Primus tensors written
  uint64_t bytes = 0;           // checkpoint bytes written
  std::vector<std::string> notes;  // tensors ignored and why; the MoE layout read
};

HfToPrimusResult hf_to_primus_checkpoint(const HfToPrimusOptions& options);

struct PrimusToHfOptions {
  std::string load;                      // save directory or iter_XXXXXXX directory
  std::optional<int64_t> iteration;      // nullopt: the tracker's
  std::string output;                    // the HF directory
  DType dtype = DType::BF16;
  std::string tokenizer;                 // tokenizer.json or its directory; empty: none
  uint64_t max_shard_bytes = 5'000'000'000ull;  // HF's default "5GB"
  std::optional<int64_t> vocab_size;     // rows kept; nullopt: the config's vocab_size
  std::optional<int64_t> bos_token_id, eos_token_id;
  bool force = false;
  std::string peft_adapter;              // LoRA checkpoints: also write the adapters (PEFT layout) here
};

struct PrimusToHfResult {
  std::string output;
  std::string checkpoint_dir;  // the iter_XXXXXXX read
  ModelConfig model;           // with padded_vocab_size = the rows exported
  int64_t vocab_rows_dropped = 0;
  std::optional<int64_t> bos_token_id, eos_token_id;
  std::string bos_eos_source;  // where the ids came from, for the summary line
  std::vector<std::string> files;  // written into output, in order
  int64_t lora_merged = 0;         // base weights with LoRA adapters merged in
  std::vector<std::string> peft_files;  // written into peft_adapter
  uint64_t weight_bytes = 0;
};

PrimusToHfResult primus_to_hf_dir(const PrimusToHfOptions& options);

// "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16" -> DType; throws naming the choices.
DType parse_weight_dtype(const std::string& text);
// DType -> transformers' torch_dtype string ("float32", "bfloat16", "float16").
std::string torch_dtype_name(DType dtype);

}  // namespace primus::convert

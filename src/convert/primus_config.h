// ModelConfig -> config::Config: the config.json that a converted checkpoint carries.
//
// A Primus checkpoint stores the resolved experiment (config::Config::to_json()) as
// iter_XXXXXXX/config.json; readers (primus convert primus-to-hf, primus generate) get the
// architecture back with config::model_config(config::from_json(json)). For a checkpoint
// made by `primus convert hf-to-primus` there is no experiment, so the config is built
// from the model alone: every schema default, with the architecture keys set from the
// ModelConfig. Only the architecture is meaningful (data, optimizer and schedule keys stay
// at their schema defaults); the config is not validate()d as an experiment.
//
// Vocabulary: vocab_size is the true vocabulary (ModelConfig::vocab_size, or the row count
// when that is 0) and make_vocab_size_divisible_by is the smallest power of two (<= 1024,
// else the row count itself) that pads it back to exactly padded_vocab_size at
// tensor_model_parallel_size 1. An HF import has vocab_size == rows, so the multiple is 1
// and nothing is padded.
#pragma once

#include "config/config.h"
#include "model/model_config.h"

namespace primus::convert {

// Throws for models the converter cannot describe yet (MLA, MTP), naming the field.
// Guarantees: config::model_config(config_for_model(mc)) reproduces every dense-model and
// MoE field of `mc` (see tests/unit/test_convert_cli.cpp). The MoE keys (num_experts,
// moe_router_topk, moe_ffn_hidden_size, moe_layer_freq as "1" or a "[1,0,...]" list, ...)
// are written only when mc.num_experts > 0: a dense model's config is as before.
config::Config config_for_model(const ModelConfig& mc);

}  // namespace primus::convert

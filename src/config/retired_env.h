// Environment variables that used to steer the engine and are now experiment keys (or command
// flags). A run that still sets one is refused at start-up with the replacement, so that no
// script's variable silently stops meaning what it meant: `primus` checks them before running any
// command (cli/main.cpp).
//
//   PRIMUS_ATTENTION_IMPL, PRIMUS_ATTENTION_KERNEL  -> attention_backend
//   PRIMUS_LOGITS_CHUNK_MB                          -> logits_chunk_mb
//   PRIMUS_CUDNN_ATTN_PADDING_WORKAROUND            -> cudnn_attention_padding_workaround
//   PRIMUS_CUDNN_ATTN_MASK_INDEX                    -> cudnn_attention_mask_index
//   PRIMUS_COMM_TIMEOUT_S                           -> distributed_timeout_minutes
//
// The GEMM tuning variables (PRIMUS_GEMM_TUNING_*, upstream Primus's interface) stay.
#pragma once

#include <string>
#include <vector>

#include "config/interpolate.h"

namespace primus::config {

struct RetiredEnvVar {
  const char* name;
  const char* key;  // the experiment key that replaces it
};
const std::vector<RetiredEnvVar>& retired_env_vars();

// One line per retired variable set to a non-empty value in `env`: its value, the key that
// replaces it and the value to give that key ("PRIMUS_LOGITS_CHUNK_MB=1024: use the experiment
// key logits_chunk_mb (--set logits_chunk_mb=1024)"). Empty when none is set.
std::vector<std::string> retired_env_settings(const EnvLookup& env);

// Throws primus::Error listing every retired variable set, or returns.
void refuse_retired_env(const EnvLookup& env);

}  // namespace primus::config

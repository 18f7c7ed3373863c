#include "config/retired_env.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace primus::config {

namespace {

// The old value in the new key's terms, or "" when there is no direct translation.
std::string translated(const std::string& name, const std::string& v) {
  if (name == "PRIMUS_ATTENTION_IMPL" || name == "PRIMUS_ATTENTION_KERNEL") {
    if (v == "cudnn" || v == "auto") return "auto";
    if (v == "cudnn-strict") return "fused";
    if (v == "flash") return "flash";
    if (v == "simple") return "unfused";
    return "";
  }
  if (name == "PRIMUS_CUDNN_ATTN_PADDING_WORKAROUND") {
    if (v == "on" || v == "1") return "on";
    if (v == "off" || v == "0") return "off";
    return v == "auto" ? v : "";
  }
  if (name == "PRIMUS_CUDNN_ATTN_MASK_INDEX") return v == "int32" || v == "float" ? v : "";
  if (name == "PRIMUS_COMM_TIMEOUT_S") {  // seconds -> whole minutes, rounded up
    char* end = nullptr;
    const double s = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !std::isfinite(s) || s <= 0) return "";
    return fmt::format("{}", std::max<int64_t>(1, static_cast<int64_t>(std::ceil(s / 60.0))));
  }
  return v;  // PRIMUS_LOGITS_CHUNK_MB: the same number
}

// What else the replacement needs to be told.
const char* note(const std::string& name) {
  if (name == "PRIMUS_ATTENTION_IMPL" || name == "PRIMUS_ATTENTION_KERNEL")
    return "; fused and flash need enable_primus_turbo and use_turbo_attention, unfused needs use_turbo_attention "
           "off (docs/TRAINING.md); `primus bench attention` takes --attention-backend";
  if (name == "PRIMUS_COMM_TIMEOUT_S")
    return "; in whole minutes; `primus preflight` and `primus node-smoke` take --distributed-timeout-minutes";
  return "";
}

}  // namespace

const std::vector<RetiredEnvVar>& retired_env_vars() {
  static const std::vector<RetiredEnvVar> vars = {
      {"PRIMUS_ATTENTION_IMPL", "attention_backend"},
      {"PRIMUS_ATTENTION_KERNEL", "attention_backend"},
      {"PRIMUS_LOGITS_CHUNK_MB", "logits_chunk_mb"},
      {"PRIMUS_CUDNN_ATTN_PADDING_WORKAROUND", "cudnn_attention_padding_workaround"},
      {"PRIMUS_CUDNN_ATTN_MASK_INDEX", "cudnn_attention_mask_index"},
      {"PRIMUS_COMM_TIMEOUT_S", "distributed_timeout_minutes"},
  };
  return vars;
}

std::vector<std::string> retired_env_settings(const EnvLookup& env) {
  std::vector<std::string> out;
  for (const RetiredEnvVar& r : retired_env_vars()) {
    const std::optional<std::string> v = env(r.name);
    if (!v || v->empty()) continue;  // set to nothing, it changed nothing before either
    const std::string value = translated(r.name, *v);
    out.push_back(fmt::format("{}={}: use the experiment key {} ({}){}", r.name, *v, r.key,
                              value.empty() ? fmt::format("primus config --list names its values")
                                            : fmt::format("--set {}={}", r.key, value),
                              note(r.name)));
  }
  return out;
}

void refuse_retired_env(const EnvLookup& env) {
  const std::vector<std::string> lines = retired_env_settings(env);
  if (lines.empty()) return;
  std::string text;
  for (const std::string& l : lines) text += "\n  " + l;
  throw Error(fmt::format("{} no longer configure{} the engine: experiment keys do (docs/CONFIG.md). Unset {} and "
                          "set the key instead:{}",
                          lines.size() == 1 ? "this environment variable" : "these environment variables",
                          lines.size() == 1 ? "s" : "", lines.size() == 1 ? "it" : "them", text));
}

}  // namespace primus::config

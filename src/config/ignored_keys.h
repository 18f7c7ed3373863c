// Keys a run would ignore: set in the experiment (or a file it extends, or --set) to a value other
// than the schema's default, yet without effect in this run. Two kinds:
//   - Megatron keys the schema accepts so that upstream experiment files load, but that the
//     engine never reads (ckpt_format, use_turbo_gemm, num_workers, ...);
//   - keys that act only under a feature this run does not use (moe_aux_loss_coeff without
//     num_experts, lora_dim without peft: lora, eval_interval with eval_iters: 0, the loss-scale
//     keys without fp16, ...).
// Keys the engine refuses (fp8, the GRPO keys without grpo, post-training keys under pre_trainer,
// lora_dropout without LoRA, ...) are not listed here: train_options() throws on them.
//
// The rules are one table (ignored_keys.cpp): {key, when it matters, why not}. A key matches the
// first of its rules whose condition is false. Derived values (validate()) count as unset.
//
//   for (const IgnoredKey& k : ignored_keys(cfg)) fmt::print("warning: {}\n", k.message());
#pragma once

#include <string>
#include <vector>

#include "config/config.h"

namespace primus::config {

struct IgnoredKeyRule {
  const char* key;
  bool (*matters)(const Config&);  // true when the key acts in the run of this config
  const char* why;                 // why it does not, e.g. "num_experts is unset (a dense model)"
};

// The table, in schema-group order (tests check every key against the schema).
const std::vector<IgnoredKeyRule>& ignored_key_rules();

struct IgnoredKey {
  std::string key, value, source, why;
  // "moe_aux_loss_coeff = 0.01 (exp.yaml:12) has no effect in this run: num_experts is unset (...)"
  std::string message() const;
};

// The keys of cfg (validated) set to a non-default value that this run would ignore, in table order.
std::vector<IgnoredKey> ignored_keys(const Config& cfg);

}  // namespace primus::config

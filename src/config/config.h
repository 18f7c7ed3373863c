// The resolved experiment config: every schema key with its typed value and its source.
//
// An experiment YAML (upstream Primus format) names a module file (trainer defaults) and
// a model file (the architecture) and adds overrides; the command line adds --set
// key=value. Precedence, lowest to highest:
//   schema default < module file chain < model file chain < experiment overrides < --set
// Every value remembers where it came from (file and line, "command line",
// "schema default" or "derived (...)") so errors and `primus config --show` can say so.
//
//   auto cfg = primus::config::load_experiment("examples/megatron/llama3.1_8B-pretrain.yaml", {"lr=1e-4"});
//   int64_t iters = cfg.i("train_iters");
//   primus::ModelConfig m = primus::config::model_config(cfg);
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config/interpolate.h"
#include "config/schema.h"
#include "config/source.h"
#include "model/model_config.h"

namespace primus::config {

struct Entry {
  nlohmann::json value;  // typed per the schema: bool, int64, double, string, list, or null
  Source source;
};

class Config {  // resolved, validated, typed
 public:
  // A config with every key at its schema default (sources "schema default").
  Config();

  // Accessors throw primus::Error naming the key (and its source) when the key is unknown
  // (with the nearest known key) or the value is not of the asked type.
  bool has(const std::string& key) const;  // known and not null
  int64_t i(const std::string& key) const;
  double f(const std::string& key) const;  // ints read as floats too
  bool b(const std::string& key) const;
  std::string s(const std::string& key) const;  // throws if null
  std::optional<std::string> opt_s(const std::string& key) const;
  std::vector<std::string> list(const std::string& key) const;  // scalars -> 1 element, null -> empty
  std::vector<double> numbers(const std::string& key) const;    // number lists; null -> empty
  const nlohmann::json& value(const std::string& key) const;
  const Source& source(const std::string& key) const;
  const OptionSpec& spec(const std::string& key) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }

  // Sets one option, coerced to its schema type and range-checked (errors name `source`).
  // load_experiment() builds configs with it; call validate() after changing a config.
  void set(const std::string& key, const nlohmann::json& value, const Source& source,
           const std::string& text = "");

  std::string work_group, user_name, exp_name, workspace, module_kind, experiment_path;
  std::string framework = "megatron";
  std::string model_name;          // stem of the model file, e.g. "llama3.1_8B"
  std::string module_config_path;  // resolved paths of the module and model files
  std::string model_config_path;
  nlohmann::json platform;         // the experiment's optional `platform:` as written
  int world_size = 1;              // 0 before validate(): "the smallest world that fits"
  int data_parallel_size = 1;

  nlohmann::json to_json() const;  // for checkpoints; from_json() reads it back

 private:
  const Entry& entry(const std::string& key) const;
  std::map<std::string, Entry> entries_;
};

struct LoadOptions {
  std::vector<std::string> sets;  // "key=value", highest precedence
  int world_size = 1;             // 0: the smallest world that fits tp*pp*cp (and ep)
  std::string configs_dir;        // empty: find_configs_dir()
  EnvLookup env;                  // empty: the process environment
};

// Loads, merges and validates an experiment. Throws primus::Error with file:line (or
// "command line") and the fix on any problem.
Config load_experiment(const std::string& path, const std::vector<std::string>& sets, int world_size = 1);
Config load_experiment(const std::string& path, const LoadOptions& options);

// Checks types, ranges and consistency (parallel layout, batch sizes, heads, lr
// schedule ...), fills in derived values (data-parallel size, global_batch_size when
// null, kv_channels, ffn_hidden_size ...). Throws primus::Error listing every problem,
// each naming the keys and their sources.
void validate(Config& cfg);

Config from_json(const nlohmann::json&);  // round-trip of to_json

// moe_layer_freq: an integer k (every k-th layer is MoE) or Megatron's list expression of one
// 0/1 per layer ("([0]*3+[1]*58)"). Throws an Error naming the text when it is neither or
// the list's length is not num_layers.
struct MoeLayerFreq {
  int64_t every = 1;
  std::vector<int> pattern;  // empty: every k-th layer
};
MoeLayerFreq parse_moe_layer_freq(const std::string& text, int64_t num_layers);

// The architecture part, for the model code and model_stats.h. The vocabulary is padded
// to a multiple of make_vocab_size_divisible_by * tensor_model_parallel_size.
ModelConfig model_config(const Config&);

// The architecture of a zoo model (configs/models/megatron/<name>.yaml, name with or without
// .yaml) or a model file path, over the trainer's defaults (modules/megatron/pre_trainer.yaml)
// and `sets` ("key=value"), without an experiment: for tools that need only the shapes
// (`primus tune --model-config`, `primus bench`). Throws naming the file when none is found.
ModelConfig load_model(const std::string& name_or_path, const std::vector<std::string>& sets = {});

// The configs/ folder: $PRIMUS_CONFIGS_DIR, else <exe>/../../configs or <exe>/../configs,
// else the source tree's configs/. Throws when none exists.
std::string find_configs_dir(const EnvLookup& env);

}  // namespace primus::config

// load_experiment: an upstream-Primus experiment YAML -> a resolved, validated Config.
//
//   work_group / user_name / exp_name / workspace   (required; ${VAR:default} allowed)
//   platform                                       (optional, kept as written)
//   modules:
//     pre_trainer:            (or post_trainer:)
//       framework: megatron   (the only framework supported now)
//       config: pre_trainer.yaml   -> <configs>/modules/megatron/pre_trainer.yaml
//       model: llama3.1_8B.yaml    -> <configs>/models/megatron/llama3.1_8B.yaml
//       overrides: {key: value, ...}
#include <fmt/format.h>

#include <filesystem>

#include "config/config.h"
#include "config/describe.h"
#include "config/option_layer.h"
#include "config/yaml_values.h"
#include "core/error.h"
#include "core/strings.h"

namespace primus::config {

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kTopLevelKeys = {"work_group", "user_name", "exp_name", "workspace", "platform", "modules"};
const std::vector<std::string> kModuleKinds = {"pre_trainer", "post_trainer"};
const std::vector<std::string> kModuleKeys = {"framework", "config", "model", "overrides"};

// `budget`: the nodes this value may still expand to (aliases followed); exceeding it is an
// error naming the value, not an exhausted memory.
nlohmann::json yaml_to_json(const YAML::Node& node, const std::string& path, const EnvLookup& env, int64_t& budget) {
  if (--budget < 0)
    throw Error(fmt::format("{}: `platform` expands to more than {} values once its YAML aliases are followed (aliases "
                            "of aliases multiply: the \"billion laughs\" shape); write the values out",
                            source_of(path, node).str(), kMaxYamlNodes));
  if (node.IsMap()) {
    nlohmann::json out = nlohmann::json::object();
    for (const MapEntry& e : map_entries(node, path, "platform")) out[e.key] = yaml_to_json(e.value, path, env, budget);
    return out;
  }
  if (node.IsSequence()) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& item : node) out.push_back(yaml_to_json(item, path, env, budget));
    return out;
  }
  return read_value(node, source_of(path, node), env).json;
}

std::string read_name(const MapEntry& e, const EnvLookup& env) {
  const Value v = read_value(e.value, e.source, env);
  if (v.json.is_null() || v.json.is_array())
    throw Error(fmt::format("{}: '{}' must be a non-empty string, got {}", e.source.str(), e.key,
                            v.json.is_null() ? "null" : "a list"));
  return v.text.empty() ? format_value(v.json) : v.text;
}

std::vector<std::string> yaml_files_in(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(dir, ec))
    if (f.path().extension() == ".yaml") out.push_back(f.path().filename().string());
  return out;
}

// `name` as given in the experiment -> an existing file: absolute as is; else
// <configs>/<sub>/<framework>/<name>; else relative to the experiment file.
std::string resolve_preset(const std::string& name, const std::string& what, const fs::path& preset_dir,
                           const std::string& experiment_path, const Source& where) {
  if (fs::path(name).is_absolute()) {
    if (fs::exists(name)) return name;
    throw Error(fmt::format("{}: {} file '{}' does not exist", where.str(), what, name));
  }
  const fs::path in_configs = preset_dir / name;
  if (fs::exists(in_configs)) return in_configs.lexically_normal().string();
  const fs::path beside = fs::path(experiment_path).parent_path() / name;
  if (fs::exists(beside)) return beside.lexically_normal().string();
  throw Error(fmt::format("{}: {} file '{}' not found (looked for {} and {}){}", where.str(), what, name,
                          in_configs.lexically_normal().string(), beside.lexically_normal().string(),
                          suggest(name, yaml_files_in(preset_dir))));
}

void apply_layer(Config& cfg, const Layer& layer) {
  for (const Assignment& a : layer) cfg.set(a.key, a.value.json, a.source, a.value.text);
}

}  // namespace

Config load_experiment(const std::string& path, const std::vector<std::string>& sets, int world_size) {
  LoadOptions options;
  options.sets = sets;
  options.world_size = world_size;
  return load_experiment(path, options);
}

Config load_experiment(const std::string& path, const LoadOptions& options) {
  const EnvLookup env = options.env ? options.env : process_env();
  const YAML::Node root = load_yaml_file(path);
  if (!root.IsMap())
    throw Error(fmt::format("{}: an experiment file is a map with work_group, user_name, exp_name, workspace and "
                            "modules",
                            path));

  Config cfg;
  cfg.experiment_path = path;
  YAML::Node modules;
  Source modules_source;
  for (const MapEntry& e : map_entries(root, path, "the experiment")) {
    if (e.key == "work_group") {
      cfg.work_group = read_name(e, env);
    } else if (e.key == "user_name") {
      cfg.user_name = read_name(e, env);
    } else if (e.key == "exp_name") {
      cfg.exp_name = read_name(e, env);
    } else if (e.key == "workspace") {
      cfg.workspace = read_name(e, env);
    } else if (e.key == "platform") {
      int64_t budget = kMaxYamlNodes;
      cfg.platform = yaml_to_json(e.value, path, env, budget);
    } else if (e.key == "modules") {
      modules = e.value;
      modules_source = e.source;
    } else {
      const std::string hint = schema().find(e.key)
                                   ? fmt::format(": '{}' is a trainer option; put it under modules: pre_trainer: "
                                                 "overrides:",
                                                 e.key)
                                   : suggest(e.key, kTopLevelKeys);
      throw Error(fmt::format("{}: unknown experiment key '{}'{} (an experiment has {})", e.source.str(), e.key, hint,
                              "work_group, user_name, exp_name, workspace, platform, modules"));
    }
  }
  // `--set` may also replace the experiment's own names (e.g. --set exp_name=run2); the other
  // assignments are trainer options, applied last below.
  Layer option_sets;
  for (Assignment& a : parse_assignments(options.sets, env)) {
    std::string* name = a.key == "work_group"  ? &cfg.work_group
                        : a.key == "user_name" ? &cfg.user_name
                        : a.key == "exp_name"  ? &cfg.exp_name
                        : a.key == "workspace" ? &cfg.workspace
                                               : nullptr;
    if (!name) {
      option_sets.push_back(std::move(a));
      continue;
    }
    const Value& v = a.value;
    if (v.json.is_null() || v.json.is_array() || (v.json.is_string() && v.json.get<std::string>().empty()))
      throw Error(fmt::format("{}: --set {}= needs a non-empty name (e.g. --set {}=run2)", a.source.str(), a.key, a.key));
    *name = v.text.empty() ? format_value(v.json) : v.text;
  }
  struct Required {
    const char* key;
    const std::string* value;
    const char* example;
  };
  const Required required[] = {{"work_group", &cfg.work_group, "${PRIMUS_TEAM:amd}"},
                               {"user_name", &cfg.user_name, "${PRIMUS_USER:root}"},
                               {"exp_name", &cfg.exp_name, "${PRIMUS_EXP_NAME:my-experiment}"},
                               {"workspace", &cfg.workspace, "./output"}};
  for (const Required& r : required)
    if (r.value->empty())
      throw Error(fmt::format("{}: the experiment must set '{}' (e.g. `{}: {}`)", path, r.key, r.key, r.example));
  if (!modules)
    throw Error(fmt::format("{}: the experiment has no `modules:`; add modules: pre_trainer: {{framework: megatron, "
                            "config: pre_trainer.yaml, model: <model>.yaml}}",
                            path));

  // modules: exactly one of pre_trainer / post_trainer.
  const std::vector<MapEntry> kinds = map_entries(modules, path, "`modules`");
  if (kinds.empty()) throw Error(fmt::format("{}: `modules` is empty; add pre_trainer:", modules_source.str()));
  for (const MapEntry& k : kinds)
    if (std::find(kModuleKinds.begin(), kModuleKinds.end(), k.key) == kModuleKinds.end())
      throw Error(fmt::format("{}: unknown module '{}'{} (supported: pre_trainer, post_trainer)", k.source.str(), k.key,
                              suggest(k.key, kModuleKinds)));
  if (kinds.size() > 1)
    throw Error(fmt::format("{}: one module per experiment is supported; found {} and {}", kinds[1].source.str(),
                            kinds[0].key, kinds[1].key));
  const MapEntry& module = kinds[0];
  cfg.module_kind = module.key;

  std::string config_name, model_name;
  Source config_source, model_source, framework_source = module.source;
  YAML::Node overrides;
  bool have_framework = false;
  for (const MapEntry& e : map_entries(module.value, path, "`" + module.key + "`")) {
    if (e.key == "framework") {
      cfg.framework = read_name(e, env);
      framework_source = e.source;
      have_framework = true;
    } else if (e.key == "config") {
      config_name = read_name(e, env);
      config_source = e.source;
    } else if (e.key == "model") {
      model_name = read_name(e, env);
      model_source = e.source;
    } else if (e.key == "overrides") {
      overrides = e.value;
    } else {
      const std::string hint = schema().find(e.key)
                                   ? fmt::format(": '{}' is a trainer option; put it under `overrides:`", e.key)
                                   : suggest(e.key, kModuleKeys);
      throw Error(fmt::format("{}: unknown key '{}' in `{}`{} (a module has framework, config, model, overrides)",
                              e.source.str(), e.key, module.key, hint));
    }
  }
  if (!have_framework)
    throw Error(fmt::format("{}: `{}` must set `framework: megatron`", module.source.str(), module.key));
  if (cfg.framework != "megatron")
    throw Error(fmt::format("{}: framework '{}' is not supported in {}: only 'megatron' is supported now "
                            "(option names and presets follow Megatron-LM)",
                            framework_source.str(), cfg.framework, path));
  if (config_name.empty())
    throw Error(fmt::format("{}: `{}` must set `config:` (e.g. pre_trainer.yaml)", module.source.str(), module.key));
  if (model_name.empty())
    throw Error(fmt::format("{}: `{}` must set `model:` (e.g. llama3.1_8B.yaml)", module.source.str(), module.key));

  const fs::path configs = options.configs_dir.empty() ? fs::path(find_configs_dir(env)) : fs::path(options.configs_dir);
  cfg.module_config_path = resolve_preset(config_name, "module config", configs / "modules" / cfg.framework, path,
                                          config_source);
  cfg.model_config_path = resolve_preset(model_name, "model", configs / "models" / cfg.framework, path, model_source);
  // Relative to the working directory when under it: shorter sources in messages.
  cfg.module_config_path = display_path(cfg.module_config_path);
  cfg.model_config_path = display_path(cfg.model_config_path);
  cfg.model_name = fs::path(cfg.model_config_path).stem().string();

  // Lowest to highest precedence.
  apply_layer(cfg, load_option_file(cfg.module_config_path, env));
  apply_layer(cfg, load_option_file(cfg.model_config_path, env));
  if (overrides) apply_layer(cfg, read_option_map(overrides, path, "`overrides`", env));
  apply_layer(cfg, option_sets);

  cfg.world_size = options.world_size;
  validate(cfg);
  return cfg;
}

ModelConfig load_model(const std::string& name_or_path, const std::vector<std::string>& sets) {
  const EnvLookup env = process_env();
  const fs::path configs(find_configs_dir(env));
  const Source where{"the model name '" + name_or_path + "'", 0};
  const std::string module = resolve_preset("pre_trainer.yaml", "module config", configs / "modules" / "megatron", "",
                                            where);
  std::string model = name_or_path;
  if (!fs::exists(model) && fs::path(model).extension() != ".yaml") model += ".yaml";
  model = fs::exists(model) ? model : resolve_preset(model, "model", configs / "models" / "megatron", "", where);
  Config cfg;
  cfg.model_config_path = display_path(model);
  cfg.model_name = fs::path(model).stem().string();
  apply_layer(cfg, load_option_file(module, env));
  apply_layer(cfg, load_option_file(model, env));
  apply_layer(cfg, parse_assignments(sets, env));
  return model_config(cfg);
}

}  // namespace primus::config

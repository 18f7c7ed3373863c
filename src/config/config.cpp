// Config: typed accessors, set(), and the JSON round trip used by checkpoints.
#include "config/config.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "core/strings.h"

namespace primus::config {

namespace {

std::string kind_of(const nlohmann::json& v) {
  if (v.is_null()) return "null (unset)";
  if (v.is_boolean()) return "a bool";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an int";
  if (v.is_number_float()) return "a float";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  return "a map";
}

}  // namespace

Config::Config() {
  for (const OptionSpec& spec : schema().options())
    entries_[spec.key] = Entry{spec.default_value, Source{kSchemaDefault, 0}};
}

const Entry& Config::entry(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end())
    throw Error(fmt::format("config key '{}' is not in the schema{}", key, suggest(key, schema().keys())));
  return it->second;
}

bool Config::has(const std::string& key) const { return !entry(key).value.is_null(); }

int64_t Config::i(const std::string& key) const {
  const Entry& e = entry(key);
  if (!e.value.is_number_integer() && !e.value.is_number_unsigned())
    throw Error(fmt::format("config '{}' ({}) is {}, read as an int", key, e.source.str(), kind_of(e.value)));
  return e.value.get<int64_t>();
}

double Config::f(const std::string& key) const {
  const Entry& e = entry(key);
  if (!e.value.is_number())
    throw Error(fmt::format("config '{}' ({}) is {}, read as a float", key, e.source.str(), kind_of(e.value)));
  return e.value.get<double>();
}

bool Config::b(const std::string& key) const {
  const Entry& e = entry(key);
  if (!e.value.is_boolean())
    throw Error(fmt::format("config '{}' ({}) is {}, read as a bool", key, e.source.str(), kind_of(e.value)));
  return e.value.get<bool>();
}

std::string Config::s(const std::string& key) const {
  const Entry& e = entry(key);
  if (!e.value.is_string())
    throw Error(fmt::format("config '{}' ({}) is {}, read as a string", key, e.source.str(), kind_of(e.value)));
  return e.value.get<std::string>();
}

std::optional<std::string> Config::opt_s(const std::string& key) const {
  if (entry(key).value.is_null()) return std::nullopt;
  return s(key);
}

std::vector<std::string> Config::list(const std::string& key) const {
  const Entry& e = entry(key);
  std::vector<std::string> out;
  if (e.value.is_null()) return out;
  if (e.value.is_array()) {
    for (const auto& item : e.value) out.push_back(item.is_string() ? item.get<std::string>() : format_value(item));
    return out;
  }
  out.push_back(e.value.is_string() ? e.value.get<std::string>() : format_value(e.value));
  return out;
}

std::vector<double> Config::numbers(const std::string& key) const {
  const Entry& e = entry(key);
  std::vector<double> out;
  if (e.value.is_null()) return out;
  if (e.value.is_number()) return {e.value.get<double>()};
  if (!e.value.is_array())
    throw Error(fmt::format("config '{}' ({}) is {}, read as a list of numbers", key, e.source.str(), kind_of(e.value)));
  for (const auto& item : e.value) {
    if (!item.is_number())
      throw Error(fmt::format("config '{}' ({}) holds {}, read as a list of numbers", key, e.source.str(),
                              kind_of(item)));
    out.push_back(item.get<double>());
  }
  return out;
}

const nlohmann::json& Config::value(const std::string& key) const { return entry(key).value; }
const Source& Config::source(const std::string& key) const { return entry(key).source; }
const OptionSpec& Config::spec(const std::string& key) const { return schema().at(key, Source{"config", 0}); }

void Config::set(const std::string& key, const nlohmann::json& value, const Source& source, const std::string& text) {
  const OptionSpec& spec = schema().at(key, source);
  entries_[key] = Entry{schema().coerce(spec, value, text, source), source};
}

nlohmann::json Config::to_json() const {
  nlohmann::json j;
  j["work_group"] = work_group;
  j["user_name"] = user_name;
  j["exp_name"] = exp_name;
  j["workspace"] = workspace;
  j["module_kind"] = module_kind;
  j["framework"] = framework;
  j["model_name"] = model_name;
  j["experiment_path"] = experiment_path;
  j["module_config_path"] = module_config_path;
  j["model_config_path"] = model_config_path;
  j["platform"] = platform;
  j["world_size"] = world_size;
  j["data_parallel_size"] = data_parallel_size;
  nlohmann::json options = nlohmann::json::object(), sources = nlohmann::json::object();
  for (const auto& [key, e] : entries_) {
    options[key] = e.value;
    sources[key] = {{"file", e.source.file}, {"line", e.source.line}};
  }
  j["options"] = std::move(options);
  j["sources"] = std::move(sources);
  return j;
}

Config from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("options") || !j["options"].is_object())
    throw Error("config JSON: expected an object with an \"options\" map (written by Config::to_json)");
  auto str = [&](const char* k) { return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string(); };
  Config c;
  c.work_group = str("work_group");
  c.user_name = str("user_name");
  c.exp_name = str("exp_name");
  c.workspace = str("workspace");
  c.module_kind = str("module_kind");
  if (!str("framework").empty()) c.framework = str("framework");
  c.model_name = str("model_name");
  c.experiment_path = str("experiment_path");
  c.module_config_path = str("module_config_path");
  c.model_config_path = str("model_config_path");
  c.platform = j.value("platform", nlohmann::json());
  c.world_size = j.value("world_size", 1);
  c.data_parallel_size = j.value("data_parallel_size", 1);
  const nlohmann::json sources = j.value("sources", nlohmann::json::object());
  // Keys missing from an older JSON keep their schema default; unknown keys are errors.
  for (const auto& [key, value] : j["options"].items()) {
    Source src{"config JSON", 0};
    if (sources.contains(key) && sources[key].is_object())
      src = Source{sources[key].value("file", std::string("config JSON")), sources[key].value("line", 0)};
    if (!schema().find(key))
      throw Error(fmt::format("config JSON: unknown key '{}' (from {}){}", key, src.str(),
                              suggest(key, schema().keys())));
    c.set(key, value, src);
  }
  return c;
}

}  // namespace primus::config

#include "config/option_layer.h"

#include <fmt/format.h>

#include <filesystem>

#include "config/schema.h"
#include "core/error.h"
#include "core/strings.h"

namespace primus::config {

namespace fs = std::filesystem;

namespace {

std::string chain_text(const std::vector<std::string>& stack, const std::string& last) {
  std::string out;
  for (const auto& p : stack) out += p + " -> ";
  return out + last;
}

void load_recursive(const std::string& path, const EnvLookup& env, std::vector<std::string>& stack, Layer& out) {
  const std::string canon = fs::weakly_canonical(fs::path(path)).string();
  for (const auto& s : stack)
    if (fs::weakly_canonical(fs::path(s)).string() == canon)
      throw Error(fmt::format("{}: `extends` cycle: {}", path, chain_text(stack, path)));
  const YAML::Node root = load_yaml_file(path);
  stack.push_back(path);

  Layer own;
  for (const MapEntry& e : map_entries(root, path, "an option file")) {
    if (e.key != "extends") {
      own.push_back(Assignment{e.key, read_value(e.value, e.source, env), e.source});
      continue;
    }
    std::vector<YAML::Node> parents;
    if (e.value.IsScalar()) {
      parents.push_back(e.value);
    } else if (e.value.IsSequence()) {
      for (const auto& p : e.value) parents.push_back(p);
    } else {
      throw Error(fmt::format("{}: `extends` must be a file name or a list of file names", e.source.str()));
    }
    for (const YAML::Node& parent : parents) {
      const Source where = source_of(path, parent);
      if (!parent.IsScalar())
        throw Error(fmt::format("{}: `extends` entries must be file names", where.str()));
      const std::string name = expand_env(parent.Scalar(), where, env);
      const fs::path parent_path = fs::path(name).is_absolute() ? fs::path(name) : fs::path(path).parent_path() / name;
      if (!fs::exists(parent_path)) {
        std::vector<std::string> siblings;
        std::error_code ec;
        for (const auto& f : fs::directory_iterator(fs::path(path).parent_path(), ec))
          siblings.push_back(f.path().filename().string());
        throw Error(fmt::format("{}: `extends` names '{}', which does not exist ({}){}", where.str(), name,
                                parent_path.lexically_normal().string(), suggest(name, siblings)));
      }
      load_recursive(parent_path.lexically_normal().string(), env, stack, out);
    }
  }
  out.insert(out.end(), own.begin(), own.end());
  stack.pop_back();
}

}  // namespace

Layer load_option_file(const std::string& path, const EnvLookup& env) {
  Layer out;
  std::vector<std::string> stack;
  load_recursive(path, env, stack, out);
  return out;
}

Layer read_option_map(const YAML::Node& map, const std::string& path, const std::string& what, const EnvLookup& env) {
  Layer out;
  for (const MapEntry& e : map_entries(map, path, what))
    out.push_back(Assignment{e.key, read_value(e.value, e.source, env), e.source});
  return out;
}

Layer parse_assignments(const std::vector<std::string>& sets, const EnvLookup& env) {
  Layer out;
  for (const std::string& set : sets) {
    const size_t eq = set.find('=');
    if (eq == std::string::npos || trim(set.substr(0, eq)).empty())
      throw Error(fmt::format("command line: '{}' is not an assignment: write key=value (e.g. --set lr=3e-4)", set));
    std::string key = trim(set.substr(0, eq));
    // Megatron-style spelling on the command line: --set tensor-model-parallel-size=2.
    for (char& c : key)
      if (c == '-') c = '_';
    const std::string text = set.substr(eq + 1);
    const Source src{kCommandLine, 0};
    Value value;
    YAML::Node node;
    bool parsed = true;
    try {
      node = YAML::Load(text);
    } catch (const YAML::Exception&) {
      parsed = false;
    }
    if (parsed && !node.IsMap()) {
      value = read_value(node, src, env);
    } else {
      // Not a YAML value (e.g. "a: b"): take the text verbatim.
      const std::string expanded = expand_env(text, src, env);
      value = Value{expanded, expanded};
    }
    out.push_back(Assignment{std::move(key), std::move(value), src});
  }
  return out;
}

}  // namespace primus::config

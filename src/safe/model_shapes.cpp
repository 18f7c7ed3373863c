#include "safe/model_shapes.h"

#include <algorithm>

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <map>

#include "core/error.h"
#include <fmt/ranges.h>

namespace primus::safe {

namespace {

namespace fs = std::filesystem;

// Keys of the chain, child over parent.
void merge_chain(const fs::path& file, std::map<std::string, YAML::Node>& out, int depth) {
  PRIMUS_CHECK(depth < 16, "model config '{}': `extends` chain deeper than 16 (a cycle?)", file.string());
  PRIMUS_CHECK(fs::exists(file), "model config '{}' not found", file.string());
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::Exception& e) {
    fail("model config '{}': {}", file.string(), e.what());
  }
  if (root["extends"]) {
    for (const auto& parent : root["extends"]) merge_chain(file.parent_path() / parent.as<std::string>(), out, depth + 1);
  }
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (key != "extends") out[key] = kv.second;
  }
}

int64_t get_int(const std::map<std::string, YAML::Node>& m, const std::string& key, const std::string& file,
                int64_t fallback = -1) {
  auto it = m.find(key);
  if (it == m.end() || it->second.IsNull()) {
    PRIMUS_CHECK(fallback >= 0, "model config '{}': key '{}' is missing (needed for the GEMM shapes)", file, key);
    return fallback;
  }
  try {
    return it->second.as<int64_t>();
  } catch (const YAML::Exception&) {
    fail("model config '{}': key '{}' must be an integer", file, key);
  }
}

}  // namespace

std::optional<DenseShape> builtin_shape(const std::string& name) {
  // name: (layers, hidden, heads, kv_heads, ffn, vocab), head_dim = hidden / heads, untied head.
  if (name == "llama-tiny") return DenseShape{name, 12, 768, 12, 4, 64, 2048, 32000, true};
  if (name == "llama3.2-1B") return DenseShape{name, 16, 2048, 32, 8, 64, 8192, 128256, true};
  if (name == "llama3.2-3B") return DenseShape{name, 28, 3072, 24, 8, 128, 8192, 128256, true};
  return std::nullopt;
}

std::vector<std::string> builtin_shape_names() { return {"llama-tiny", "llama3.2-1B", "llama3.2-3B"}; }

DenseShape shape_from_model_yaml(const std::string& name_or_path) {
  fs::path file(name_or_path);
  if (!fs::exists(file)) {
    const fs::path zoo = fs::path(PRIMUS_SOURCE_DIR) / "configs" / "models" / "megatron";
    fs::path cand = zoo / (name_or_path + ".yaml");
    if (!fs::exists(cand)) cand = zoo / name_or_path;
    PRIMUS_CHECK(fs::exists(cand),
                 "model '{}' is neither a file nor a zoo model under {} (nor a built-in shape: {})", name_or_path,
                 zoo.string(), fmt::join(builtin_shape_names(), ", "));
    file = cand;
  }
  std::map<std::string, YAML::Node> m;
  merge_chain(file, m, 0);
  const std::string f = file.string();
  DenseShape s;
  s.name = file.stem().string();
  s.layers = get_int(m, "num_layers", f);
  s.hidden = get_int(m, "hidden_size", f);
  s.heads = get_int(m, "num_attention_heads", f);
  const bool gqa = m.count("group_query_attention") && m["group_query_attention"].as<bool>();
  s.kv_heads = gqa ? get_int(m, "num_query_groups", f, s.heads) : s.heads;
  s.head_dim = get_int(m, "kv_channels", f, s.hidden / s.heads);
  s.ffn = get_int(m, "ffn_hidden_size", f, 4 * s.hidden);
  const int64_t vocab = get_int(m, "vocab_size", f, get_int(m, "padded_vocab_size", f, 32000));
  const int64_t div = get_int(m, "make_vocab_size_divisible_by", f, 128);
  s.vocab = (vocab + div - 1) / div * div;
  s.untied_head = !m.count("untie_embeddings_and_output_weights") || m["untie_embeddings_and_output_weights"].as<bool>();
  return s;
}

DenseShape resolve_shape(const std::string& spec) {
  if (auto b = builtin_shape(spec)) return *b;
  return shape_from_model_yaml(spec);
}

DenseShape shape_from_flags(const ShapeFlags& f, const std::string& default_model) {
  const bool explicit_sizes = f.layers || f.hidden || f.heads;
  DenseShape s;
  if (!f.model.empty()) s = resolve_shape(f.model);
  else if (!explicit_sizes) s = resolve_shape(default_model);
  else s.name = "custom";
  if (f.layers) s.layers = f.layers;
  if (f.hidden) s.hidden = f.hidden;
  if (f.heads) s.heads = f.heads;
  if (f.kv_heads) s.kv_heads = f.kv_heads;
  if (f.ffn) s.ffn = f.ffn;
  if (f.vocab) s.vocab = f.vocab;
  if (f.head_dim) s.head_dim = f.head_dim;
  if (s.kv_heads == 0) s.kv_heads = s.heads;
  if (s.head_dim == 0 && s.heads > 0) s.head_dim = s.hidden / s.heads;
  if (s.ffn == 0) s.ffn = 4 * s.hidden;
  if (s.vocab == 0) s.vocab = 32000;
  PRIMUS_CHECK(s.layers > 0 && s.hidden > 0 && s.heads > 0,
               "model shape: need --model-config (or --shape) or all of --layers, --hidden, --heads; got layers={} "
               "hidden={} heads={}",
               s.layers, s.hidden, s.heads);
  PRIMUS_CHECK(s.heads % s.kv_heads == 0, "model shape: {} heads is not a multiple of {} kv heads", s.heads,
               s.kv_heads);
  return s;
}

std::vector<GemmProblem> training_gemms(const DenseShape& s, int64_t tokens, int64_t logits_chunk_rows) {
  PRIMUS_CHECK(tokens > 0 && logits_chunk_rows > 0, "training_gemms: tokens {} and logits_chunk_rows {} must be > 0",
               tokens, logits_chunk_rows);
  std::vector<GemmProblem> out;
  auto fwd_dgrad = [&](const std::string& name, int64_t n_out, int64_t n_in, int64_t rows, int64_t count,
                       bool residual_in_epilogue) {
    out.push_back({name + " fwd", rows, n_out, n_in, false, true, DType::BF16, DType::BF16, residual_in_epilogue, count});
    out.push_back({name + " dgrad", rows, n_in, n_out, false, false, DType::BF16, DType::BF16, false, count});
  };
  auto wgrad = [&](const std::string& label, int64_t n_out, int64_t n_in, int64_t rows, int64_t count, bool accumulate) {
    out.push_back({label, n_out, n_in, rows, true, false, DType::BF16, DType::F32, accumulate, count});
  };
  // Decoder layers: the weight gradients are written (the first micro-batch's keys).
  auto layer_linear = [&](const std::string& name, int64_t n_out, int64_t n_in, bool residual_in_epilogue) {
    fwd_dgrad(name, n_out, n_in, tokens, s.layers, residual_in_epilogue);
    wgrad(name + " wgrad", n_out, n_in, tokens, s.layers, false);
  };
  layer_linear("qkv", (s.heads + 2 * s.kv_heads) * s.head_dim, s.hidden, false);
  layer_linear("attn_out", s.hidden, s.heads * s.head_dim, true);
  layer_linear("gate_up", 2 * s.ffn, s.hidden, false);
  layer_linear("down", s.hidden, s.ffn, true);
  // The output layer in chunks of `chunk` rows (a shorter last one when they do not divide):
  // an untied head's weight gradient is written by the first chunk and accumulated after it;
  // a tied one always adds into the embedding's gradient.
  const int64_t chunk = std::min(tokens, logits_chunk_rows);
  const int64_t full = tokens / chunk, rest = tokens % chunk;
  const int64_t written = s.untied_head ? 1 : 0;
  fwd_dgrad("lm_head", s.vocab, s.hidden, chunk, full, false);
  if (written > 0) wgrad("lm_head wgrad (write)", s.vocab, s.hidden, chunk, written, false);
  if (full > written) wgrad("lm_head wgrad (accumulate)", s.vocab, s.hidden, chunk, full - written, true);
  if (rest > 0) {
    fwd_dgrad("lm_head", s.vocab, s.hidden, rest, 1, false);
    wgrad("lm_head wgrad (accumulate)", s.vocab, s.hidden, rest, 1, true);
  }
  return out;
}

}  // namespace primus::safe

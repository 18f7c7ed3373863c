#include "convert/hf_tokenizer_info.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "convert/hf_files.h"
#include "core/error.h"

namespace primus::convert {

namespace fs = std::filesystem;

namespace {

// tokenizer_config.json writes special tokens as "text" or {"content": "text", ...}.
std::string special_token_text(const nlohmann::json& cfg, const char* key) {
  if (!cfg.contains(key)) return "";
  const auto& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

HfTokenizerInfo inspect_hf_tokenizer(const std::string& path) {
  std::error_code ec;
  fs::path file = path;
  if (fs::is_directory(file, ec)) file /= "tokenizer.json";
  PRIMUS_CHECK(fs::is_regular_file(file, ec), "tokenizer '{}' not found (--tokenizer-model takes an HF "
               "tokenizer.json or the directory holding it)", file.string());
  PRIMUS_CHECK(file.extension() != ".model", "tokenizer '{}' is a sentencepiece model; the export needs the HF "
               "tokenizer.json (HF model repositories ship one beside tokenizer.model)", file.string());
  HfTokenizerInfo info;
  info.tokenizer_json = file.string();
  const nlohmann::json tok = read_json_file(info.tokenizer_json, "an HF tokenizer.json");
  PRIMUS_CHECK(tok.is_object() && tok.contains("model") && tok["model"].is_object() &&
                   tok["model"].contains("vocab"),
               "{}: no model.vocab; not an HF tokenizers tokenizer.json", info.tokenizer_json);

  std::map<std::string, int64_t> ids;  // token text -> id
  int64_t max_id = -1;
  const auto& vocab = tok["model"]["vocab"];
  if (vocab.is_object()) {
    for (const auto& [text, id] : vocab.items()) {
      PRIMUS_CHECK(id.is_number_integer(), "{}: model.vocab['{}'] is not an id", info.tokenizer_json, text);
      ids[text] = id.get<int64_t>();
      max_id = std::max(max_id, id.get<int64_t>());
    }
  } else if (vocab.is_array()) {  // Unigram: [[piece, score], ...], the index is the id
    for (size_t i = 0; i < vocab.size(); ++i) {
      if (vocab[i].is_array() && !vocab[i].empty() && vocab[i][0].is_string())
        ids[vocab[i][0].get<std::string>()] = static_cast<int64_t>(i);
    }
    max_id = static_cast<int64_t>(vocab.size()) - 1;
  } else {
    fail("{}: model.vocab is neither a map nor a list", info.tokenizer_json);
  }
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const auto& t : tok["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t.contains("content")) continue;
      const int64_t id = t["id"].get<int64_t>();
      ids[t["content"].get<std::string>()] = id;
      max_id = std::max(max_id, id);
    }
  }
  PRIMUS_CHECK(max_id >= 0, "{}: the vocabulary is empty", info.tokenizer_json);
  info.vocab_size = max_id + 1;

  std::string bos, eos;
  for (const char* sibling : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path p = file.parent_path() / sibling;
    if (!fs::is_regular_file(p, ec)) continue;
    info.siblings.push_back(p.string());
    const nlohmann::json cfg = read_json_file(p.string(), "the tokenizer's settings");
    if (bos.empty()) bos = special_token_text(cfg, "bos_token");
    if (eos.empty()) eos = special_token_text(cfg, "eos_token");
  }
  auto first_known = [&](std::initializer_list<const char*> names) -> std::string {
    for (const char* n : names)
      if (ids.count(n)) return n;
    return "";
  };
  if (bos.empty() || !ids.count(bos)) bos = first_known({"<|begin_of_text|>", "<s>", "<|startoftext|>"});
  if (eos.empty() || !ids.count(eos)) eos = first_known({"<|end_of_text|>", "</s>", "<|endoftext|>"});
  if (!bos.empty()) {
    info.bos_token = bos;
    info.bos_token_id = ids[bos];
  }
  if (!eos.empty()) {
    info.eos_token = eos;
    info.eos_token_id = ids[eos];
  }
  return info;
}

}  // namespace primus::convert

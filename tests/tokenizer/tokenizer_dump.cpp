// Encodes documents with a Primus tokenizer and prints one line of ids per document, for
// the parity test (parity.js) to compare with HuggingFace tokenizers.
//
//   tokenizer_dump TYPE MODEL MODE[+bos] PATH...      MODE: file | lines | jsonl | decode-lines
//     file   each PATH is one document (raw bytes)
//     lines  each line of each PATH ('\n' removed) is one document
//     jsonl  the "text" field of each line of each PATH is one document
//     decode-lines  each line holds ids separated by spaces: print the decoded text as JSON
//   +bos: apply the tokenizer's template of special tokens (HF addSpecialTokens).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMUS_CHECK(in.good(), "cannot open {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void print_ids(const std::vector<int32_t>& ids, std::string& buf) {
  buf.clear();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) buf.push_back(' ');
    buf += std::to_string(ids[i]);
  }
  buf.push_back('\n');
  std::fwrite(buf.data(), 1, buf.size(), stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: tokenizer_dump TYPE MODEL MODE[+bos] PATH...\n");
    return 2;
  }
  try {
    auto tok = primus::data::make_tokenizer(argv[1], argv[2]);
    std::string mode = argv[3];
    auto special = primus::data::SpecialTokens::kNone;
    if (mode.size() > 4 && mode.substr(mode.size() - 4) == "+bos") {
      special = primus::data::SpecialTokens::kAdd;
      mode.resize(mode.size() - 4);
    }
    std::string buf;
    for (int a = 4; a < argc; ++a) {
      const std::string data = read_all(argv[a]);
      if (mode == "file") {
        print_ids(tok->encode(data, special), buf);
        continue;
      }
      size_t pos = 0;
      while (pos < data.size()) {
        size_t nl = data.find('\n', pos);
        if (nl == std::string::npos) nl = data.size();
        const std::string_view line(data.data() + pos, nl - pos);
        if (mode == "lines") {
          print_ids(tok->encode(line, special), buf);
        } else if (mode == "jsonl") {
          const auto j = nlohmann::json::parse(line);
          print_ids(tok->encode(j.at("text").get<std::string>(), special), buf);
        } else if (mode == "decode-lines") {
          std::vector<int32_t> ids;
          std::istringstream is{std::string(line)};
          for (int32_t id; is >> id;) ids.push_back(id);
          const std::string text = tok->decode(ids);
          std::printf("%s\n", nlohmann::json(text).dump().c_str());
        } else {
          std::fprintf(stderr, "tokenizer_dump: unknown mode '%s'\n", mode.c_str());
          return 2;
        }
        pos = nl + 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}

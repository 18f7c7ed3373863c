#include "ops/cuda/gemm_tuning.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace primus::cuda {

namespace {

using nlohmann::json;

json key_json(const GemmKey& k) {
  return json{{"m", k.m},
              {"n", k.n},
              {"k", k.k},
              {"ta", k.ta},
              {"tb", k.tb},
              {"in", std::string(dtype_name(k.in_dtype))},
              {"out", std::string(dtype_name(k.out_dtype))},
              {"accumulate", k.accumulate},
              {"align", k.align}};
}

GemmKey key_from(const json& j, const std::string& where) {
  try {
    GemmKey k;
    k.m = j.at("m").get<int64_t>();
    k.n = j.at("n").get<int64_t>();
    k.k = j.at("k").get<int64_t>();
    k.ta = j.at("ta").get<bool>();
    k.tb = j.at("tb").get<bool>();
    k.in_dtype = gemm_dtype_from_name(j.at("in").get<std::string>(), where);
    k.out_dtype = gemm_dtype_from_name(j.at("out").get<std::string>(), where);
    k.accumulate = j.value("accumulate", false);
    k.align = j.value("align", 256);
    PRIMUS_CHECK(k.m > 0 && k.n > 0 && k.k > 0, "{}: GEMM sizes must be positive, got m={} n={} k={}", where, k.m,
                 k.n, k.k);
    return k;
  } catch (const json::exception& e) {
    fail("{}: not a GEMM shape ({}); expected keys m, n, k, ta, tb, in, out[, accumulate, align]", where, e.what());
  }
}

void make_parent(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
}

}  // namespace

DType gemm_dtype_from_name(const std::string& name, const std::string& where) {
  if (name == "bf16") return DType::BF16;
  if (name == "fp16") return DType::F16;
  if (name == "fp32") return DType::F32;
  fail("{}: dtype '{}' is not a GEMM dtype (expected bf16, fp16 or fp32)", where, name);
}

std::string key_to_json_line(const GemmKey& key) { return key_json(key).dump(); }

GemmKey key_from_json_line(const std::string& line, const std::string& where) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON ({})", where, e.what());
  }
  return key_from(j, where);
}

TuningTable read_tuning_table(const std::string& path) {
  std::ifstream in(path);
  PRIMUS_CHECK(in.good(),
               "GEMM tuning table '{}' not found. Stage 3 (PRIMUS_GEMM_TUNING_STAGE=3) needs it: run a short "
               "training with PRIMUS_GEMM_TUNING_STAGE=1 to log the shapes, then `primus tune` (stage 2) to "
               "write the table, or point PRIMUS_GEMM_TUNING_RESULT at an existing one.",
               path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("GEMM tuning table '{}': invalid JSON ({})", path, e.what());
  }
  PRIMUS_CHECK(j.value("format", "") == "primus-gemm-tuning-v1",
               "GEMM tuning table '{}': format '{}', expected 'primus-gemm-tuning-v1'", path,
               j.value("format", "<missing>"));
  TuningTable t;
  t.device = j.value("device", "");
  t.cublaslt_version = j.value("cublaslt_version", uint64_t{0});
  const json& entries = j.at("entries");
  for (size_t i = 0; i < entries.size(); ++i) {
    const json& e = entries[i];
    const std::string where = path + " entry " + std::to_string(i);
    TuningTableEntry te;
    te.key = key_from(e, where);
    const auto algo = e.at("algo").get<std::vector<uint64_t>>();
    PRIMUS_CHECK(algo.size() == 8, "{}: 'algo' has {} words, expected 8", where, algo.size());
    for (int w = 0; w < 8; ++w) te.chosen.algo[w] = algo[static_cast<size_t>(w)];
    te.chosen.algo_id = e.value("algo_id", -1);
    te.chosen.tile = e.value("tile", -1);
    te.chosen.stages = e.value("stages", -1);
    te.chosen.splitk = e.value("splitk", -1);
    te.chosen.index = e.value("heuristic_index", 0);
    te.chosen.time_us = e.value("time_us", 0.0);
    te.heuristic_us = e.value("heuristic_us", 0.0);
    te.candidates_timed = e.value("candidates_timed", 0);
    t.entries.push_back(te);
  }
  return t;
}

void write_tuning_table(const std::string& path, const TuningTable& table) {
  json entries = json::array();
  for (const auto& te : table.entries) {
    json e = key_json(te.key);
    e["algo"] = std::vector<uint64_t>(te.chosen.algo, te.chosen.algo + 8);
    e["algo_id"] = te.chosen.algo_id;
    e["tile"] = te.chosen.tile;
    e["stages"] = te.chosen.stages;
    e["splitk"] = te.chosen.splitk;
    e["heuristic_index"] = te.chosen.index;
    e["time_us"] = te.chosen.time_us;
    e["heuristic_us"] = te.heuristic_us;
    e["speedup"] = te.chosen.time_us > 0 ? te.heuristic_us / te.chosen.time_us : 0.0;
    e["tflops"] = te.chosen.time_us > 0 ? te.key.flops() / (te.chosen.time_us * 1e6) : 0.0;
    e["candidates_timed"] = te.candidates_timed;
    entries.push_back(std::move(e));
  }
  json j{{"format", "primus-gemm-tuning-v1"},
         {"device", table.device},
         {"cublaslt_version", table.cublaslt_version},
         {"entries", std::move(entries)}};
  make_parent(path);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    PRIMUS_CHECK(out.good(), "cannot write GEMM tuning table '{}'", tmp);
    out << j.dump(1) << "\n";
  }
  std::filesystem::rename(tmp, path);
}

std::vector<GemmKey> read_shapes_file(const std::string& path) {
  std::ifstream in(path);
  PRIMUS_CHECK(in.good(),
               "GEMM shapes file '{}' not found: run a short training with PRIMUS_GEMM_TUNING_STAGE=1 "
               "(it logs every GEMM shape there), or pass --shapes",
               path);
  std::vector<GemmKey> keys;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    GemmKey k = key_from_json_line(line, path + ":" + std::to_string(lineno));
    bool dup = false;
    for (const auto& o : keys) dup |= (o == k);
    if (!dup) keys.push_back(k);
  }
  return keys;
}

void append_shape(const std::string& path, const GemmKey& key) {
  make_parent(path);
  std::ofstream out(path, std::ios::app);
  PRIMUS_CHECK(out.good(), "cannot append to GEMM shapes file '{}'", path);
  out << key_to_json_line(key) << "\n";
}

}  // namespace primus::cuda

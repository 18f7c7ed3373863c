// Files of the GEMM tuning flow (see gemm.h for the stages):
//   shapes file (stage 1 writes, stage 2 reads): JSON lines, one GemmKey per line,
//     {"m":16384,"n":6144,"k":2048,"ta":false,"tb":true,"in":"bf16","out":"bf16","accumulate":false,"align":256}
//   table (stage 2 writes, stage 3 reads): one JSON object
//     {"format":"primus-gemm-tuning-v1","device":"NVIDIA H100 80GB HBM3","cublaslt_version":130100,
//      "entries":[{<key fields>,"algo":[8 x uint64],"algo_id":..,"tile":..,"stages":..,"splitk":..,
//                  "time_us":..,"heuristic_us":..,"speedup":..,"candidates_timed":..}, ...]}
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/cuda/gemm.h"

namespace primus::cuda {

struct TuningTableEntry {
  GemmKey key;
  GemmCandidate chosen;
  double heuristic_us = 0;
  int candidates_timed = 0;
};

struct TuningTable {
  std::string device;
  uint64_t cublaslt_version = 0;
  std::vector<TuningTableEntry> entries;
};

// Throws primus::Error naming the file when it is missing or malformed.
TuningTable read_tuning_table(const std::string& path);
void write_tuning_table(const std::string& path, const TuningTable& table);  // creates parent dirs

std::vector<GemmKey> read_shapes_file(const std::string& path);  // deduplicated, file order
void append_shape(const std::string& path, const GemmKey& key);  // creates parent dirs

std::string key_to_json_line(const GemmKey& key);
GemmKey key_from_json_line(const std::string& line, const std::string& where);
DType gemm_dtype_from_name(const std::string& name, const std::string& where);  // "bf16", "fp16", "fp32"

}  // namespace primus::cuda

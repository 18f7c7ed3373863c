// `primus tune`: stage 2 of the GEMM tuning flow (see ops/cuda/gemm.h). Times the cuBLASLt
// candidates of every shape (from a stage-1 shapes file, or the training GEMMs of a model),
// writes the table stage 3 loads, and reports the heuristic-vs-tuned speedup.
#pragma once

#include <string>
#include <vector>

#include "safe/model_shapes.h"
#include "safe/report_table.h"

namespace primus::safe {

struct TuneOptions {
  std::string shapes_file;  // stage-1 JSONL; empty = PRIMUS_GEMM_TUNING_FILE or output/gemm_shapes.jsonl
  std::vector<GemmProblem> problems;  // used instead of the shapes file when not empty
  std::string table_file;   // empty = PRIMUS_GEMM_TUNING_RESULT or output/gemm_tuning.json
  int candidates = 32, warmup = 5, iters = 20;
  TableFormat format = TableFormat::Markdown;
};

int run_gemm_tuning(const TuneOptions& o);

}  // namespace primus::safe

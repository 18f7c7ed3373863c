// `primus tune`: GEMM tuning stage 2 (src/safe/gemm_tune.h). Stage 1 and 3 are environment
// switches of a training run: PRIMUS_GEMM_TUNING_STAGE=1 logs shapes, =3 uses the table.
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "safe/gemm_tune.h"

namespace primus::cli {

int cmd_tune(int argc, char** argv) {
  CLI::App app{"GEMM tuning, stage 2: time the cuBLASLt candidates of every GEMM shape and write the table that "
               "PRIMUS_GEMM_TUNING_STAGE=3 runs use.\n"
               "  stage 1: PRIMUS_GEMM_TUNING_STAGE=1 primus train ...   (logs shapes to PRIMUS_GEMM_TUNING_FILE,\n"
               "           default output/gemm_shapes.jsonl)\n"
               "  stage 2: primus tune                                   (or --model-config NAME for a model's GEMMs)\n"
               "  stage 3: PRIMUS_GEMM_TUNING_STAGE=3 primus train ...   (table from PRIMUS_GEMM_TUNING_RESULT,\n"
               "           default output/gemm_tuning.json; a missing table is an error)\n"
               "PRIMUS_HIPBLASLT_TUNING_STAGE is accepted as an alias of PRIMUS_GEMM_TUNING_STAGE.",
               "tune"};
  safe::TuneOptions o;
  std::string output = "md", model;
  int64_t seq = 2048, mbs = 1;
  app.add_option("--shapes", o.shapes_file, "stage-1 shapes file (JSONL)");
  app.add_option("--table,--output-table", o.table_file, "tuning table to write (JSON)");
  app.add_option("--model-config,--shape", model,
                 "tune a model's training GEMMs instead of a shapes file (llama-tiny | llama3.2-1B | llama3.2-3B | "
                 "zoo name | yaml)");
  app.add_option("--seq", seq, "sequence length (with --model-config)")->capture_default_str();
  app.add_option("--mbs", mbs, "micro-batch size (with --model-config)")->capture_default_str();
  app.add_option("--candidates", o.candidates, "cuBLASLt heuristic candidates per shape")->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed runs per candidate")->capture_default_str();
  app.add_option("--iters", o.iters, "timed runs per candidate (median)")->capture_default_str();
  app.add_option("--output", output, "report format: md | csv | jsonl")->capture_default_str();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  o.format = safe::parse_table_format(output);
  if (!model.empty()) o.problems = safe::training_gemms(safe::resolve_model(model), seq * mbs);
  return safe::run_gemm_tuning(o);
}

}  // namespace primus::cli

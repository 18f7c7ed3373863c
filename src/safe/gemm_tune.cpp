#include "safe/gemm_tune.h"

#include <fmt/format.h>

#include "core/error.h"
#include "safe/gpu_bench.h"

#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/gemm_tuning.h"
#endif

namespace primus::safe {

#ifndef PRIMUS_WITH_CUDA

int run_gemm_tuning(const TuneOptions&) { return gpu_ready("tune") ? 0 : kNoGpuExitCode; }

#else

int run_gemm_tuning(const TuneOptions& o) {
  if (!gpu_ready("tune")) return kNoGpuExitCode;
  cuda::CudaBackendOptions opt;
  opt.gemm_tuning = cuda::GemmTuningConfig::from_env();
  opt.gemm_tuning.stage = cuda::TuningStage::Off;  // tune explicitly below; never load a table here
  if (!o.shapes_file.empty()) opt.gemm_tuning.shapes_file = o.shapes_file;
  if (!o.table_file.empty()) opt.gemm_tuning.table_file = o.table_file;

  std::vector<cuda::GemmKey> keys;
  std::vector<std::string> labels;
  std::vector<int64_t> counts;
  if (!o.problems.empty()) {
    for (const auto& p : o.problems) {
      keys.push_back(gemm_key_of(p));
      labels.push_back(p.label);
      counts.push_back(p.count);
    }
  } else {
    keys = cuda::read_shapes_file(opt.gemm_tuning.shapes_file);
    labels.assign(keys.size(), "");
    counts.assign(keys.size(), 1);
    std::printf("primus tune: %zu distinct GEMM shapes from %s\n", keys.size(), opt.gemm_tuning.shapes_file.c_str());
  }
  PRIMUS_CHECK(!keys.empty(), "primus tune: no GEMM shapes to tune");

  cuda::CudaBackend be(0, opt);
  cuda::TuningTable table;
  const auto devs = cuda::list_devices();
  table.device = devs.empty() ? "" : devs[0].name;
  table.cublaslt_version = cuda::GemmEngine::cublaslt_version();
  std::vector<nlohmann::json> rows;
  double sum_heur = 0, sum_best = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const cuda::GemmKey& k = keys[i];
    const cuda::GemmTuneResult r = be.gemm().tune(k, o.candidates, o.warmup, o.iters);
    if (r.best < 0) {
      std::fprintf(stderr, "primus tune: no working cuBLASLt candidate for %s; left to the heuristic\n", k.str().c_str());
      continue;
    }
    int timed = 0;
    for (const auto& c : r.candidates) timed += c.time_us > 0;
    table.entries.push_back({k, r.candidates[static_cast<size_t>(r.best)], r.heuristic_us(), timed});
    const double heur = r.heuristic_us() > 0 ? r.heuristic_us() : r.best_us();
    sum_heur += heur * counts[i];
    sum_best += r.best_us() * counts[i];
    rows.push_back({{"gemm", labels[i]}, {"m", k.m}, {"n", k.n}, {"k", k.k}, {"ta", k.ta ? 1 : 0}, {"tb", k.tb ? 1 : 0},
                    {"out", std::string(dtype_name(k.out_dtype))}, {"acc", k.accumulate ? 1 : 0},
                    {"candidates", static_cast<int>(r.candidates.size())}, {"timed", timed},
                    {"heuristic_us", heur}, {"tuned_us", r.best_us()}, {"best_index", r.best},
                    {"speedup", heur / r.best_us()}, {"tuned_tflops", k.flops() / (r.best_us() * 1e6)}});
    // Keep the table current so an interrupted tune still leaves a usable file.
    cuda::write_tuning_table(opt.gemm_tuning.table_file, table);
  }
  print_table(stdout, rows,
              {"gemm", "m", "n", "k", "ta", "tb", "out", "acc", "candidates", "timed", "heuristic_us", "tuned_us",
               "best_index", "speedup", "tuned_tflops"},
              o.format);
  if (sum_best > 0)
    std::printf("\ntuned/heuristic over all shapes (weighted by count): %.1f us -> %.1f us, speedup %.3fx\n", sum_heur,
                sum_best, sum_heur / sum_best);
  std::printf("tuning table (%zu shapes) written to %s; use it with PRIMUS_GEMM_TUNING_STAGE=3 "
              "(PRIMUS_GEMM_TUNING_RESULT=%s)\n",
              table.entries.size(), opt.gemm_tuning.table_file.c_str(), opt.gemm_tuning.table_file.c_str());
  return 0;
}

#endif  // PRIMUS_WITH_CUDA

}  // namespace primus::safe

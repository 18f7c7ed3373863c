// bench_gpu_ops: the CUDA backend's memory-bound fused ops against their HBM floor, and flash
// attention forward+backward, at the Llama-3.2-1B shape (seq 2048, micro-batch 8) and the
// ~125M shape (seq 1024, micro-batch 16). JSON lines on stdout (one object per measurement).
//   bench_gpu_ops [--quick]
// Same drivers as `primus bench ops` / `primus bench attention` (src/safe/gpu_bench.h).
#include <cstring>

#include "safe/gpu_bench.h"

int main(int argc, char** argv) {
  using namespace primus::safe;
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  if (!gpu_ready("bench_gpu_ops")) return kNoGpuExitCode;
  OpsBenchOptions ops;
  ops.shape = *builtin_shape("llama3.2-1B");
  ops.seq = 2048;
  ops.tokens = 2048 * (quick ? 2 : 8);
  ops.iters = quick ? 5 : 20;
  ops.format = TableFormat::Jsonl;
  int rc = run_ops_bench(ops);
  AttentionBenchOptions attn;
  attn.format = TableFormat::Jsonl;
  attn.iters = quick ? 3 : 10;
  attn.all_configs = !quick;
  const auto one_b = *builtin_shape("llama3.2-1B"), tiny = *builtin_shape("llama-tiny");
  attn.shapes = {{"llama3.2-1B", quick ? 2 : 8, 2048, one_b.heads, one_b.kv_heads, one_b.head_dim, true},
                 {"llama-tiny", quick ? 4 : 16, 1024, tiny.heads, tiny.kv_heads, tiny.head_dim, true}};
  rc |= run_attention_bench(attn);
  return rc;
}

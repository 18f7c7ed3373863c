#include "cli/commands.h"

namespace primus::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> kCommands = {
      {"train", "train a model from an experiment YAML (pretrain; --dry-run to inspect)", cmd_train},
      {"preprocess", "tokenize JSONL into Megatron .bin/.idx files", cmd_preprocess},
      {"convert", "convert checkpoints between HuggingFace and Primus", cmd_convert},
      {"generate", "generate text from a checkpoint with a KV cache", cmd_generate},
      {"preflight", "check every rank before a run: GEMM, memory, collective bandwidth; report + outliers", cmd_preflight},
      {"node-smoke", "quick per-node go/no-go against GEMM and memory thresholds (Slurm prolog)", cmd_node_smoke},
      {"projection", "the parallel layouts that fit on N nodes x G GPUs, with memory and a projected step time", cmd_projection},
      {"bench", "GPU benchmarks: GEMMs, attention, fused ops, MoE experts, a step table for projection (gemm|gemm-dense|attention|ops|moe|step|generate)", cmd_bench},
      {"tune", "GEMM auto-tuning (stages 1-3) on cuBLASLt", cmd_tune},
      {"config", "list every config key (--list) or show a resolved experiment", cmd_config},
      {"plot", "draw the loss and learning-rate curves of a run to PNG", cmd_plot},
  };
  return kCommands;
}

}  // namespace primus::cli

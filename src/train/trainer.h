// The training loop: Megatron's pretrain() for the Llama family, on one process or many
// data-parallel ranks, on the CPU (fp32) or CUDA (bf16/fp16 with fp32 masters).
//
// One iteration (Megatron's train_step):
//   1. each data-parallel rank takes its global_batch_size / dp micro-batches
//      (BatchLoader, Megatron's sampler order; consumed samples define the position);
//   2. the loss tokens of the whole global batch are counted (one all-reduce), and every
//      micro-batch runs forward+backward with loss_weight = loss_scale / tokens, so the
//      accumulated gradient is that of the global batch's token-mean loss whatever the
//      micro-batch size and data-parallel layout;
//   3. gradients are summed over the data-parallel group;
//   4. AdamW at lr(consumed samples), with global-norm clipping; a step with a
//      non-finite loss or gradient is skipped (NaN guard; fp16 overflow lowers the scale).
// Around it: logging every log_interval (the Megatron line, TensorBoard, metrics.jsonl),
// validation every eval_interval, checkpoints every save_interval and at the end,
// auto-resume, exit_interval / exit_duration_in_mins, SIGTERM/SIGUSR1/SIGINT (save, then
// exit 0), and a watchdog for hangs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "parallel/named_tensor.h"
#include "train/train_options.h"

namespace primus::train {

struct TrainResult {
  int exit_code = 0;
  int64_t start_iteration = 0;  // 0, or the iteration resumed from
  int64_t iteration = 0;        // the last iteration completed
  std::string stop_reason;      // "train_iters", "exit_interval", "exit_duration_in_mins", "SIGTERM", ...
  std::vector<double> losses;   // the lm loss of every iteration this process ran (NaN when skipped)
  std::vector<double> grad_norms;
  std::optional<double> last_validation_loss, test_loss;
  std::optional<int64_t> last_saved_iteration;
};

struct TrainerHooks {
  // Called on every rank after each iteration with the model's parameters (tests: inject
  // faults, inspect weights).
  std::function<void(int64_t iteration, const std::vector<NamedTensor*>& params)> after_iteration;
};

// Runs a whole training run as the options describe. Throws primus::Error for bad input
// (data, checkpoint, layout) and when the NaN guard stops the run.
TrainResult train(const TrainOptions& options, const TrainerHooks& hooks = {});

}  // namespace primus::train

// The DPO objective of a training run (train/dpo_loss.h has the formulas):
//
//   1. before the first step, the reference log-probs logp_ref(y_w), logp_ref(y_l) of every
//      pair of the train and valid datasets, computed once with the initial weights (the
//      reference model = the model the run starts from, as TRL's precompute_ref_log_probs),
//      each data-parallel rank a share, summed over dp; saved as
//      <save>/dpo_reference_logps.safetensors so that a resumed run (whose weights moved) keeps
//      the same reference;
//   2. each step, one row-weight hook per micro-batch (DecoderModel::MicroBatchExtras): from the
//      policy's per-row summed log-probs it computes the pairs' losses and returns each row's
//      gradient weight, d (loss scale * sum of losses / global pairs) / d row_loss_sum;
//   3. the statistics the log reports (TRL's rewards/*), summed over the data-parallel group.
//
// Batches hold rows [0, mb) chosen and [mb, 2 mb) rejected (data::Dataset rows_per_sample 2);
// Batch::samples names each pair's index in its dataset.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "data/data_config.h"
#include "data/gpt_dataset.h"
#include "parallel/communicator.h"
#include "train/dpo_loss.h"
#include "pipeline/pipelined_model.h"

namespace primus::train {

class DpoObjective {
 public:
  DpoObjective(DpoOptions options, int64_t global_pairs) : o_(options), global_pairs_(global_pairs) {}

  // Step 1. Loads <save_dir>/dpo_reference_logps.safetensors when it matches the datasets (its
  // sizes and names); else computes the log-probs with `model` (every rank takes part) and, when
  // `writer` (rank 0) and save_dir are set, saves them. `resumed`: the run continues a
  // checkpoint, whose weights are no longer the reference: a missing file is then an error.
  // Returns a line for the log.
  std::string prepare(pipeline::PipelinedModel& model, const data::Dataset& train, const data::Dataset* valid,
                      int64_t micro_batch, parallel::Communicator& dp, int dp_rank, int dp_size,
                      const std::string& save_dir, bool writer, bool resumed);

  // Step 2: the hooks for one step's micro-batches (they live until the next call), with
  // `scale` the loss scale. The step's statistics accumulate into step_stats().
  const std::vector<LossWeightsHook>& hooks(const std::vector<data::Batch>& batches, double scale);
  // This rank's statistics of the last hooks() step (sum over its pairs).
  const DpoStats& step_stats() const { return step_; }
  // Statistics of an evaluation: `row_loss_sums` of forward_only over `batches` (valid split).
  DpoStats evaluate(const std::vector<data::Batch>& batches, const std::vector<double>& row_loss_sums) const;
  // Step 3: sums over dp, as the named values the log, TensorBoard and metrics.jsonl show:
  // "dpo loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies".
  static std::vector<std::pair<std::string, double>> report(const DpoStats& local, parallel::Communicator& dp);
  // The statistics summed over `group` (e.g. over pp: with pipeline parallelism the hooks run on
  // the last stage only, so the other stages hold zeros).
  static DpoStats sum_over(const DpoStats& local, parallel::Communicator& group);

  const DpoOptions& options() const { return o_; }

 private:
  DpoPairs pairs_of(const data::Batch& b, const std::vector<double>& row_loss_sums, size_t offset,
                    const std::vector<double>& reference) const;

  DpoOptions o_;
  int64_t global_pairs_;
  std::vector<double> ref_train_, ref_valid_;  // [2 i] chosen, [2 i + 1] rejected of sample i
  std::vector<LossWeightsHook> hooks_;
  DpoStats step_;
};

}  // namespace primus::train

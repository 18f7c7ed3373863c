// What the training loop measures each iteration, and what one log line reports.
//
// The loop calls MetricsAccumulator::add() after every iteration and report() every
// log_interval iterations. A report follows Megatron's training_log semantics:
//   - elapsed time per iteration = wall time of the interval / iterations in it;
//   - each loss = mean over the interval's *advanced* (not skipped) iterations;
//   - skipped / nan counts are for the interval;
//   - learning rate, loss scale and norms are those of the last iteration.
// Throughput numbers are shown as "instant/average", Primus's convention: the average is
// the arithmetic mean of per-iteration values over a window that
//   - ignores the first `log_avg_skip_iterations` iterations *of this process* (warm-up,
//     which after a resume is slow again too), and
//   - restarts once it holds `log_avg_reset_interval` iterations (the window is cleared
//     before the next value goes in, so it always holds 1..reset_interval values).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace primus::metrics {

struct IterationRecord {
  int64_t iteration = 0;  // the iteration just completed (1-based, as Megatron counts)
  double elapsed_s = 0;   // wall time of this iteration
  std::vector<std::pair<std::string, double>> losses;  // {"lm loss", value}, in print order; ignored when `skipped`
  bool skipped = false;   // optimizer step not applied (overflow / NaN)
  bool nan = false;       // loss or gradients were NaN/Inf (counted, and usually skipped too)
  double learning_rate = 0;
  double loss_scale = 1;
  std::optional<double> grad_norm, num_zeros, params_norm;
  int64_t consumed_samples = 0;  // total after this iteration
  int64_t global_batch_size = 0;
  int64_t tokens = 0;            // tokens this iteration processed, all ranks together
  double flops = 0;              // model FLOPs of this iteration, all GPUs together (0: unknown)
};

struct MetricsOptions {
  int64_t train_iters = 0;
  int64_t log_avg_skip_iterations = 0;   // Primus default 2
  int64_t log_avg_reset_interval = 10;   // Primus default 10
  int world_size = 1;                    // GPUs the FLOPs are spread over
  double peak_tflops_per_gpu = 0;        // dense peak of one GPU for MFU; 0 leaves MFU out
  int64_t tokens_consumed_at_start = 0;  // restored from the checkpoint on resume
};

// One log line's worth of numbers (also what goes to JSONL and TensorBoard).
struct IntervalReport {
  int64_t iteration = 0, train_iters = 0, consumed_samples = 0, global_batch_size = 0;
  int64_t iterations_in_interval = 0;
  double elapsed_ms = 0;
  std::optional<double> elapsed_ms_avg;
  double learning_rate = 0;
  std::vector<std::pair<std::string, double>> losses;  // empty when every iteration was skipped
  double loss_scale = 1;
  std::optional<double> grad_norm, num_zeros, params_norm;
  double tokens_per_s = 0;
  std::optional<double> tokens_per_s_avg;
  int64_t tokens_consumed = 0;
  std::optional<double> tflops_per_gpu, tflops_per_gpu_avg;  // absent when FLOPs are unknown
  std::optional<double> mfu_percent, mfu_percent_avg;        // absent without a peak
  int64_t skipped_iterations = 0, nan_iterations = 0;
  // Filled by the caller (device memory, Megatron tag names): "mem-allocated-bytes" -> value.
  std::vector<std::pair<std::string, double>> memory;
  // MoE models, filled by the caller from the last iteration: the most loaded expert over the
  // mean (max over layers; 1 = perfectly balanced), and per-layer scalars
  // ("moe/layer_3/load_balancing_loss", ...) for TensorBoard and JSONL.
  std::optional<double> expert_load;
  std::vector<std::pair<std::string, double>> moe_layers;
};

// Mean of the last values under the skip/reset rules above.
class RunningAverage {
 public:
  RunningAverage(int64_t skip_first, int64_t reset_interval);
  // `ordinal` counts iterations of this process from 1.
  void add(int64_t ordinal, double value);
  std::optional<double> mean() const;
  size_t size() const { return window_.size(); }

 private:
  int64_t skip_first_, reset_interval_;
  std::deque<double> window_;
  double sum_ = 0;
};

class MetricsAccumulator {
 public:
  explicit MetricsAccumulator(const MetricsOptions& options);

  void add(const IterationRecord& record);
  // The report for the iterations added since the last report; starts a new interval.
  // Requires at least one add() since the last report.
  IntervalReport report();
  int64_t iterations_in_interval() const { return interval_iterations_; }
  int64_t tokens_consumed() const { return tokens_consumed_; }

 private:
  MetricsOptions options_;
  int64_t ordinal_ = 0;  // iterations added by this process
  int64_t tokens_consumed_ = 0;
  RunningAverage avg_elapsed_ms_, avg_tokens_per_s_, avg_tflops_;

  // The current interval.
  int64_t interval_iterations_ = 0, interval_advanced_ = 0, interval_skipped_ = 0, interval_nan_ = 0;
  double interval_time_s_ = 0, interval_flops_ = 0;
  int64_t interval_tokens_ = 0;
  std::map<std::string, double> interval_loss_sums_;
  std::vector<std::string> loss_order_;  // keys in first-seen order (the line's order)
  IterationRecord last_;
};

}  // namespace primus::metrics

#include "metrics/metrics.h"

#include <algorithm>

#include "core/error.h"

namespace primus::metrics {

RunningAverage::RunningAverage(int64_t skip_first, int64_t reset_interval)
    : skip_first_(std::max<int64_t>(0, skip_first)), reset_interval_(std::max<int64_t>(1, reset_interval)) {}

void RunningAverage::add(int64_t ordinal, double value) {
  if (ordinal <= skip_first_) return;  // warm-up iterations never enter the average
  if (ordinal == skip_first_ + 1 || static_cast<int64_t>(window_.size()) >= reset_interval_) {
    window_.clear();
    sum_ = 0;
  }
  window_.push_back(value);
  sum_ += value;
}

std::optional<double> RunningAverage::mean() const {
  if (window_.empty()) return std::nullopt;
  return sum_ / static_cast<double>(window_.size());
}

MetricsAccumulator::MetricsAccumulator(const MetricsOptions& options)
    : options_(options),
      tokens_consumed_(options.tokens_consumed_at_start),
      avg_elapsed_ms_(options.log_avg_skip_iterations, options.log_avg_reset_interval),
      avg_tokens_per_s_(options.log_avg_skip_iterations, options.log_avg_reset_interval),
      avg_tflops_(options.log_avg_skip_iterations, options.log_avg_reset_interval) {
  PRIMUS_CHECK(options.world_size >= 1, "metrics: world_size must be >= 1, got {}", options.world_size);
  PRIMUS_CHECK(options.log_avg_reset_interval >= 1, "log_avg_reset_interval must be >= 1, got {}",
               options.log_avg_reset_interval);
  PRIMUS_CHECK(options.log_avg_skip_iterations >= 0, "log_avg_skip_iterations must be >= 0, got {}",
               options.log_avg_skip_iterations);
}

void MetricsAccumulator::add(const IterationRecord& r) {
  ++ordinal_;
  ++interval_iterations_;
  interval_time_s_ += r.elapsed_s;
  interval_tokens_ += r.tokens;
  interval_flops_ += r.flops;
  tokens_consumed_ += r.tokens;
  if (r.skipped) ++interval_skipped_;
  if (r.nan) ++interval_nan_;
  if (!r.skipped) {
    ++interval_advanced_;
    for (const auto& [key, value] : r.losses) {
      if (!interval_loss_sums_.count(key)) loss_order_.push_back(key);
      interval_loss_sums_[key] += value;
    }
  }
  // Per-iteration instant values for the running averages.
  const double t = r.elapsed_s > 0 ? r.elapsed_s : 1e-12;
  avg_elapsed_ms_.add(ordinal_, r.elapsed_s * 1e3);
  avg_tokens_per_s_.add(ordinal_, static_cast<double>(r.tokens) / t);
  if (r.flops > 0) avg_tflops_.add(ordinal_, r.flops / t / options_.world_size / 1e12);
  last_ = r;
}

IntervalReport MetricsAccumulator::report() {
  PRIMUS_CHECK(interval_iterations_ > 0, "MetricsAccumulator::report() called with no iteration added since "
               "the last report");
  IntervalReport rep;
  rep.iteration = last_.iteration;
  rep.train_iters = options_.train_iters;
  rep.consumed_samples = last_.consumed_samples;
  rep.global_batch_size = last_.global_batch_size;
  rep.iterations_in_interval = interval_iterations_;
  const double t = interval_time_s_ > 0 ? interval_time_s_ : 1e-12;
  rep.elapsed_ms = interval_time_s_ * 1e3 / static_cast<double>(interval_iterations_);
  rep.elapsed_ms_avg = avg_elapsed_ms_.mean();
  rep.learning_rate = last_.learning_rate;
  if (interval_advanced_ > 0) {
    for (const std::string& key : loss_order_)
      rep.losses.emplace_back(key, interval_loss_sums_[key] / static_cast<double>(interval_advanced_));
  }
  rep.loss_scale = last_.loss_scale;
  rep.grad_norm = last_.grad_norm;
  rep.num_zeros = last_.num_zeros;
  rep.params_norm = last_.params_norm;
  rep.tokens_per_s = static_cast<double>(interval_tokens_) / t;
  rep.tokens_per_s_avg = avg_tokens_per_s_.mean();
  rep.tokens_consumed = tokens_consumed_;
  if (interval_flops_ > 0) {
    rep.tflops_per_gpu = interval_flops_ / t / options_.world_size / 1e12;
    rep.tflops_per_gpu_avg = avg_tflops_.mean();
    if (options_.peak_tflops_per_gpu > 0) {
      rep.mfu_percent = *rep.tflops_per_gpu / options_.peak_tflops_per_gpu * 100.0;
      if (rep.tflops_per_gpu_avg) rep.mfu_percent_avg = *rep.tflops_per_gpu_avg / options_.peak_tflops_per_gpu * 100.0;
    }
  }
  rep.skipped_iterations = interval_skipped_;
  rep.nan_iterations = interval_nan_;

  interval_iterations_ = interval_advanced_ = interval_skipped_ = interval_nan_ = 0;
  interval_time_s_ = interval_flops_ = 0;
  interval_tokens_ = 0;
  interval_loss_sums_.clear();
  loss_order_.clear();
  return rep;
}

}  // namespace primus::metrics

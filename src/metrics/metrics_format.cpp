#include "metrics/metrics_format.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include <fmt/format.h>

namespace primus::metrics {

namespace {

// "instant" or "instant/average" with one format for both.
std::string inst_avg(double inst, const std::optional<double>& avg, std::string_view unit = "") {
  if (avg) return fmt::format("{:.1f}{}/{:.1f}{}", inst, unit, *avg, unit);
  return fmt::format("{:.1f}{}", inst, unit);
}

nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

std::string log_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string format_iteration_line(const IntervalReport& r, std::string_view timestamp) {
  std::string s = fmt::format(" [{}]", timestamp);
  s += fmt::format(" iteration {:8d}/{:8d} |", r.iteration, r.train_iters);
  s += fmt::format(" consumed samples: {:12d} |", r.consumed_samples);
  s += fmt::format(" elapsed time per iteration (ms): {} |", inst_avg(r.elapsed_ms, r.elapsed_ms_avg));
  s += fmt::format(" learning rate: {:.6E} |", r.learning_rate);
  s += fmt::format(" global batch size: {:5d} |", r.global_batch_size);
  for (const auto& [key, value] : r.losses) s += fmt::format(" {}: {:.6E} |", key, value);
  if (r.expert_load) s += fmt::format(" expert load max/mean: {:.3f} |", *r.expert_load);
  s += fmt::format(" loss scale: {:.1f} |", r.loss_scale);
  if (r.grad_norm) s += fmt::format(" grad norm: {:.3f} |", *r.grad_norm);
  if (r.num_zeros) s += fmt::format(" num zeros: {:.1f} |", *r.num_zeros);
  if (r.params_norm) s += fmt::format(" params norm: {:.3f} |", *r.params_norm);
  s += fmt::format(" throughput (tokens/s): {} |", inst_avg(r.tokens_per_s, r.tokens_per_s_avg));
  s += fmt::format(" tokens consumed: {:12d} |", r.tokens_consumed);
  if (r.tflops_per_gpu) s += fmt::format(" TFLOP/s/GPU: {} |", inst_avg(*r.tflops_per_gpu, r.tflops_per_gpu_avg));
  if (r.mfu_percent) s += fmt::format(" MFU: {} |", inst_avg(*r.mfu_percent, r.mfu_percent_avg, "%"));
  s += fmt::format(" number of skipped iterations: {:3d} |", r.skipped_iterations);
  s += fmt::format(" number of nan iterations: {:3d} |", r.nan_iterations);
  // Not Megatron's: how far the run is and when it ends at the average step time (after the
  // Megatron fields, so parsers of those are not disturbed).
  if (r.train_iters > 0) {
    const double ms = r.elapsed_ms_avg.value_or(r.elapsed_ms);
    const int64_t left = std::max<int64_t>(0, r.train_iters - r.iteration);
    const auto eta = static_cast<int64_t>(std::llround(static_cast<double>(left) * ms / 1000.0));
    s += fmt::format(" progress: {:.1f}% | ETA: {}:{:02d}:{:02d} |", 100.0 * r.iteration / r.train_iters, eta / 3600,
                     eta / 60 % 60, eta % 60);
  }
  return s;
}

std::string format_evaluation_block(std::string_view kind, std::string_view where,
                                    const std::vector<std::pair<std::string, double>>& losses) {
  std::string line = fmt::format(" {} loss at {} | ", kind, where);
  for (const auto& [key, value] : losses) {
    line += fmt::format("{} value: {:.6E} | ", key, value);
    // Perplexity of the language-model losses (not of DPO's loss or its rewards).
    if (key == "lm loss" || key.starts_with("mtp_"))
      line += fmt::format("{} PPL: {:.6E} | ", key, std::exp(std::min(20.0, value)));
  }
  const std::string dashes(line.size() + 1, '-');
  return dashes + "\n" + line + "\n" + dashes;
}

std::string json_key(std::string_view name) {
  std::string k(name);
  std::replace(k.begin(), k.end(), ' ', '_');
  std::replace(k.begin(), k.end(), '-', '_');
  return k;
}

nlohmann::json report_to_json(const IntervalReport& r, double wall_time) {
  nlohmann::json j;
  j["type"] = "train";
  j["iteration"] = r.iteration;
  j["wall_time"] = wall_time;
  j["train_iters"] = r.train_iters;
  j["consumed_samples"] = r.consumed_samples;
  j["elapsed_ms"] = number(r.elapsed_ms);
  if (r.elapsed_ms_avg) j["elapsed_ms_avg"] = number(*r.elapsed_ms_avg);
  j["learning_rate"] = number(r.learning_rate);
  j["global_batch_size"] = r.global_batch_size;
  for (const auto& [key, value] : r.losses) j[json_key(key)] = number(value);
  j["loss_scale"] = number(r.loss_scale);
  if (r.grad_norm) j["grad_norm"] = number(*r.grad_norm);
  if (r.num_zeros) j["num_zeros"] = number(*r.num_zeros);
  if (r.params_norm) j["params_norm"] = number(*r.params_norm);
  j["tokens_per_s"] = number(r.tokens_per_s);
  if (r.tokens_per_s_avg) j["tokens_per_s_avg"] = number(*r.tokens_per_s_avg);
  j["tokens_consumed"] = r.tokens_consumed;
  if (r.tflops_per_gpu) j["tflops_per_gpu"] = number(*r.tflops_per_gpu);
  if (r.tflops_per_gpu_avg) j["tflops_per_gpu_avg"] = number(*r.tflops_per_gpu_avg);
  if (r.mfu_percent) j["mfu_percent"] = number(*r.mfu_percent);
  if (r.mfu_percent_avg) j["mfu_percent_avg"] = number(*r.mfu_percent_avg);
  j["skipped_iterations"] = r.skipped_iterations;
  j["nan_iterations"] = r.nan_iterations;
  for (const auto& [key, value] : r.memory) j[json_key(key)] = number(value);
  if (r.expert_load) j["expert_load_max_over_mean"] = number(*r.expert_load);
  for (const auto& [key, value] : r.moe_layers) j[key] = number(value);
  return j;
}

nlohmann::json evaluation_to_json(int64_t iteration, std::string_view kind,
                                  const std::vector<std::pair<std::string, double>>& losses, double wall_time) {
  nlohmann::json j;
  j["type"] = std::string(kind);
  j["iteration"] = iteration;
  j["wall_time"] = wall_time;
  for (const auto& [key, value] : losses) {
    j[json_key(key)] = number(value);
    j[json_key(key) + "_ppl"] = number(std::exp(std::min(20.0, value)));
  }
  return j;
}

std::vector<std::pair<std::string, double>> report_scalars(const IntervalReport& r) {
  std::vector<std::pair<std::string, double>> s;
  for (const auto& [key, value] : r.losses) s.emplace_back(key, value);
  s.emplace_back("learning-rate", r.learning_rate);
  s.emplace_back("batch-size", static_cast<double>(r.global_batch_size));
  s.emplace_back("loss-scale", r.loss_scale);
  if (r.grad_norm) s.emplace_back("grad-norm", *r.grad_norm);
  if (r.num_zeros) s.emplace_back("num-zeros", *r.num_zeros);
  if (r.params_norm) s.emplace_back("params-norm", *r.params_norm);
  s.emplace_back("iteration-time", r.elapsed_ms / 1e3);
  if (r.tflops_per_gpu) s.emplace_back("throughput", *r.tflops_per_gpu);
  s.emplace_back("throughput-tokens-per-sec", r.tokens_per_s);
  if (r.mfu_percent) s.emplace_back("mfu", *r.mfu_percent);
  s.emplace_back("tokens-consumed", static_cast<double>(r.tokens_consumed));
  s.emplace_back("consumed-samples", static_cast<double>(r.consumed_samples));
  s.emplace_back("skipped-iterations", static_cast<double>(r.skipped_iterations));
  s.emplace_back("nan-iterations", static_cast<double>(r.nan_iterations));
  for (const auto& m : r.memory) s.push_back(m);
  if (r.expert_load) s.emplace_back("moe/expert_load_max_over_mean", *r.expert_load);
  for (const auto& m : r.moe_layers) s.push_back(m);
  return s;
}

std::vector<std::pair<std::string, double>> evaluation_scalars(
    std::string_view kind, const std::vector<std::pair<std::string, double>>& losses) {
  std::vector<std::pair<std::string, double>> s;
  for (const auto& [key, value] : losses) {
    s.emplace_back(fmt::format("{} {}", key, kind), value);
    s.emplace_back(fmt::format("{} {} ppl", key, kind), std::exp(std::min(20.0, value)));
  }
  return s;
}

}  // namespace primus::metrics

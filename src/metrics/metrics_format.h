// Text and records made from an IntervalReport: Megatron's iteration line, the
// validation block, the JSONL object and the TensorBoard scalars (Megatron tag names).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "metrics/metrics.h"

namespace primus::metrics {

// Local time as Megatron prints it: "2025-01-31 13:05:09".
std::string log_timestamp();

// Megatron's line with Primus's additions, fields in this order (values averaged over the
// window shown as "instant/average"; optional fields left out when absent):
//  " [ts] iteration       10/   10000 | consumed samples:         5120 |
//   elapsed time per iteration (ms): 1234.5/1230.1 | learning rate: 3.000000E-04 |
//   global batch size:   512 | lm loss: 1.034567E+01 | [MoE: load_balancing_loss: 1.02E+00 |
//   z_loss: 3.1E+00 | expert load max/mean: 1.234 |] loss scale: 1.0 | grad norm: 1.234 |
//   num zeros: 0.0 | params norm: 123.456 | throughput (tokens/s): 41234.5/41000.2 |
//   tokens consumed:      5242880 | TFLOP/s/GPU: 400.1/398.2 | MFU: 40.5%/40.3% |
//   number of skipped iterations:   0 | number of nan iterations:   0 |"
// (one line; wrapped here). Widths and E-notation follow Megatron's training_log.
std::string format_iteration_line(const IntervalReport& report, std::string_view timestamp);

// Megatron's evaluation block, three lines framed by dashes:
//   " validation loss at iteration 100 | lm loss value: 5.123456E+00 | lm loss PPL: 1.678E+02 | "
// `where` is e.g. "iteration 100" or "the end of training (test set)". PPL = exp(min(20, loss)).
std::string format_evaluation_block(std::string_view kind, std::string_view where,
                                    const std::vector<std::pair<std::string, double>>& losses);

// "lm loss" -> "lm_loss": JSON keys without spaces.
std::string json_key(std::string_view name);

// One JSONL object: {"type":"train","iteration":10,"wall_time":...,"lm_loss":...,...}.
// Non-finite numbers become null (JSON has no NaN).
nlohmann::json report_to_json(const IntervalReport& report, double wall_time);
nlohmann::json evaluation_to_json(int64_t iteration, std::string_view kind,
                                  const std::vector<std::pair<std::string, double>>& losses, double wall_time);

// TensorBoard scalars with Megatron's tags: "lm loss", "learning-rate", "batch-size",
// "loss-scale", "grad-norm", "num-zeros", "params-norm", "iteration-time" (seconds),
// "throughput" (TFLOP/s/GPU, as Megatron), plus "throughput-tokens-per-sec", "mfu",
// "tokens-consumed", "consumed-samples", the report's memory entries and, for MoE models,
// "moe/expert_load_max_over_mean" and the per-layer "moe/layer_L/..." scalars.
std::vector<std::pair<std::string, double>> report_scalars(const IntervalReport& report);
// "lm loss validation", "lm loss validation ppl" (kind = "validation" or "test").
std::vector<std::pair<std::string, double>> evaluation_scalars(
    std::string_view kind, const std::vector<std::pair<std::string, double>>& losses);

}  // namespace primus::metrics

// Learning-rate and weight-decay schedules with Megatron's semantics, as pure functions
// of the scheduler's step count.
//
// Megatron counts scheduler steps in SAMPLES: after each iteration the count grows by the
// global batch size, and iteration k (1-based) trains with lr(consumed samples before it)
// = lr((k - 1) * global_batch_size) for iteration-based runs. megatron_schedule() turns the
// training arguments (iters or samples) into that unit, so callers need only
//   double lr = schedule.lr(consumed_samples);
//
//   warmup   (steps <= warmup):  init_lr + (max_lr - init_lr) * steps / warmup
//   constant:                    max_lr
//   after decay_steps:           min_lr
//   inverse-square-root:         max(min_lr, max_lr * sqrt(max(warmup,1)) / sqrt(max(steps,1)))
//   otherwise, r = (steps - warmup) / (decay - warmup), lr = min_lr + c * (max_lr - min_lr):
//     linear c = 1 - r;  cosine c = (cos(pi r) + 1) / 2;
//     WSD: c = 1 until decay - wsd_decay_steps, then over the last wsd_decay_steps with
//          ratio s: linear 1 - s, cosine (cos(pi s) + 1)/2, exponential 2 * 0.5^s - 1,
//          minus_sqrt 1 - sqrt(s).
// Weight decay ramps from start_wd to end_wd over wd_incr_steps (constant / linear /
// cosine c = (cos(pi (1 - r)) + 1) / 2), then stays at end_wd.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace primus {

enum class LrDecayStyle { Constant, Linear, Cosine, InverseSquareRoot, WSD };
enum class WsdDecayStyle { Linear, Cosine, Exponential, MinusSqrt };
enum class WeightDecayIncrStyle { Constant, Linear, Cosine };

// Megatron's spellings: "constant", "linear", "cosine", "inverse-square-root", "WSD";
// "linear", "cosine", "exponential", "minus_sqrt"; "constant", "linear", "cosine".
LrDecayStyle parse_lr_decay_style(std::string_view s);
WsdDecayStyle parse_wsd_decay_style(std::string_view s);
WeightDecayIncrStyle parse_weight_decay_incr_style(std::string_view s);

struct LrScheduleConfig {
  double max_lr = 0, min_lr = 0, init_lr = 0;  // init_lr = lr_warmup_init
  double warmup_steps = 0, decay_steps = 0, wsd_decay_steps = 0;
  LrDecayStyle style = LrDecayStyle::Linear;
  WsdDecayStyle wsd_style = WsdDecayStyle::Exponential;
  double start_wd = 0, end_wd = 0, wd_incr_steps = 0;
  WeightDecayIncrStyle wd_style = WeightDecayIncrStyle::Constant;
};

class LrSchedule {
 public:
  // Checks the config as Megatron does (decay_steps > 0, warmup < decay, 0 <= min_lr <=
  // max_lr, WSD needs wsd_decay_steps in (0, decay_steps], constant wd needs start == end).
  explicit LrSchedule(const LrScheduleConfig& config);
  double lr(double steps) const;
  double weight_decay(double steps) const;
  const LrScheduleConfig& config() const { return c_; }

 private:
  LrScheduleConfig c_;
};

// Megatron's training arguments that define the schedules (names as in its CLI/YAML).
struct MegatronScheduleArgs {
  double lr = 0, min_lr = 0, lr_warmup_init = 0;
  std::string lr_decay_style = "linear";
  int64_t global_batch_size = 1;
  int64_t train_iters = 0, train_samples = 0;  // exactly one > 0
  std::optional<int64_t> lr_decay_iters, lr_decay_samples;
  int64_t lr_warmup_iters = 0, lr_warmup_samples = 0;
  std::optional<double> lr_warmup_fraction;  // overrides lr_warmup_iters/samples
  std::string lr_wsd_decay_style = "exponential";
  std::optional<int64_t> lr_wsd_decay_iters, lr_wsd_decay_samples;
  double weight_decay = 0.01;
  std::optional<double> start_weight_decay, end_weight_decay;
  std::string weight_decay_incr_style = "constant";
};

// The schedule in samples, as Megatron's get_optimizer_param_scheduler computes it.
LrScheduleConfig megatron_schedule(const MegatronScheduleArgs& args);

}  // namespace primus

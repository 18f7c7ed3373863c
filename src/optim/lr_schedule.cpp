#include "optim/lr_schedule.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace primus {

namespace {
template <typename E>
E parse_choice(std::string_view key, std::string_view s, const std::vector<std::pair<std::string, E>>& choices) {
  std::vector<std::string> names;
  for (const auto& [name, value] : choices) {
    if (name == s) return value;
    names.push_back(name);
  }
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  fail("{}: '{}' is not one of {}{}", key, s, list, did_you_mean(s, names));
}
}  // namespace

LrDecayStyle parse_lr_decay_style(std::string_view s) {
  return parse_choice<LrDecayStyle>("lr_decay_style", s,
                                    {{"constant", LrDecayStyle::Constant},
                                     {"linear", LrDecayStyle::Linear},
                                     {"cosine", LrDecayStyle::Cosine},
                                     {"inverse-square-root", LrDecayStyle::InverseSquareRoot},
                                     {"WSD", LrDecayStyle::WSD}});
}

WsdDecayStyle parse_wsd_decay_style(std::string_view s) {
  return parse_choice<WsdDecayStyle>("lr_wsd_decay_style", s,
                                     {{"linear", WsdDecayStyle::Linear},
                                      {"cosine", WsdDecayStyle::Cosine},
                                      {"exponential", WsdDecayStyle::Exponential},
                                      {"minus_sqrt", WsdDecayStyle::MinusSqrt}});
}

WeightDecayIncrStyle parse_weight_decay_incr_style(std::string_view s) {
  return parse_choice<WeightDecayIncrStyle>("weight_decay_incr_style", s,
                                            {{"constant", WeightDecayIncrStyle::Constant},
                                             {"linear", WeightDecayIncrStyle::Linear},
                                             {"cosine", WeightDecayIncrStyle::Cosine}});
}

LrSchedule::LrSchedule(const LrScheduleConfig& c) : c_(c) {
  PRIMUS_CHECK(c.max_lr >= 0, "lr must be >= 0, got {}", c.max_lr);
  PRIMUS_CHECK(c.min_lr >= 0 && c.min_lr <= c.max_lr, "min_lr must be in [0, lr = {}], got {}", c.max_lr, c.min_lr);
  PRIMUS_CHECK(c.decay_steps > 0, "the lr decay length must be > 0 (lr_decay_iters/lr_decay_samples or "
               "train_iters/train_samples), got {} samples", c.decay_steps);
  PRIMUS_CHECK(c.warmup_steps >= 0 && c.warmup_steps < c.decay_steps,
               "lr warmup ({} samples) must be shorter than the lr decay ({} samples): lower lr_warmup_iters / "
               "lr_warmup_fraction or raise lr_decay_iters", c.warmup_steps, c.decay_steps);
  if (c.style == LrDecayStyle::WSD)
    PRIMUS_CHECK(c.wsd_decay_steps > 0 && c.wsd_decay_steps <= c.decay_steps,
                 "lr_decay_style WSD needs lr_wsd_decay_iters/lr_wsd_decay_samples in (0, lr decay = {} samples], "
                 "got {} samples", c.decay_steps, c.wsd_decay_steps);
  PRIMUS_CHECK(c.start_wd >= 0 && c.end_wd >= c.start_wd, "weight decay must grow: start_weight_decay {} <= "
               "end_weight_decay {}", c.start_wd, c.end_wd);
  if (c.wd_style == WeightDecayIncrStyle::Constant)
    PRIMUS_CHECK(c.start_wd == c.end_wd, "weight_decay_incr_style constant needs start_weight_decay ({}) == "
                 "end_weight_decay ({})", c.start_wd, c.end_wd);
  else
    PRIMUS_CHECK(c.wd_incr_steps > 0, "weight_decay_incr_style needs a training length > 0");
}

double LrSchedule::lr(double steps) const {
  const double max_lr = c_.max_lr, min_lr = c_.min_lr;
  if (c_.warmup_steps > 0 && steps <= c_.warmup_steps)
    return c_.init_lr + (max_lr - c_.init_lr) * steps / c_.warmup_steps;
  if (c_.style == LrDecayStyle::Constant) return max_lr;
  if (steps > c_.decay_steps) return min_lr;
  if (c_.style == LrDecayStyle::InverseSquareRoot) {
    const double w = std::max(c_.warmup_steps, 1.0), s = std::max(steps, 1.0);
    return std::max(min_lr, max_lr * std::sqrt(w) / std::sqrt(s));
  }
  const double ratio = (steps - c_.warmup_steps) / (c_.decay_steps - c_.warmup_steps);
  double coeff = 1.0;
  switch (c_.style) {
    case LrDecayStyle::Linear: coeff = 1.0 - ratio; break;
    case LrDecayStyle::Cosine: coeff = 0.5 * (std::cos(std::numbers::pi * ratio) + 1.0); break;
    case LrDecayStyle::WSD: {
      const double anneal_start = c_.decay_steps - c_.wsd_decay_steps;
      if (steps <= anneal_start) break;
      const double s = (steps - anneal_start) / c_.wsd_decay_steps;
      switch (c_.wsd_style) {
        case WsdDecayStyle::Linear: coeff = 1.0 - s; break;
        case WsdDecayStyle::Cosine: coeff = 0.5 * (std::cos(std::numbers::pi * s) + 1.0); break;
        case WsdDecayStyle::Exponential: coeff = 2.0 * std::pow(0.5, s) - 1.0; break;
        case WsdDecayStyle::MinusSqrt: coeff = 1.0 - std::sqrt(s); break;
      }
      break;
    }
    default: break;
  }
  return min_lr + coeff * (max_lr - min_lr);
}

double LrSchedule::weight_decay(double steps) const {
  if (steps > c_.wd_incr_steps || c_.wd_style == WeightDecayIncrStyle::Constant) return c_.end_wd;
  const double r = steps / c_.wd_incr_steps;
  const double coeff =
      c_.wd_style == WeightDecayIncrStyle::Linear ? r : 0.5 * (std::cos(std::numbers::pi * (1.0 - r)) + 1.0);
  return c_.start_wd + coeff * (c_.end_wd - c_.start_wd);
}

LrScheduleConfig megatron_schedule(const MegatronScheduleArgs& a) {
  PRIMUS_CHECK((a.train_iters > 0) != (a.train_samples > 0),
               "set exactly one of train_iters ({}) and train_samples ({})", a.train_iters, a.train_samples);
  PRIMUS_CHECK(a.global_batch_size > 0, "global_batch_size must be > 0, got {}", a.global_batch_size);
  LrScheduleConfig c;
  c.max_lr = a.lr;
  c.min_lr = a.min_lr;
  c.init_lr = a.lr_warmup_init;
  c.style = parse_lr_decay_style(a.lr_decay_style);
  c.wsd_style = parse_wsd_decay_style(a.lr_wsd_decay_style);
  const double gbs = static_cast<double>(a.global_batch_size);
  if (a.train_iters > 0) {
    c.decay_steps = static_cast<double>(a.lr_decay_iters.value_or(a.train_iters)) * gbs;
    c.wd_incr_steps = static_cast<double>(a.train_iters) * gbs;
    if (a.lr_wsd_decay_iters) c.wsd_decay_steps = static_cast<double>(*a.lr_wsd_decay_iters) * gbs;
    c.warmup_steps = a.lr_warmup_fraction ? *a.lr_warmup_fraction * c.decay_steps
                                          : static_cast<double>(a.lr_warmup_iters) * gbs;
  } else {
    c.decay_steps = static_cast<double>(a.lr_decay_samples.value_or(a.train_samples));
    c.wd_incr_steps = static_cast<double>(a.train_samples);
    if (a.lr_wsd_decay_samples) c.wsd_decay_steps = static_cast<double>(*a.lr_wsd_decay_samples);
    c.warmup_steps = a.lr_warmup_fraction ? *a.lr_warmup_fraction * c.decay_steps
                                          : static_cast<double>(a.lr_warmup_samples);
  }
  c.start_wd = a.start_weight_decay.value_or(a.weight_decay);
  c.end_wd = a.end_weight_decay.value_or(a.weight_decay);
  c.wd_style = parse_weight_decay_incr_style(a.weight_decay_incr_style);
  return c;
}

}  // namespace primus

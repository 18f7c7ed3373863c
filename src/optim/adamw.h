// AdamW over a model's NamedTensors, with fp32 master weights, global-norm clipping and
// exportable state.
//
// One step: norm = sqrt(sum of grad^2) * grad_scale (grad_scale = 1/loss_scale undoes
// loss scaling); if it is not finite the step is skipped (nothing changes); otherwise
// the grads are scaled by grad_scale * min(1, clip_grad / (norm + 1e-6)) (Megatron's and
// torch's clip_grad_norm_ coefficient) inside ops::adamw_step, which applies decoupled
// weight decay (none on norms/biases: NamedTensor::no_weight_decay) and the Adam update to
// the fp32 master, then refreshes the model's low-precision copy. When the params are
// fp32 the master IS the param tensor.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/safetensors.h"
#include "parallel/named_tensor.h"
#include "ops/ops.h"

namespace primus {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // Megatron: adam_beta1/adam_beta2/adam_eps
  float clip_grad = 1.0f;                           // max global grad norm; <= 0 disables
  // Megatron's precision-aware optimizer (use_precision_aware_optimizer): the moments' dtypes
  // (fp32 or bf16; updated in fp32 either way), and for bf16 weights the fp32 master held as
  // the weight itself plus an int16 remainder (core/master_bits.h: 2 bytes per parameter
  // instead of 4, and the same fp32 master bit for bit).
  DType exp_avg_dtype = DType::F32, exp_avg_sq_dtype = DType::F32;
  bool store_param_remainders = false;
};

class AdamW {
 public:
  // `params` must outlive the optimizer. Allocates fp32 moments (and masters when the
  // params are not fp32) on the params' device.
  AdamW(ops::Context& ctx, std::vector<NamedTensor*> params, const AdamWConfig& config);

  struct StepInfo {
    double grad_norm = 0;    // of the unscaled gradients (after grad_scale), before clipping
    double clip_coeff = 1;   // factor applied to the gradients (<= 1)
    bool skipped = false;    // non-finite grad norm: no update, step count unchanged
  };
  // Applies one update at learning rate `lr` and weight decay `weight_decay` (from the
  // LrSchedule). Grads are read, not zeroed.
  StepInfo step(double lr, double weight_decay, float grad_scale = 1.f);

  // The global L2 norm of the grads times grad_scale (for logging without a step).
  double grad_norm(float grad_scale = 1.f);
  // How the sum of grad^2 behind grad_norm() is formed. Default: over this optimizer's
  // grads. With model parallelism the norm is of the full model: e.g.
  // parallel::grad_sum_of_squares_fn(tp) sums the tp ranks' shards and counts replicated
  // tensors once (every rank of the group must then step together).
  using GradSumOfSquares = std::function<double(ops::Context&, const std::vector<NamedTensor*>&)>;
  void set_grad_sum_of_squares(GradSumOfSquares fn) { grad_sum_of_squares_ = std::move(fn); }
  int64_t count_zero_grads();  // Megatron's `num zeros`
  // Copies the params' current values into the fp32 masters (after weights were loaded into
  // the model without optimizer state: finetune, no_load_optim). No-op for fp32 params.
  void reset_masters_from_params();
  int64_t steps_taken() const { return steps_; }
  const AdamWConfig& config() const { return config_; }

  // State as named tensors: "<param>.exp_avg", "<param>.exp_avg_sq" (in their dtype),
  // "<param>.master" (fp32; only when params are not fp32), and "step" (int64, shape []).
  // Tensors are the live state (no copy; a master held as remainder is joined into a new
  // fp32 tensor); save them before the next step.
  NamedTensorList state_tensors() const;
  // Bytes of state held (masters or remainders, moments), without materialising anything.
  int64_t state_bytes() const;
  // The names state_tensors() returns, in its order, without materialising anything.
  std::vector<std::string> state_names() const;
  // Loads state saved by state_tensors() (any device; copied in). Every name must be
  // present with the expected shape and dtype (moments: fp32 or bf16, cast to this run's);
  // errors name the missing/mismatched tensor. The params' low-precision values are set
  // from the loaded masters.
  void load_state_tensors(const NamedTensorList& state);

 private:
  std::vector<Tensor> grads() const;

  struct Slot {
    NamedTensor* param;
    Tensor master;     // fp32 (the param itself when it is fp32); undefined with `remainder`
    Tensor remainder;  // store_param_remainders, bf16 params: the master's low half (int16)
    Tensor exp_avg, exp_avg_sq;
    // The master is the bf16 weight + `remainder`.
    bool split() const { return remainder.defined(); }
    // The master is an fp32 tensor of its own beside a 16-bit weight.
    bool own_master() const { return master.defined() && master.raw() != param->value.raw(); }
    // State holds a master (".master"), and the param is a 16-bit copy the update refreshes.
    bool low_precision() const { return split() || own_master(); }
  };
  ops::Context& ctx_;
  AdamWConfig config_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
  GradSumOfSquares grad_sum_of_squares_;
};

}  // namespace primus

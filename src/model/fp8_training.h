// Fp8Training: the FP8 state of a model's linear layers (ops/fp8.h), one per model (stage).
//
// Which GEMMs run in FP8 (Transformer Engine's choice in Megatron): the layers' projections,
// attention qkv / proj (GQA; MLA's q / q_up / kv_up / proj) and the dense and shared-expert MLP
// fc1 / fc2, including MTP modules' layers. The embedding, the output layer, the MoE router,
// MLA's replicated down-projections, MTP's eh_proj and the routed experts' grouped GEMMs stay
// in bf16.
//
// Each FP8 linear keeps a scaling state (3, W) fp32 (ops/fp8.h has its layout), saved with the model as the buffer
// "<linear>._fp8_scaling" (e.g. decoder.layers.0.mlp.linear_fc1._fp8_scaling): a resumed run
// continues with the same scales. All states are views into one (L, 3, W) tensor, so
// the per-step work is one amax all-reduce and one kernel:
//
//   model.forward / backward ...        casts record their amax (delayed scaling)
//   optimizer step
//   fp8.end_step(ctx, groups)           amax max-reduced over the ranks that hold the same
//                                       linears, new scales from the history
//   (fp8.weights_changed() is part of end_step; call it alone after loading weights)
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "ops/fp8.h"
#include "parallel/communicator.h"
#include "parallel/named_tensor.h"

namespace primus {

inline constexpr const char* kFp8StateSuffix = "._fp8_scaling";

class Fp8Training {
 public:
  // linears: the weights whose GEMMs run in FP8 (names "....weight"), on `device`.
  Fp8Training(const ops::Fp8Options& options, const std::vector<NamedTensor*>& linears, Device device);
  Fp8Training(const Fp8Training&) = delete;
  Fp8Training& operator=(const Fp8Training&) = delete;

  // The FP8 linear of weight `w`, or null when w's GEMMs stay bf16.
  ops::Fp8Linear* find(const NamedTensor* w);
  // The scaling states as model buffers (saved and loaded with the weights).
  std::vector<NamedTensor*> state_tensors();
  size_t num_linears() const { return linears_.size(); }

  // After a step: the current amaxes max-reduced over each group in `groups` (ranks holding
  // the same linears: data / context / tensor parallel), delayed scaling's update, and the
  // weights marked changed.
  void end_step(ops::Context& ctx, const std::vector<parallel::Communicator*>& groups);
  void weights_changed() { ++options_.weights_generation; }

 private:
  ops::Fp8Options options_;
  Tensor metas_;  // (L, 3, W) fp32
  std::vector<ops::Fp8Linear> linears_;
  std::vector<NamedTensor> states_;
  std::unordered_map<const NamedTensor*, size_t> index_;
};

// The FP8 linear of weight `w` under `fp8` (null: an FP8-less run).
inline ops::Fp8Linear* fp8_linear_of(Fp8Training* fp8, const NamedTensor* w) {
  return fp8 != nullptr ? fp8->find(w) : nullptr;
}

// Is this parameter one Fp8Training takes (a layer projection of decoder_spec's table that
// runs through the tensor-parallel linears)? name: its full name.
bool fp8_linear_name(const std::string& name);

}  // namespace primus

// DecoderLayer: an attention block and an MLP block, as decoder_spec's LayerSpec says.
//
//   x_mid = x + attention(norm(x))        GqaAttention | MlaAttention
//   y     = x_mid + mlp(norm(x_mid))      DenseMlp | MoeMlp
//
// Recompute::Full is the layer's business (Megatron's full recompute keeps the layer input
// only and re-runs the layer in backward); None and Selective are passed to the blocks.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/attention_gqa.h"
#include "model/decoder_spec.h"

namespace primus {

struct LayerActivations {
  Tensor x;                                     // layer input (R,C), the residual stream's
  Tensor x_mid;                                 // after the attention block (R,C)
  std::unique_ptr<BlockActivations> attention, mlp;
  // The micro-batch's LoRA dropout (a training forward with lora_dropout > 0): the backward
  // (and a full recompute) draws the same masks from it.
  std::shared_ptr<const parallel::LoraDropout> lora_dropout;
};

class DecoderLayer {
 public:
  DecoderLayer(LayerSpec spec, std::unique_ptr<AttentionBlock> attention, std::unique_ptr<Block> mlp);

  const LayerSpec& spec() const { return spec_; }
  // The blocks (the layer owns them; they run on the parameters they point to).
  AttentionBlock& attention() const { return *attention_; }
  Block& mlp() const { return *mlp_; }
  // The layer's parameters in forward order (attention block's, then the MLP block's).
  std::vector<NamedTensor*> params() const;
  std::vector<NamedTensor*> overwritten_grads() const;

  // y (R,C) = layer(x); y allocated by the caller (before the call). Activations per `keep`
  // stay in env.arena; temporaries are released.
  void forward(LayerEnv& env, const Tensor& x, Tensor& y, LayerActivations& acts, Recompute keep);
  // dres (R,C): on entry d loss / d y, on exit d loss / d x. `kept` is the mode forward ran
  // with; Full re-runs the forward (arena space above the saved input, released on exit).
  void backward(LayerEnv& env, LayerActivations& acts, Tensor& dres, Recompute kept);

 private:
  LayerSpec spec_;
  std::unique_ptr<AttentionBlock> attention_;
  std::unique_ptr<Block> mlp_;
};

// A parameter by its full name (the model's NamedTensor); throws naming what is missing.
using ParamLookup = std::function<NamedTensor*(const std::string& name)>;

// The layer `spec` of model `c` over its parameters (found by name through `lookup`), with
// this rank's share of heads and inner features for `tp_size` tensor-parallel ranks.
// With `lora` set, the adapters of the targeted linears are found through lora->find (null
// when a linear has none) and scaled by lora->scaling (parallel/lora.h).
struct LoraBinding {
  std::function<NamedTensor*(const std::string& name)> find;
  float scaling = 1.f;
};
DecoderLayer make_decoder_layer(const ModelConfig& c, const LayerSpec& spec, const ParamLookup& lookup,
                                int tp_size, const LoraBinding* lora = nullptr);

}  // namespace primus

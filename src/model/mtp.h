// MtpModule: one depth of DeepSeek-V3's multi-token prediction (DeepSeek-AI 2024, section 2.2),
// with Megatron-core's names (mtp.layers.k.*) and explicit backward. R rows, C hidden.
//
//   e    = embedding(tokens rolled left by k+1)     the shared word embedding, (R, C)
//   u    = [RMSNorm(e) w_enorm | RMSNorm(h_prev) w_hnorm] W_eh^T      (R, 2C) -> (R, C)
//   h    = TransformerLayer(u)                      a decoder layer like the main ones (MLA, MoE)
//   z    = RMSNorm(h) w_final                       -> the shared output layer and cross-entropy
//                                                      against the labels rolled left by k+1
//
// h_prev is the main decoder's last layer output (before its final norm) for depth 0 and the
// previous depth's h after. Row i of depth k thus predicts token i + k + 2 from the hidden
// state of token i and the embedding of token i + k + 1; positions past the sequence's end
// carry no loss. DecoderModel adds mtp_loss_scaling_factor / mtp_num_layers times each
// depth's loss (normalised like the main loss) to the objective and reports each depth.
//
// Backward: dh = RMSNorm^T(dz) (+ d h from the next depth's h_prev path); the layer; du ->
// dW_eh and d[e_n | h_n]; de = RMSNorm^T (to the embedding); d h_prev += RMSNorm^T.
#pragma once

#include <vector>

#include "model/decoder_layer.h"

namespace primus {

class MtpModule {
 public:
  // Module `module` (0-based) of model `c`, over its parameters found through `lookup`.
  MtpModule(const ModelConfig& c, int64_t module, const ParamLookup& lookup, int tp_size);

  // enorm, hnorm, eh_proj, the layer's parameters, final_layernorm (decoder_spec's order).
  std::vector<NamedTensor*> params() const;
  std::vector<NamedTensor*> overwritten_grads() const;
  DecoderLayer& layer() { return layer_; }

  struct Acts {
    Tensor emb, e_rstd, h_prev, h_rstd, cat;  // cat (R, 2C) = [normed emb | normed h_prev]
    Tensor u;                                 // (R, C) the layer's input
    LayerActivations layer;
    Tensor out, f_rstd, normed;               // h (R, C), final norm stats, z (R, C)
  };
  // prev, emb (R, C) -> a.out and a.normed (allocated in env.arena).
  void forward(LayerEnv& env, const Tensor& prev, const Tensor& emb, Acts& a);
  // dnormed (R, C): d loss / d z; dout: d loss / d h from the next depth (or null). Writes
  // demb (R, C) and ADDS d loss / d h_prev into dprev (R, C).
  void backward(LayerEnv& env, Acts& a, const Tensor& dnormed, const Tensor* dout, Tensor& demb, Tensor& dprev);

 private:
  NamedTensor *enorm_, *hnorm_, *eh_proj_, *final_norm_;
  DecoderLayer layer_;
};

}  // namespace primus

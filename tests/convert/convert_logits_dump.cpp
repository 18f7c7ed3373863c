// convert_logits_dump: loads a Primus checkpoint the way `generate` and the training loop
// do (CheckpointReader + config::from_json + config::model_config + DecoderModel +
// checkpoint::load_tensors_into) and writes the CPU model's fp32 logits for given tokens.
//
//   convert_logits_dump <save_dir> <tokens.safetensors> <out.safetensors>
//       tokens.safetensors: "tokens" I32 or I64 (B,T); optionally "labels" I32 (B,T), every
//                           position a loss token
//       out.safetensors:    "logits" F32 (B,T,V); with labels also "loss" (the mean
//                           cross-entropy) and per multi-token-prediction depth k "mtp_loss.k"
//                           (that depth's own mean, DecoderModel::forward_only); metadata "model" = the loaded
//                           architecture as JSON (for the test's sanity checks; with
//                           MoE: num_experts, moe_router_topk, moe_ffn_hidden_size and
//                           moe_layers, the MoE blocks the model built)
//
// tests/convert/check_hf_import.py drives it against an independent PyTorch model.
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/safetensors.h"
#include "model/decoder.h"
#include "checkpoint/checkpoint.h"

using namespace primus;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s <save_dir> <tokens.safetensors> <out.safetensors>\n", argv[0]);
    return 2;
  }
  try {
    const checkpoint::CheckpointReader reader(argv[1]);
    const ModelConfig mc = config::model_config(config::from_json(reader.config()));
    auto ctx = ops::Context::cpu();
    DecoderModel model(mc, ctx);  // fp32 parameters; bf16/fp16 checkpoints convert exactly on load
    NamedTensorList targets;
    for (NamedTensor* p : model.parameters()) targets.emplace_back(p->name, p->value);
    for (NamedTensor* b : model.buffers()) targets.emplace_back(b->name, b->value);  // the MoE expert bias
    checkpoint::load_tensors_into(reader.model_file(), targets, /*strict=*/true);

    const SafetensorsFile in(argv[2]);
    Tensor tokens = in.load("tokens");
    if (tokens.dtype() == DType::I64) {
      Tensor t32 = Tensor::empty(tokens.shape(), DType::I32);
      for (int64_t i = 0; i < tokens.numel(); ++i) t32.data<int32_t>()[i] = static_cast<int32_t>(tokens.data<int64_t>()[i]);
      tokens = t32;
    }
    const Tensor logits = model.logits(tokens);
    NamedTensorList outputs = {{"logits", logits}};
    if (in.contains("labels")) {
      const Tensor labels = in.load("labels");
      const Tensor mask = Tensor::from_floats(std::vector<float>(static_cast<size_t>(labels.numel()), 1.f),
                                              labels.shape());
      const DecoderModel::StepResult r = model.forward_only(tokens, labels, mask);
      outputs.emplace_back("loss", Tensor::from_floats({static_cast<float>(r.loss_sum / r.num_tokens)}, {}));
      for (size_t k = 0; k < r.mtp_loss_sums.size(); ++k)
        outputs.emplace_back("mtp_loss." + std::to_string(k),
                             Tensor::from_floats({static_cast<float>(r.mtp_loss_sums[k] / r.mtp_num_tokens[k])}, {}));
    }
    nlohmann::json m = {{"num_layers", mc.num_layers},
                        {"hidden_size", mc.hidden_size},
                        {"num_attention_heads", mc.num_attention_heads},
                        {"num_query_groups", mc.num_query_groups},
                        {"head_dim", mc.head_dim()},
                        {"ffn_hidden_size", mc.ffn_hidden_size},
                        {"padded_vocab_size", mc.padded_vocab_size},
                        {"untie", mc.untie_embeddings_and_output_weights},
                        {"use_rope_scaling", mc.use_rope_scaling},
                        {"rotary_base", mc.rotary_base},
                        {"norm_epsilon", mc.norm_epsilon},
                        {"num_experts", mc.num_experts},
                        {"moe_router_topk", mc.moe_router_topk},
                        {"moe_ffn_hidden_size", mc.moe_ffn_hidden_size},
                        {"moe_layers", static_cast<int64_t>(model.moe_layers().size())},
                        {"mtp_num_layers", mc.mtp_num_layers}};
    save_safetensors(argv[3], outputs, {{"model", m.dump()}});
    std::printf("%s: logits %s\n", reader.path().c_str(), shape_str(logits.shape()).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

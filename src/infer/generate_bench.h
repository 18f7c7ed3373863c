// The generation benchmark behind bench/generate.cpp and `primus bench generate`: a decoder of
// a fixed shape with random weights, random prompts, infer::generate without early stop, one
// JSON object per batch size with throughput and the memory roofline of a decode step.
//
// Shapes: "tiny" (llama_tiny: 6 layers, hidden 384, 6/2 heads of 64, ffn 1024) and "1b"
// (Llama-3.2-1B: 16 layers, hidden 2048, 32/8 heads of 64, ffn 8192, RoPE base 500000 with
// llama3 scaling factor 32 / original 8192), both with a tied vocabulary of `vocab` rows.
// Weights N(0, 0.02), norms 1, made on the device in the compute dtype (bf16 on CUDA, fp32
// on CPU). Prompts: ids from CounterRng(7, 1).
//
// Fields of each result: prefill_tokens_per_s, decode_tokens_per_s, new_tokens_per_s (all new
// tokens / (prefill + decode seconds)), decode_ms_per_step, bytes_per_step (every weight once
// + the KV cache up to each sequence's position, mean over the steps), roofline_ms_per_step
// (bytes / hbm_gbps), roofline_fraction (roofline / measured), graph_steps and graph_failure
// (CUDA graphs), and the options. `warmup` rounds run first; then the best of `rounds`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "infer/sampling.h"
#include "model/model_config.h"

namespace primus::infer {

struct GenerateBenchOptions {
  std::string shape = "tiny";
  std::vector<int64_t> batches = {1, 4};
  int64_t prompt_len = 128, new_tokens = 64, vocab = 128256;
  int rounds = 3, warmup = 1;
  Device device = Device::CPU;
  SamplingOptions sampling;
  bool host_sampling = false;  // CUDA: the logits copied back and sampled on the host each step
  bool cuda_graphs = true;
  double hbm_gbps = 3350;  // H100 SXM
};

// The ModelConfig of a bench shape; throws naming the known shapes.
ModelConfig generate_bench_config(const std::string& shape, int64_t vocab);

// Runs every batch size, calling on_result with its JSON as soon as it is measured.
void run_generate_bench(const GenerateBenchOptions& o, const std::function<void(const nlohmann::json&)>& on_result);

}  // namespace primus::infer

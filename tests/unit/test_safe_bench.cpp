// src/safe without a GPU: model shapes for the GEMM benchmarks (checked against the PaLM
// 6*N*tokens count computed by hand), the report tables, and the CLI's "needs a GPU" answers.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "core/tensor.h"
#include "safe/model_shapes.h"
#include "safe/report_table.h"
#include "test_cli_util.h"

namespace primus::safe {
namespace {

TEST(SafeShapes, BuiltinMatchesThePeer) {
  const auto s = builtin_shape("llama3.2-1B");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->layers, 16);
  EXPECT_EQ(s->hidden, 2048);
  EXPECT_EQ(s->heads, 32);
  EXPECT_EQ(s->kv_heads, 8);
  EXPECT_EQ(s->head_dim, 64);
  EXPECT_EQ(s->ffn, 8192);
  EXPECT_EQ(s->vocab, 128256);
  EXPECT_FALSE(builtin_shape("nope").has_value());
}

TEST(SafeShapes, TrainingGemmsCountSixNPerToken) {
  DenseShape s = *builtin_shape("llama-tiny");
  const int64_t tokens = 16 * 1024;
  // Matmul parameters of the model, by hand: per layer qkv + o + gate_up + down, plus the head.
  const double d = 768, hd = 64, H = 12, KV = 4, F = 2048, V = 32000, L = 12;
  const double n_matmul = L * (d * (H + 2 * KV) * hd + d * H * hd + 2 * F * d + F * d) + V * d;
  for (bool untied : {true, false}) {
    s.untied_head = untied;
    const auto g = training_gemms(s, tokens);
    // 4 layer linears x (fwd, dgrad, wgrad) + the head's fwd, dgrad and its wgrad, written by the
    // first of 4 chunks of 4096 rows when untied (a tied head accumulates into the embedding grad).
    ASSERT_EQ(g.size(), untied ? 16u : 15u);
    double flops = 0;
    for (const auto& p : g) flops += p.flops() * static_cast<double>(p.count);
    EXPECT_DOUBLE_EQ(flops, 6.0 * n_matmul * tokens);
    for (const auto& p : g) {
      const bool head = p.label.rfind("lm_head", 0) == 0;
      if (head) EXPECT_EQ(p.label.find("wgrad") != std::string::npos ? p.k : p.m, 4096) << p.label;
      if (p.label.find("wgrad") != std::string::npos) {
        EXPECT_TRUE(p.ta && !p.tb && p.out == DType::F32) << p.label;
        if (!head) {  // the step's first micro-batch writes the layer weight gradients
          EXPECT_EQ(p.k, tokens);
          EXPECT_FALSE(p.accumulate) << p.label;
        }
      }
      // The output projections add the residual in the GEMM epilogue (beta = 1, C != D).
      if (p.label == "attn_out fwd" || p.label == "down fwd") EXPECT_TRUE(p.accumulate) << p.label;
      if (p.label == "qkv fwd" || p.label == "gate_up fwd") EXPECT_FALSE(p.accumulate) << p.label;
    }
  }
  // A token count that is not a multiple of the chunk adds a shorter last chunk.
  const auto odd = training_gemms(s, 5000);
  int64_t head_rows = 0;
  for (const auto& p : odd)
    if (p.label == "lm_head fwd") head_rows += p.m * p.count;
  EXPECT_EQ(head_rows, 5000);
}

// An MoE model's list adds the routed experts' GEMMs at the even share of the routed rows
// (tokens x top-k / experts, one GEMM per expert): with that share whole, the list's FLOPs are
// 6 x the active matmul parameters x tokens, like a dense model's (mixtral-mini: 8 experts,
// top-2, 8192 tokens -> 2048 rows per expert).
TEST(SafeShapes, MoeTrainingGemmsCountSixActiveN) {
  const ModelConfig m = resolve_model("mixtral-mini");
  ASSERT_EQ(m.num_experts, 8);
  const int64_t tokens = 4 * 2048;
  const auto g = training_gemms(m, tokens);
  double flops = 0;
  bool experts = false;
  for (const auto& p : g) {
    flops += p.flops() * static_cast<double>(p.count);
    if (p.label.rfind("experts gate_up fwd", 0) == 0) {
      experts = true;
      EXPECT_EQ(p.m, tokens * 2 / 8);
      EXPECT_EQ(p.count, 8 * 8);  // 8 experts x 8 layers
    }
  }
  EXPECT_TRUE(experts);
  // Active matmul parameters without the router (its GEMM is not in the list: fp32 logits of
  // E columns): attention, the two chosen experts, the output layer.
  const double d = 2048, L = 8, k = 2, F = 5632, V = 32000;
  const double n_active = L * (d * (32 + 2 * 8) * 64 + d * d + k * 3 * d * F) + V * d;
  EXPECT_DOUBLE_EQ(flops, 6.0 * n_active * tokens);
}

TEST(SafeShapes, ZooYamlFollowsExtends) {
  const DenseShape s = resolve_shape("llama3.2_1B");
  EXPECT_EQ(s.layers, 16);
  EXPECT_EQ(s.hidden, 2048);
  EXPECT_EQ(s.heads, 32);
  EXPECT_EQ(s.kv_heads, 8);   // group_query_attention from llama3_base.yaml
  EXPECT_EQ(s.vocab, 128256);  // vocab_size from llama3_base.yaml, already a multiple of 128
  EXPECT_FALSE(s.untied_head);
  try {
    (void)resolve_shape("no_such_model");
    FAIL() << "unknown model must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_model"), std::string::npos);
  }
}

TEST(SafeShapes, FlagsOverrideAndValidate) {
  ShapeFlags f;
  f.model = "llama3.2-1B";
  f.ffn = 4096;
  EXPECT_EQ(shape_from_flags(f, "llama-tiny").ffn, 4096);
  ShapeFlags custom;
  custom.layers = 2;
  custom.hidden = 256;
  custom.heads = 4;
  const DenseShape c = shape_from_flags(custom, "llama-tiny");
  EXPECT_EQ(c.kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  custom.kv_heads = 3;
  EXPECT_THROW(shape_from_flags(custom, "llama-tiny"), Error);
}

TEST(SafeReport, Formats) {
  const std::vector<nlohmann::json> rows = {{{"op", "a"}, {"us", 1.5}, {"n", 3}}, {{"op", "b"}, {"us", 2e-5}}};
  EXPECT_EQ(table_to_string(rows, {"op", "us", "n"}, TableFormat::Csv), "op,us,n\na,1.5,3\nb,2.000e-05,\n");
  const std::string md = table_to_string(rows, {"op", "us"}, TableFormat::Markdown);
  EXPECT_EQ(md, "| op | us |\n| --- | --- |\n| a | 1.5 |\n| b | 2.000e-05 |\n");
  const std::string jl = table_to_string(rows, {"op"}, TableFormat::Jsonl);
  EXPECT_EQ(jl, rows[0].dump() + "\n" + rows[1].dump() + "\n");
  EXPECT_THROW(parse_table_format("xml"), Error);
}

int run_primus(const std::string& args, std::string& output) {
  const test::CliRun r = test::run_shell(std::string(PRIMUS_BINARY) + " " + args);
  output += r.output;
  return r.code;
}

TEST(SafeCli, GpuCommandsSayTheyNeedAGpu) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present: these commands would run for real";
  for (const char* args : {"bench gemm --m 64 --n 64 --k 64", "bench attention", "tune --model-config llama-tiny",
                           "preflight --quick --output-dir /tmp/primus_preflight_unit"}) {
    std::string out;
    EXPECT_EQ(run_primus(args, out), 2) << args << "\n" << out;
    EXPECT_TRUE(out.find("CUDA") != std::string::npos || out.find("GPU") != std::string::npos) << out;
  }
  std::string out;
  EXPECT_EQ(run_primus("bench gemm --trans XY", out), 1) << out;  // a usage error names the flag
  EXPECT_NE(out.find("--trans"), std::string::npos) << out;
}

}  // namespace
}  // namespace primus::safe

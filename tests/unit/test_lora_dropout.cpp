// LoRA dropout (lora_dropout > 0; parallel/lora.h): the counter-based mask op (its pieces under
// any row / column split equal the whole, kept share and scale), the row keys (a sample's key
// does not depend on the micro-batch it rides in), and the model: p = 0 changes nothing,
// evaluation does not drop, the masks follow the samples across micro-batch splits and are
// recomputed identically by full recompute. The adapted model's values and gradients under
// dropout are checked against PyTorch in tests/reference/check_llama.py (gqa_lora_dropout*).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>

#include "../test_util.h"
#include "config/config.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/decoder.h"
#include "ops/dropout.h"
#include "ops/ops.h"
#include "parallel/lora.h"
#include "train/train_options.h"

using namespace primus;

namespace {

using test::error_of;

ModelConfig tiny() { return test::tiny_llama({.name = "lora_dropout_tiny"}); }

ops::DropoutMask mask_of(double p, int64_t T, std::vector<uint64_t> keys) {
  ops::DropoutMask m;
  m.key = parallel::lora_dropout_key(5, "decoder.layers.0.mlp.linear_fc1.lora_A.weight");
  m.threshold = ops::dropout_threshold(p);
  m.scale = static_cast<float>(1.0 / (1.0 - p));
  m.T = T;
  m.row_keys = std::move(keys);
  return m;
}

Tensor ramp(int64_t rows, int64_t cols) {
  Tensor x = Tensor::empty({rows, cols}, DType::F32);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = 0.5f + static_cast<float>(i % 97) * 0.01f;
  return x;
}

struct Outcome {
  double loss = 0;
  std::map<std::string, std::vector<float>> grads;
};

DecoderOptions lora_options(Recompute recompute = Recompute::None) {
  DecoderOptions o;
  o.seed = 11;
  o.recompute = recompute;
  o.lora.rank = 4;
  o.lora.alpha = 8;
  return o;
}

void randomize_b(DecoderModel& m) {  // B = 0 at init: random B gives every adapter a gradient
  for (NamedTensor* p : m.parameters())
    if (p->name.find("lora_B") != std::string::npos) CounterRng(9, stream_id(p->name)).fill_normal(p->value, 0.f, 0.3f);
}

struct Data {
  Tensor tokens, labels, mask;
};

Data rows(int64_t B, int64_t T, int64_t first) {
  Data d{Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::F32)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t, g = (first + b) * T + t;
      d.tokens.data<int32_t>()[i] = static_cast<int32_t>((g * 7 + 3) % 32);
      d.labels.data<int32_t>()[i] = static_cast<int32_t>((g * 5 + 1) % 32);
      d.mask.data<float>()[i] = 1.f;
    }
  return d;
}

// One forward_backward per micro-batch of `split` rows (of 4 rows of samples 10..13), dropout p.
Outcome train_rows(double p, int64_t split, Recompute recompute = Recompute::None, bool with_dropout = true) {
  ops::Context ctx = ops::Context::cpu();
  DecoderModel m(tiny(), ctx, lora_options(recompute));
  randomize_b(m);
  m.zero_grads();
  Outcome r;
  const int64_t T = 8;
  for (int64_t first = 0; first < 4; first += split) {
    const Data d = rows(split, T, first);
    std::vector<int64_t> samples;
    for (int64_t b = 0; b < split; ++b) samples.push_back(10 + first + b);
    const parallel::LoraDropout drop{p, 11, parallel::lora_dropout_row_keys(6, samples, split)};
    MicroBatchExtras e;
    if (with_dropout) e.lora_dropout = &drop;
    r.loss += m.forward_backward(d.tokens, d.labels, d.mask, 1.f / 32, 0.f, e).loss_sum;
  }
  r.grads = test::grads_of(m);
  return r;
}

// The largest gradient difference, relative to a's gradient.
double max_rel_diff(const Outcome& a, const Outcome& b) {
  double worst = 0;
  for (const auto& [name, ga] : a.grads) worst = std::max(worst, test::max_rel_error(b.grads.at(name), ga));
  return worst;
}

}  // namespace

TEST(LoraDropout, MaskPiecesEqualTheWholeAndKeepOneMinusP) {
  ops::Context ctx = ops::Context::cpu();
  const int64_t B = 3, T = 5, C = 22;
  const double p = 0.3;
  const ops::DropoutMask whole = mask_of(p, T, {1, 2, 0xFFFFFFFFFFFFFFF0ull});
  const Tensor x = ramp(B * T, C);
  Tensor y = Tensor::empty(x.shape(), DType::F32);
  ops::dropout(ctx, y, x, whole);
  int64_t kept = 0;
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const float xv = x.data<float>()[n * C + c], yv = y.data<float>()[n * C + c];
      const bool keep = ops::dropout_keeps(whole, n, c);
      kept += keep;
      ASSERT_EQ(yv, keep ? xv * whole.scale : 0.f) << n << "," << c;
    }
  const double share = static_cast<double>(kept) / static_cast<double>(B * T * C);
  EXPECT_NEAR(share, 1 - p, 0.08);
  // A block of rows and columns (a sequence-parallel rank's rows, a row-parallel rank's input
  // features) draws exactly its piece of the whole mask.
  const int64_t r0 = 4, r1 = 13, c0 = 3, c1 = 17;
  Tensor piece = Tensor::empty({r1 - r0, c1 - c0}, DType::F32), out = piece.clone();
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) piece.data<float>()[(r - r0) * (c1 - c0) + c - c0] = x.data<float>()[r * C + c];
  ops::DropoutMask part = whole;
  part.first_row = r0;
  part.first_col = c0;
  ops::dropout(ctx, out, piece, part);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c)
      ASSERT_EQ(out.data<float>()[(r - r0) * (c1 - c0) + c - c0], y.data<float>()[r * C + c]) << r << "," << c;
  // In place (the backward masks its gradient where it lies); p = 0 keeps everything as is.
  Tensor z = x.clone();
  ops::dropout(ctx, z, z, whole);
  EXPECT_EQ(z.to_float_vector(), y.to_float_vector());
  Tensor id = x.clone();
  ops::dropout(ctx, id, id, mask_of(0.0, T, {1, 2, 3}));
  EXPECT_EQ(id.to_float_vector(), x.to_float_vector());
  EXPECT_THROW(ops::dropout_threshold(1.0), Error);
}

TEST(LoraDropout, ContextParallelColumnsDrawTheWholeSequencesMask) {
  // Rows of 8 tokens cut for 2 cp ranks: rank 0 holds positions 0-1 and 6-7, rank 1 2-5
  // (chunks i and 2 CP - 1 - i of 2). Each rank's element (row b, local column t, feature c) is
  // the whole row's element at that position, so the mask does not depend on the split.
  const ops::DropoutMask whole = mask_of(0.4, 8, {3, 0xABCDEF0123ull});
  const int64_t positions[2][4] = {{0, 1, 6, 7}, {2, 3, 4, 5}};
  int64_t dropped = 0;
  for (int rank = 0; rank < 2; ++rank) {
    ops::DropoutMask local = whole;
    local.T = 4;
    local.cp_rank = rank;
    local.cp_size = 2;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t t = 0; t < 4; ++t)
        for (int64_t c = 0; c < 13; ++c) {
          const bool keep = ops::dropout_keeps(local, b * 4 + t, c);
          ASSERT_EQ(keep, ops::dropout_keeps(whole, b * 8 + positions[rank][t], c)) << rank << "," << b << "," << t;
          dropped += keep ? 0 : 1;
        }
    // The op draws the same mask as dropout_keeps.
    ops::Context ctx = ops::Context::cpu();
    const Tensor x = ramp(8, 13);
    Tensor y = Tensor::empty(x.shape(), DType::F32);
    ops::dropout(ctx, y, x, local);
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t c = 0; c < 13; ++c)
        ASSERT_EQ(y.data<float>()[n * 13 + c] != 0.f, ops::dropout_keeps(local, n, c)) << rank << "," << n << "," << c;
  }
  EXPECT_GT(dropped, 0);
}

TEST(LoraDropout, RowKeysFollowTheSampleNotTheMicroBatch) {
  using parallel::lora_dropout_row_keys;
  const std::vector<uint64_t> two = lora_dropout_row_keys(4, {5, 9}, 2);
  EXPECT_EQ(lora_dropout_row_keys(4, {9}, 1)[0], two[1]);  // another data-parallel split
  EXPECT_EQ(lora_dropout_row_keys(4, {5}, 1)[0], two[0]);
  EXPECT_NE(two[0], two[1]);
  EXPECT_NE(lora_dropout_row_keys(5, {5}, 1)[0], two[0]);  // the next step draws new masks
  // DPO: rows [0, mb) chosen, [mb, 2 mb) rejected of the same samples; each row its own key.
  const std::vector<uint64_t> dpo = lora_dropout_row_keys(4, {5, 9}, 4);
  EXPECT_EQ(lora_dropout_row_keys(4, {9}, 2)[1], dpo[3]);
  EXPECT_EQ(dpo[0], two[0]);
  EXPECT_NE(dpo[2], dpo[0]);
  EXPECT_THROW(lora_dropout_row_keys(4, {5, 9}, 3), Error);
}

TEST(LoraDropout, ZeroProbabilityChangesNothing) {
  const Outcome without = train_rows(0.0, 2, Recompute::None, false);
  const Outcome zero = train_rows(0.0, 2);
  EXPECT_EQ(without.loss, zero.loss);
  EXPECT_EQ(without.grads, zero.grads);
}

TEST(LoraDropout, TrainingDropsEvaluationDoesNot) {
  const Outcome without = train_rows(0.0, 2, Recompute::None, false);
  const Outcome dropped = train_rows(0.4, 2);
  EXPECT_NE(without.loss, dropped.loss);
  EXPECT_GT(max_rel_diff(without, dropped), 1e-3);
  // forward_only and logits (evaluation, generation's reference) ignore the dropout.
  ops::Context ctx = ops::Context::cpu();
  DecoderModel m(tiny(), ctx, lora_options());
  randomize_b(m);
  const Data d = rows(2, 8, 0);
  const parallel::LoraDropout drop{0.4, 11, parallel::lora_dropout_row_keys(6, {10, 11}, 2)};
  MicroBatchExtras e;
  e.lora_dropout = &drop;
  EXPECT_EQ(m.forward_only(d.tokens, d.labels, d.mask, e).loss_sum, m.forward_only(d.tokens, d.labels, d.mask).loss_sum);
}

TEST(LoraDropout, MasksFollowSamplesAcrossSplitsAndRecompute) {
  // 4 rows as one micro-batch, as two of 2 and as four of 1 (other data-parallel / accumulation
  // splits): the same masks, so the same gradient up to summation order.
  const Outcome one = train_rows(0.4, 4), two = train_rows(0.4, 2), four = train_rows(0.4, 1);
  EXPECT_NEAR(one.loss, two.loss, 1e-4 * std::fabs(one.loss));
  EXPECT_NEAR(one.loss, four.loss, 1e-4 * std::fabs(one.loss));
  EXPECT_LT(max_rel_diff(one, two), 1e-5);
  EXPECT_LT(max_rel_diff(one, four), 1e-5);
  // Full and selective recompute draw the masks again in the backward: the same gradients.
  EXPECT_LT(max_rel_diff(one, train_rows(0.4, 4, Recompute::Full)), 1e-6);
  EXPECT_LT(max_rel_diff(one, train_rows(0.4, 4, Recompute::Selective)), 1e-6);
}

// The keys: lora_dropout reaches LoraSpec::dropout; refused outside [0, 1), without peft: lora, with
// grpo, and on an MoE model's experts (linear_fc1 / linear_fc2 targeted).
TEST(LoraDropout, KeysAcceptedAndRefusedByName) {
  const std::string exp = std::string(PRIMUS_SOURCE_DIR) + "/tests/posttrain/letters-sft.yaml";
  setenv("PRIMUS_TEST_WORKSPACE", "/tmp/primus_test_lora_dropout_ws", 1);
  setenv("PRIMUS_TEST_DATA", "/tmp", 1);
  setenv("PRIMUS_TEST_TOKENIZER", (std::string(PRIMUS_SOURCE_DIR) + "/tests/data/posttrain/chatml_bytes").c_str(), 1);
  auto options = [&](std::vector<std::string> sets) {
    config::Config cfg = config::load_experiment(exp, sets, 0);
    return train::train_options(cfg, false);
  };
  EXPECT_DOUBLE_EQ(options({"peft=lora", "lora_dropout=0.1"}).lora.dropout, 0.1);
  EXPECT_DOUBLE_EQ(options({"peft=lora"}).lora.dropout, 0.0);
  EXPECT_NE(error_of([&] { options({"lora_dropout=0.1"}); }).find("peft is none"), std::string::npos);
  EXPECT_NE(error_of([&] { options({"peft=lora", "lora_dropout=0.1", "grpo=true"}); }).find("grpo"), std::string::npos);
  EXPECT_NE(error_of([&] {
              options({"peft=lora", "lora_dropout=0.1", "num_experts=4", "moe_router_topk=2", "moe_ffn_hidden_size=64"});
            }).find("routed experts"),
            std::string::npos);
  EXPECT_EQ(error_of([&] {
              options({"peft=lora", "lora_dropout=0.1", "num_experts=4", "moe_router_topk=2", "moe_ffn_hidden_size=64",
                       "lora_target_modules=[linear_qkv,linear_proj]"});
            }),
            "");
}

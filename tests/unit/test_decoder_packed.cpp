// Packed rows at the model level (reset_position_ids + reset_attention_mask, SFT packing): a row
// holding several documents must give each document's token losses and gradients exactly as
// if it were trained alone, for every attention block (GQA, and MLA with and without a query
// latent). The reference is the same model run on each document as its own sequence.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "../test_util.h"
#include "model/decoder.h"
#include "ops/ops.h"

namespace primus {
namespace {

ModelConfig mla(bool q_latent) {
  ModelConfig c = test::tiny_llama({.name = q_latent ? "mla_v3_style" : "mla_v2_lite_style", .vocab = 29});
  c.multi_latent_attention = true;
  c.kv_lora_rank = 10;
  c.q_lora_rank = q_latent ? 7 : 0;
  c.qk_head_dim = 6;
  c.qk_pos_emb_head_dim = 4;
  c.v_head_dim = 5;
  c.qk_layernorm = true;
  return c;
}

struct Rows {
  Tensor tokens, labels, mask;
};

Rows rows_of(const std::vector<int32_t>& ids, int64_t vocab) {
  const auto T = static_cast<int64_t>(ids.size());
  Rows r{Tensor::empty({1, T}, DType::I32), Tensor::empty({1, T}, DType::I32), Tensor::empty({1, T}, DType::F32)};
  for (int64_t t = 0; t < T; ++t) {
    r.tokens.data<int32_t>()[t] = ids[static_cast<size_t>(t)];
    r.labels.data<int32_t>()[t] = static_cast<int32_t>((ids[static_cast<size_t>(t)] * 5 + 3) % vocab);
    r.mask.data<float>()[t] = 1.f;
  }
  return r;
}

struct Outcome {
  std::vector<float> token_losses;
  std::map<std::string, std::vector<float>> grads;
};

// Documents of `lengths` tokens, either packed into one row or each run as its own sequence.
Outcome run(const ModelConfig& c, const std::vector<int64_t>& lengths, bool packed) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions o;
  o.seed = 5;
  DecoderModel m(c, ctx, o);
  m.zero_grads();
  std::vector<std::vector<int32_t>> docs;
  int32_t next = 1;
  for (int64_t n : lengths) {
    std::vector<int32_t> d;
    for (int64_t t = 0; t < n; ++t) d.push_back(next = static_cast<int32_t>((next * 7 + 2) % c.vocab_size));
    docs.push_back(d);
  }
  Outcome out;
  MicroBatchExtras e;
  e.keep_token_losses = true;
  if (!packed) {
    for (const auto& d : docs) {
      const Rows r = rows_of(d, c.vocab_size);
      const DecoderModel::StepResult s = m.forward_backward(r.tokens, r.labels, r.mask, 0.1f, 0.f, e);
      out.token_losses.insert(out.token_losses.end(), s.token_losses.begin(), s.token_losses.end());
    }
  } else {
    std::vector<int32_t> all, pos, seg;
    for (size_t i = 0; i < docs.size(); ++i)
      for (size_t t = 0; t < docs[i].size(); ++t) {
        all.push_back(docs[i][t]);
        pos.push_back(static_cast<int32_t>(t));
        seg.push_back(static_cast<int32_t>(i));
      }
    const Rows r = rows_of(all, c.vocab_size);
    const auto T = static_cast<int64_t>(all.size());
    Tensor positions = Tensor::empty({1, T}, DType::I32), segments = Tensor::empty({1, T}, DType::I32);
    std::copy(pos.begin(), pos.end(), positions.data<int32_t>());
    std::copy(seg.begin(), seg.end(), segments.data<int32_t>());
    e.positions = &positions;
    e.segments = &segments;
    out.token_losses = m.forward_backward(r.tokens, r.labels, r.mask, 0.1f, 0.f, e).token_losses;
  }
  out.grads = test::grads_of(m);
  return out;
}

void expect_packed_equals_alone(const ModelConfig& c) {
  const std::vector<int64_t> lengths = {5, 9, 2};
  const Outcome alone = run(c, lengths, false), packed = run(c, lengths, true);
  ASSERT_EQ(packed.token_losses.size(), alone.token_losses.size());
  EXPECT_LT(test::max_rel_error(packed.token_losses, alone.token_losses), 1e-5) << c.name;
  for (const auto& [name, g] : alone.grads)
    EXPECT_LT(test::max_rel_error(packed.grads.at(name), g), 1e-4) << c.name << " " << name;
}

TEST(DecoderPacked, GqaRowEqualsEachDocumentAlone) {
  expect_packed_equals_alone(test::tiny_llama({.name = "gqa", .vocab = 29}));
}

TEST(DecoderPacked, MlaRowEqualsEachDocumentAlone) {
  expect_packed_equals_alone(mla(true));
  expect_packed_equals_alone(mla(false));
}

}  // namespace
}  // namespace primus

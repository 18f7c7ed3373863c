// Packed sequences on the CPU backend (issue 15: SFT packing, Megatron's reset_attention_mask /
// reset_position_ids): document-masked attention and per-token RoPE tables.
//
// The references are identities, not a second implementation of the mask: attention over a
// row of packed documents must equal attention over each document run as its own shorter
// sequence, and RoPE with per-token tables gathered from positions that restart at 0 must
// equal RoPE of each document with the ordinary tables of its own length.
#include <cstring>
#include <random>

#include "core/error.h"
#include "test_ops_util.h"

using namespace primus;
using namespace primus::test;

namespace {

// A random split of T tokens into documents: lengths >= 1, often 1 (length-1 documents are
// the edge case), sometimes long. Returns the document starts, ending with T.
std::vector<int64_t> random_split(int64_t T, std::mt19937& rng) {
  std::vector<int64_t> starts{0};
  std::uniform_int_distribution<int> kind(0, 3);
  while (starts.back() < T) {
    const int64_t left = T - starts.back();
    int64_t len = 1;
    switch (kind(rng)) {
      case 0: len = 1; break;
      case 1: len = 1 + static_cast<int64_t>(rng() % 5); break;
      default: len = 1 + static_cast<int64_t>(rng() % static_cast<uint32_t>(std::max<int64_t>(T / 2, 1))); break;
    }
    starts.push_back(starts.back() + std::min(len, left));
  }
  return starts;
}

// (B,T) int32 ids from the splits of each row: non-decreasing, not contiguous (ids jump by 1..3
// and start at a row-dependent value, so only equality of ids may matter).
Tensor segment_ids(const std::vector<std::vector<int64_t>>& splits, int64_t T) {
  const int64_t B = static_cast<int64_t>(splits.size());
  Tensor s = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    const auto& st = splits[static_cast<size_t>(b)];
    int32_t id = static_cast<int32_t>(7 * b);
    for (size_t d = 0; d + 1 < st.size(); ++d) {
      for (int64_t t = st[d]; t < st[d + 1]; ++t) s.data<int32_t>()[b * T + t] = id;
      id += 1 + static_cast<int32_t>(d % 3);
    }
  }
  return s;
}

// Rows [s, e) of batch row b of a (B,T,...) fp32 tensor as a (1, e-s, ...) tensor.
Tensor take_rows(const Tensor& x, int64_t b, int64_t s, int64_t e) {
  const int64_t T = x.size(1), inner = x.numel() / (x.size(0) * T);
  Shape shape = x.shape();
  shape[0] = 1;
  shape[1] = e - s;
  Tensor out = Tensor::empty(shape, DType::F32);
  std::memcpy(out.data<float>(), x.data<float>() + (b * T + s) * inner, static_cast<size_t>((e - s) * inner) * 4);
  return out;
}
// The same rows of a (B,T,...) tensor read back, for comparisons.
std::vector<float> rows_of(const Tensor& x, int64_t b, int64_t s, int64_t e) {
  return take_rows(x, b, s, e).to_float_vector();
}
// lse (B,H,T): columns [s, e) of batch b as (H, e-s).
std::vector<float> lse_cols(const Tensor& lse, int64_t b, int64_t s, int64_t e) {
  const int64_t H = lse.size(1), T = lse.size(2);
  std::vector<float> out;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = s; t < e; ++t) out.push_back(lse.data<float>()[(b * H + h) * T + t]);
  return out;
}

struct AttnShape {
  int64_t B, T, Hq, Hkv, D, Dv;
};

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// Packed attention (forward and backward) on random splits == each document on its own.
void check_packed_equals_per_document(const AttnShape& s, bool causal, uint64_t seed) {
  auto ctx = ops::Context::cpu();
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<std::vector<int64_t>> splits;
  for (int64_t b = 0; b < s.B; ++b) splits.push_back(random_split(s.T, rng));
  const Tensor seg = segment_ids(splits, s.T);
  Tensor q = randn({s.B, s.T, s.Hq, s.D}, seed * 10 + 1), k = randn({s.B, s.T, s.Hkv, s.D}, seed * 10 + 2),
         v = randn({s.B, s.T, s.Hkv, s.Dv}, seed * 10 + 3), dout = randn({s.B, s.T, s.Hq, s.Dv}, seed * 10 + 4);
  const float scale = 1.f / std::sqrt(static_cast<float>(s.D));
  Tensor out = Tensor::empty({s.B, s.T, s.Hq, s.Dv}, DType::F32), lse = Tensor::empty({s.B, s.Hq, s.T}, DType::F32);
  ops::attention_forward(ctx, out, lse, q, k, v, scale, causal, &seg);
  Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
         dv = Tensor::empty(v.shape(), DType::F32);
  ops::attention_backward(ctx, dq, dk, dv, dout, q, k, v, out, lse, scale, causal, &seg);

  for (int64_t b = 0; b < s.B; ++b) {
    const auto& st = splits[static_cast<size_t>(b)];
    for (size_t d = 0; d + 1 < st.size(); ++d) {
      const int64_t a = st[d], e = st[d + 1], L = e - a;
      const std::string what = "b=" + std::to_string(b) + " doc [" + std::to_string(a) + "," + std::to_string(e) +
                               ") T=" + std::to_string(s.T) + (causal ? " causal" : " full");
      Tensor q1 = take_rows(q, b, a, e), k1 = take_rows(k, b, a, e), v1 = take_rows(v, b, a, e),
             do1 = take_rows(dout, b, a, e);
      Tensor o1 = Tensor::empty({1, L, s.Hq, s.Dv}, DType::F32), l1 = Tensor::empty({1, s.Hq, L}, DType::F32);
      ops::attention_forward(ctx, o1, l1, q1, k1, v1, scale, causal);
      Tensor dq1 = Tensor::empty(q1.shape(), DType::F32), dk1 = Tensor::empty(k1.shape(), DType::F32),
             dv1 = Tensor::empty(v1.shape(), DType::F32);
      ops::attention_backward(ctx, dq1, dk1, dv1, do1, q1, k1, v1, o1, l1, scale, causal);
      EXPECT_LT(max_rel_error(rows_of(out, b, a, e), o1.to_float_vector()), 1e-5) << "out " << what;
      EXPECT_LT(max_rel_error(lse_cols(lse, b, a, e), l1.to_float_vector()), 1e-5) << "lse " << what;
      if (L == 1) {
        // One key: the softmax is constant, so dq and dk are 0 up to rounding (dS = dP - rowsum(dO O)
        // with O = v), on either side: fp32 noise of O(1) terms (the inputs are standard normal).
        EXPECT_LT(max_abs(rows_of(dq, b, a, e)), 1e-5) << "dq " << what;
        EXPECT_LT(max_abs(rows_of(dk, b, a, e)), 1e-5) << "dk " << what;
        EXPECT_LT(max_abs(dq1.to_float_vector()), 1e-5) << "dq alone " << what;
      } else {
        EXPECT_LT(max_rel_error(rows_of(dq, b, a, e), dq1.to_float_vector()), 1e-4) << "dq " << what;
        EXPECT_LT(max_rel_error(rows_of(dk, b, a, e), dk1.to_float_vector()), 1e-4) << "dk " << what;
      }
      EXPECT_LT(max_rel_error(rows_of(dv, b, a, e), dv1.to_float_vector()), 1e-4) << "dv " << what;
    }
  }
}

void tables(Tensor& cos, Tensor& sin, int64_t T, int64_t R) {
  ops::rope_tables(cos, sin, T, ops::rope_inv_freq(R, 10000.f, {}));
}

// Positions that restart at 0 at every document start, as (B,T) int32.
Tensor positions_of(const std::vector<std::vector<int64_t>>& splits, int64_t T) {
  const int64_t B = static_cast<int64_t>(splits.size());
  Tensor p = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    const auto& st = splits[static_cast<size_t>(b)];
    for (size_t d = 0; d + 1 < st.size(); ++d)
      for (int64_t t = st[d]; t < st[d + 1]; ++t) p.data<int32_t>()[b * T + t] = static_cast<int32_t>(t - st[d]);
  }
  return p;
}

}  // namespace

TEST(OpsPacked, AttentionEqualsEachDocumentAlone) {
  // GQA (4 query heads on 2 kv heads), Dv != D (MLA-like), T across the CPU's 128-row blocks.
  const AttnShape shapes[] = {{2, 37, 4, 2, 8, 8}, {1, 300, 2, 1, 16, 12}, {3, 64, 6, 3, 8, 8}, {1, 1, 2, 2, 4, 4}};
  uint64_t seed = 1;
  for (const AttnShape& s : shapes)
    for (bool causal : {true, false})
      for (int rep = 0; rep < 3; ++rep) check_packed_equals_per_document(s, causal, seed++);
}

TEST(OpsPacked, OneDocumentIsThePlainKernel) {
  auto ctx = ops::Context::cpu();
  const int64_t B = 2, T = 150, H = 2, D = 8;
  Tensor q = randn({B, T, H, D}, 1), k = randn({B, T, H, D}, 2), v = randn({B, T, H, D}, 3),
         dout = randn({B, T, H, D}, 4);
  Tensor seg = Tensor::empty({B, T}, DType::I32);
  for (int64_t i = 0; i < B * T; ++i) seg.data<int32_t>()[i] = static_cast<int32_t>(i / T) * 5;
  for (bool causal : {true, false}) {
    Tensor o0 = Tensor::empty(q.shape(), DType::F32), l0 = Tensor::empty({B, H, T}, DType::F32);
    Tensor o1 = o0.clone(), l1 = l0.clone();
    ops::attention_forward(ctx, o0, l0, q, k, v, 0.3f, causal);
    ops::attention_forward(ctx, o1, l1, q, k, v, 0.3f, causal, &seg);
    EXPECT_EQ(o0.to_float_vector(), o1.to_float_vector());
    EXPECT_EQ(l0.to_float_vector(), l1.to_float_vector());
    Tensor dq0 = Tensor::empty(q.shape(), DType::F32), dk0 = dq0.clone(), dv0 = dq0.clone();
    Tensor dq1 = dq0.clone(), dk1 = dq0.clone(), dv1 = dq0.clone();
    ops::attention_backward(ctx, dq0, dk0, dv0, dout, q, k, v, o0, l0, 0.3f, causal);
    ops::attention_backward(ctx, dq1, dk1, dv1, dout, q, k, v, o1, l1, 0.3f, causal, &seg);
    EXPECT_EQ(dq0.to_float_vector(), dq1.to_float_vector());
    EXPECT_EQ(dk0.to_float_vector(), dk1.to_float_vector());
    EXPECT_EQ(dv0.to_float_vector(), dv1.to_float_vector());
  }
}

TEST(OpsPacked, AttentionGradientMatchesFiniteDifferences) {
  auto ctx = ops::Context::cpu();
  const int64_t B = 2, T = 7, Hq = 2, Hkv = 1, D = 4;
  const Tensor seg = ints({0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 6, 6}, {B, T});
  for (bool causal : {true, false}) {
    Tensor q = randn({B, T, Hq, D}, 21), k = randn({B, T, Hkv, D}, 22), v = randn({B, T, Hkv, D}, 23);
    Tensor wy = randn({B, T, Hq, D}, 24);
    Tensor out = Tensor::empty({B, T, Hq, D}, DType::F32), lse = Tensor::empty({B, Hq, T}, DType::F32);
    auto loss = [&] {
      ops::attention_forward(ctx, out, lse, q, k, v, 0.5f, causal, &seg);
      return weighted_sum(out, wy);
    };
    loss();
    Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
           dv = Tensor::empty(v.shape(), DType::F32);
    ops::attention_backward(ctx, dq, dk, dv, wy, q, k, v, out, lse, 0.5f, causal, &seg);
    const std::string c = causal ? " causal" : " full";
    expect_grad_close("packed attention dq" + c, q, dq, loss);
    expect_grad_close("packed attention dk" + c, k, dk, loss);
    expect_grad_close("packed attention dv" + c, v, dv, loss);
  }
}

TEST(OpsPacked, AttentionChecksSegments) {
  auto ctx = ops::Context::cpu();
  const int64_t B = 1, T = 4, H = 1, D = 4;
  Tensor q = randn({B, T, H, D}, 1), k = randn({B, T, H, D}, 2), v = randn({B, T, H, D}, 3);
  Tensor out = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({B, H, T}, DType::F32);
  const Tensor wrong_shape = ints({0, 0, 1}, {1, 3});
  const Tensor wrong_dtype = Tensor::zeros({B, T}, DType::F32);
  const Tensor decreasing = ints({0, 1, 1, 0}, {B, T});
  for (const Tensor* s : {&wrong_shape, &wrong_dtype, &decreasing}) {
    try {
      ops::attention_forward(ctx, out, lse, q, k, v, 1.f, true, s);
      ADD_FAILURE() << "bad segments " << s->describe() << " were accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("segments"), std::string::npos) << e.what();
    }
  }
}

TEST(OpsPacked, GatheredRopeTablesEqualPerDocumentRope) {
  auto ctx = ops::Context::cpu();
  std::mt19937 rng(5);
  const int64_t B = 3, T = 23, H = 2, D = 8;
  for (int64_t R : {8, 4}) {
    std::vector<std::vector<int64_t>> splits;
    for (int64_t b = 0; b < B; ++b) splits.push_back(random_split(T, rng));
    const Tensor pos = positions_of(splits, T);
    Tensor table_cos, table_sin;
    tables(table_cos, table_sin, 64, R);  // longer than any document
    Tensor cos = Tensor::empty({B * T, R / 2}, DType::F32), sin = cos.clone();
    ops::rope_gather_tables(ctx, cos, sin, table_cos, table_sin, pos);
    Tensor x = randn({B, T, H, D}, 30 + R), y = Tensor::empty(x.shape(), DType::F32), dx = y.clone();
    ops::rope_forward(ctx, y, x, cos, sin);
    ops::rope_backward(ctx, dx, x, cos, sin);
    for (int64_t b = 0; b < B; ++b) {
      const auto& st = splits[static_cast<size_t>(b)];
      for (size_t d = 0; d + 1 < st.size(); ++d) {
        const int64_t a = st[d], e = st[d + 1];
        Tensor c1, s1;
        tables(c1, s1, e - a, R);
        Tensor x1 = take_rows(x, b, a, e), y1 = Tensor::empty(x1.shape(), DType::F32), dx1 = y1.clone();
        ops::rope_forward(ctx, y1, x1, c1, s1);
        ops::rope_backward(ctx, dx1, x1, c1, s1);
        EXPECT_EQ(rows_of(y, b, a, e), y1.to_float_vector()) << "rope b=" << b << " doc " << a << " R=" << R;
        EXPECT_EQ(rows_of(dx, b, a, e), dx1.to_float_vector()) << "rope^T b=" << b << " doc " << a << " R=" << R;
      }
    }
  }
}

TEST(OpsPacked, QkvSplitAndMlaRopeWithPerTokenTables) {
  auto ctx = ops::Context::cpu();
  std::mt19937 rng(9);
  const int64_t B = 2, T = 19, Hq = 4, Hkv = 2, D = 8;
  std::vector<std::vector<int64_t>> splits;
  for (int64_t b = 0; b < B; ++b) splits.push_back(random_split(T, rng));
  const Tensor pos = positions_of(splits, T);
  Tensor table_cos, table_sin;
  tables(table_cos, table_sin, T, D);
  Tensor cos = Tensor::empty({B * T, D / 2}, DType::F32), sin = cos.clone();
  ops::rope_gather_tables(ctx, cos, sin, table_cos, table_sin, pos);

  // Fused QKV split + RoPE, forward and backward.
  Tensor qkv = randn({B * T, (Hq + 2 * Hkv) * D}, 40);
  Tensor q = Tensor::empty({B, T, Hq, D}, DType::F32), k = Tensor::empty({B, T, Hkv, D}, DType::F32),
         v = k.clone();
  ops::qkv_split_rope_forward(ctx, q, k, v, qkv, cos, sin);
  Tensor dqkv = Tensor::empty(qkv.shape(), DType::F32);
  ops::qkv_split_rope_backward(ctx, dqkv, q, k, v, cos, sin);
  // MLA: Dn = 4 plain dims + Dr = 8 rotary dims, Dv = 6, latent L = 5.
  const int64_t H = 2, Dn = 4, Dr = D, Dq = Dn + Dr, Dv = 6, L = 5;
  Tensor q_proj = randn({B * T, H * Dq}, 41), kv_up = randn({B * T, H * (Dn + Dv)}, 42),
         kv_down = randn({B * T, L + Dr}, 43);
  Tensor mq = Tensor::empty({B, T, H, Dq}, DType::F32), mk = mq.clone(), mv = Tensor::empty({B, T, H, Dv}, DType::F32);
  ops::mla_qkv_rope_forward(ctx, mq, mk, mv, q_proj, kv_up, kv_down, cos, sin);
  Tensor dq_proj = Tensor::empty(q_proj.shape(), DType::F32), dkv_up = Tensor::empty(kv_up.shape(), DType::F32),
         dk_pe = Tensor::empty({B * T, Dr}, DType::F32);
  ops::mla_qkv_rope_backward(ctx, dq_proj, dkv_up, dk_pe, mq, mk, mv, cos, sin);

  for (int64_t b = 0; b < B; ++b) {
    const auto& st = splits[static_cast<size_t>(b)];
    for (size_t d = 0; d + 1 < st.size(); ++d) {
      const int64_t a = st[d], e = st[d + 1], n = e - a;
      const std::string what = "b=" + std::to_string(b) + " doc " + std::to_string(a);
      Tensor c1, s1;
      tables(c1, s1, n, D);
      // qkv rows of this document: (n, W) viewed as batch 1.
      Tensor qkv1 = take_rows(qkv.view({B, T, qkv.size(1)}), b, a, e).view({n, qkv.size(1)});
      Tensor q1 = Tensor::empty({1, n, Hq, D}, DType::F32), k1 = Tensor::empty({1, n, Hkv, D}, DType::F32),
             v1 = k1.clone();
      ops::qkv_split_rope_forward(ctx, q1, k1, v1, qkv1, c1, s1);
      EXPECT_EQ(rows_of(q, b, a, e), q1.to_float_vector()) << "qkv q " << what;
      EXPECT_EQ(rows_of(k, b, a, e), k1.to_float_vector()) << "qkv k " << what;
      EXPECT_EQ(rows_of(v, b, a, e), v1.to_float_vector()) << "qkv v " << what;
      Tensor dqkv1 = Tensor::empty(qkv1.shape(), DType::F32);
      ops::qkv_split_rope_backward(ctx, dqkv1, q1, k1, v1, c1, s1);
      EXPECT_EQ(rows_of(dqkv.view({B, T, qkv.size(1)}), b, a, e), dqkv1.to_float_vector()) << "dqkv " << what;

      auto rows2 = [&](const Tensor& t) { return take_rows(t.view({B, T, t.size(1)}), b, a, e).view({n, t.size(1)}); };
      Tensor qp1 = rows2(q_proj), kvu1 = rows2(kv_up), kvd1 = rows2(kv_down);
      Tensor mq1 = Tensor::empty({1, n, H, Dq}, DType::F32), mk1 = mq1.clone(),
             mv1 = Tensor::empty({1, n, H, Dv}, DType::F32);
      ops::mla_qkv_rope_forward(ctx, mq1, mk1, mv1, qp1, kvu1, kvd1, c1, s1);
      EXPECT_EQ(rows_of(mq, b, a, e), mq1.to_float_vector()) << "mla q " << what;
      EXPECT_EQ(rows_of(mk, b, a, e), mk1.to_float_vector()) << "mla k " << what;
      EXPECT_EQ(rows_of(mv, b, a, e), mv1.to_float_vector()) << "mla v " << what;
      Tensor dqp1 = Tensor::empty(qp1.shape(), DType::F32), dkvu1 = Tensor::empty(kvu1.shape(), DType::F32),
             dkpe1 = Tensor::empty({n, Dr}, DType::F32);
      ops::mla_qkv_rope_backward(ctx, dqp1, dkvu1, dkpe1, mq1, mk1, mv1, c1, s1);
      EXPECT_EQ(rows2(dq_proj).to_float_vector(), dqp1.to_float_vector()) << "mla dq_proj " << what;
      EXPECT_EQ(rows2(dkv_up).to_float_vector(), dkvu1.to_float_vector()) << "mla dkv_up " << what;
      EXPECT_EQ(rows2(dk_pe).to_float_vector(), dkpe1.to_float_vector()) << "mla dk_pe " << what;
    }
  }
}

TEST(OpsPacked, RopeGatherTablesValuesAndChecks) {
  auto ctx = ops::Context::cpu();
  Tensor table_cos, table_sin;
  tables(table_cos, table_sin, 10, 6);
  const Tensor pos = ints({3, 0, 9, 3, 1}, {5});  // 1-D positions work too
  Tensor cos = Tensor::empty({5, 3}, DType::F32), sin = cos.clone();
  ops::rope_gather_tables(ctx, cos, sin, table_cos, table_sin, pos);
  for (int64_t n = 0; n < 5; ++n)
    for (int64_t i = 0; i < 3; ++i) {
      const int32_t p = pos.data<int32_t>()[n];
      EXPECT_EQ(cos.data<float>()[n * 3 + i], table_cos.data<float>()[p * 3 + i]);
      EXPECT_EQ(sin.data<float>()[n * 3 + i], table_sin.data<float>()[p * 3 + i]);
      // the tables hold cos/sin(p * inv_freq): check one against the formula
      const double f = std::pow(10000.0, -2.0 * static_cast<double>(i) / 6.0);
      EXPECT_NEAR(cos.data<float>()[n * 3 + i], std::cos(p * f), 1e-6);
    }
  EXPECT_THROW(ops::rope_gather_tables(ctx, cos, sin, table_cos, table_sin, ints({3, 0, 10, 3, 1}, {5})), Error);
  EXPECT_THROW(ops::rope_gather_tables(ctx, cos, sin, table_cos, table_sin, ints({3, 0, -1, 3, 1}, {5})), Error);
  Tensor short_out = Tensor::empty({4, 3}, DType::F32);
  EXPECT_THROW(ops::rope_gather_tables(ctx, short_out, sin, table_cos, table_sin, pos), Error);
  // Rope tables must have T or B*T rows.
  Tensor x = randn({2, 5, 1, 6}, 1), y = x.clone();
  Tensor bad = Tensor::empty({7, 3}, DType::F32);
  try {
    ops::rope_forward(ctx, y, x, bad, bad);
    ADD_FAILURE() << "7 table rows accepted for B=2, T=5";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("B*T = 10"), std::string::npos) << e.what();
  }
  // B*T rows holding positions t again are the (T, R/2) tables: the same rotation.
  Tensor tc, ts;
  tables(tc, ts, 5, 6);
  Tensor per_cos = Tensor::empty({10, 3}, DType::F32), per_sin = per_cos.clone();
  ops::rope_gather_tables(ctx, per_cos, per_sin, table_cos, table_sin, ints({0, 1, 2, 3, 4, 0, 1, 2, 3, 4}, {2, 5}));
  Tensor y2 = x.clone();
  ops::rope_forward(ctx, y, x, tc, ts);
  ops::rope_forward(ctx, y2, x, per_cos, per_sin);
  EXPECT_EQ(y.to_float_vector(), y2.to_float_vector());
}

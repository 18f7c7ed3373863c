// GPT dataset, blending, splits and the batch loader. The reference for samples is an
// independent expansion: with the shuffles undone, sample j must be tokens
// [j*T, j*T + T + 1) of the documents concatenated in document_index order. numpy's
// RandomState.shuffle outputs below were printed by numpy 1.24.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "../test_util.h"
#include "core/error.h"
#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"
#include "data/numpy_random.h"

namespace fs = std::filesystem;
using namespace primus::data;

namespace {

using primus::test::temp_dir;

// Document k has 3 + (k*7)%11 tokens: k*1000 + position, the last one is eod (=1).
std::string write_docs(const fs::path& dir, const std::string& name, int n_docs, int base = 0) {
  const std::string prefix = (dir / name).string();
  IndexedDatasetWriter w(prefix, TokenDType::kI32);
  for (int k = 0; k < n_docs; ++k) {
    const int len = 3 + (k * 7) % 11;
    std::vector<int32_t> t;
    for (int p = 0; p + 1 < len; ++p) t.push_back(base + k * 1000 + p + 2);
    t.push_back(1);
    w.add_document(t, std::vector<int32_t>{len});
  }
  w.finalize();
  return prefix;
}

GptDatasetOptions opts(int64_t samples, int64_t seq, uint64_t seed = 1234) {
  GptDatasetOptions o;
  o.num_samples = samples;
  o.seq_length = seq;
  o.seed = seed;
  o.eod = 1;
  return o;
}

}  // namespace

TEST(NumpyRandomState, ShuffleMatchesNumpy) {
  auto shuffled = [](uint32_t seed, int n) {
    std::vector<int64_t> a(n);
    for (int i = 0; i < n; ++i) a[i] = i;
    NumpyRandomState rs(seed);
    rs.shuffle(std::span<int64_t>(a));
    return a;
  };
  EXPECT_EQ(shuffled(1234, 10), (std::vector<int64_t>{7, 2, 9, 1, 0, 8, 4, 5, 6, 3}));
  EXPECT_EQ(shuffled(42, 20),
            (std::vector<int64_t>{0, 17, 15, 1, 8, 5, 11, 3, 18, 16, 13, 2, 9, 19, 4, 12, 7, 10, 14, 6}));
  EXPECT_EQ(shuffled(0, 7), (std::vector<int64_t>{6, 2, 1, 3, 0, 5, 4}));
  // Two shuffles from one state, as Megatron does (document index, then samples).
  NumpyRandomState rs(1234);
  std::vector<int32_t> a{0, 1, 2, 3, 4};
  rs.shuffle(std::span<int32_t>(a));
  std::vector<int64_t> b(300);
  for (int i = 0; i < 300; ++i) b[i] = i;
  rs.shuffle(std::span<int64_t>(b));
  EXPECT_EQ(std::vector<int64_t>(b.begin(), b.begin() + 10),
            (std::vector<int64_t>{263, 77, 163, 206, 167, 94, 294, 284, 219, 248}));
}

TEST(Split, MegatronBoundaries) {
  const auto w = parse_split("969,30,1");
  EXPECT_NEAR(w[0], 0.969, 1e-12);
  EXPECT_EQ(split_boundaries(w, 1000), (std::vector<int64_t>{0, 969, 999, 1000}));
  EXPECT_EQ(split_boundaries(parse_split("98/2"), 500), (std::vector<int64_t>{0, 490, 500, 500}));
  // Python's round is half-to-even (2.5 -> 2, giving 0, 2, 4, 4), then the shortfall of 1 is
  // added to every boundary; Megatron's _get_split_indices in Python prints [0, 3, 5, 5].
  EXPECT_EQ(split_boundaries(parse_split("1,1"), 5), (std::vector<int64_t>{0, 3, 5, 5}));
  EXPECT_THROW(parse_split("1,x"), primus::Error);
  EXPECT_THROW(parse_split("1,1,1,1"), primus::Error);
}

TEST(Blend, ParsesWeightsAndPrefixes) {
  std::vector<std::string> p;
  std::vector<double> w;
  parse_blend({"0.3", "a/b", "0.7", "c"}, p, w);
  EXPECT_EQ(p, (std::vector<std::string>{"a/b", "c"}));
  EXPECT_EQ(w, (std::vector<double>{0.3, 0.7}));
  parse_blend({"0.3 a 0.7 c"}, p, w);
  EXPECT_EQ(p.size(), 2u);
  parse_blend({"only_prefix"}, p, w);
  EXPECT_TRUE(w.empty());
  EXPECT_THROW(parse_blend({"0.3", "a", "b"}, p, w), primus::Error);
}

TEST(GptDataset, SamplesFollowTheDocumentStream) {
  const fs::path d = temp_dir("gpt_stream");
  auto src = std::make_shared<IndexedTokenSource>(write_docs(d, "docs", 40));
  const int64_t T = 16;
  GptDataset ds(src, 0, 40, opts(100, T));  // 40 docs ~ 320 tokens: needs several epochs
  ASSERT_GE(ds.size(), 100);
  // The stream of tokens in document_index order.
  std::vector<int32_t> stream;
  for (int32_t doc : ds.document_index()) {
    auto s = src->dataset().sequence(doc);
    stream.insert(stream.end(), s.begin(), s.end());
  }
  // Every document appears once per epoch.
  const auto epochs = static_cast<int64_t>(ds.document_index().size() / 40);
  EXPECT_GE(epochs, 5);
  for (int k = 0; k < 40; ++k)
    EXPECT_EQ(std::count(ds.document_index().begin(), ds.document_index().end(), k), epochs);
  // shuffle_index is a permutation; undoing it gives consecutive windows of the stream.
  std::vector<int64_t> inverse(static_cast<size_t>(ds.size()));
  std::set<int64_t> seen(ds.shuffle_index().begin(), ds.shuffle_index().end());
  EXPECT_EQ(static_cast<int64_t>(seen.size()), ds.size());
  for (int64_t i = 0; i < ds.size(); ++i) inverse[ds.shuffle_index()[i]] = i;
  for (int64_t j = 0; j < ds.size(); ++j) {
    const auto s = ds.sample(inverse[j]);
    ASSERT_EQ(static_cast<int64_t>(s.size()), T + 1);
    ASSERT_TRUE(std::equal(s.begin(), s.end(), stream.begin() + j * T)) << "sample " << j;
  }
  fs::remove_all(d);
}

TEST(GptDataset, DeterministicAndSeedDependent) {
  const fs::path d = temp_dir("gpt_seed");
  auto src = std::make_shared<IndexedTokenSource>(write_docs(d, "docs", 30));
  GptDataset a(src, 0, 30, opts(50, 8)), b(src, 0, 30, opts(50, 8)), c(src, 0, 30, opts(50, 8, 99));
  EXPECT_EQ(a.shuffle_index(), b.shuffle_index());
  EXPECT_EQ(a.document_index(), b.document_index());
  EXPECT_EQ(a.sample(7), b.sample(7));
  EXPECT_NE(a.document_index(), c.document_index());
  fs::remove_all(d);
}

TEST(GptDataset, IndexCacheIsKeyedByInputs) {
  const fs::path d = temp_dir("gpt_cache");
  auto src = std::make_shared<IndexedTokenSource>(write_docs(d, "docs", 30));
  auto o = opts(40, 8);
  o.cache_dir = (d / "cache").string();
  GptDataset first(src, 0, 30, o);
  EXPECT_FALSE(first.loaded_from_cache());
  GptDataset again(src, 0, 30, o);
  EXPECT_TRUE(again.loaded_from_cache());
  EXPECT_EQ(again.shuffle_index(), first.shuffle_index());
  EXPECT_EQ(again.sample_index(), first.sample_index());
  EXPECT_EQ(again.sample(3), first.sample(3));
  o.seq_length = 9;
  GptDataset other(src, 0, 30, o);
  EXPECT_FALSE(other.loaded_from_cache());
  EXPECT_NE(other.cache_hash(), first.cache_hash());
  EXPECT_TRUE(fs::exists(d / "cache" / (first.cache_hash() + "-GPTDataset-train-shuffle_index.npy")));
  fs::remove_all(d);
}

TEST(GptDataset, SplitsAreDisjointDocumentRanges) {
  const fs::path d = temp_dir("gpt_split");
  DataConfig c;
  c.data_path = {write_docs(d, "docs", 100)};
  c.split = "80,10,10";
  c.seq_length = 8;
  const auto splits = build_datasets(c, 30, 10, 10);
  ASSERT_TRUE(splits.train && splits.valid && splits.test);
  auto docs_of = [](const Dataset& ds) {
    std::set<int32_t> docs;
    for (int64_t i = 0; i < ds.size(); ++i)
      for (int32_t t : ds.sample(i))
        if (t != 1) docs.insert(t / 1000);
    return docs;
  };
  for (int32_t k : docs_of(*splits.train)) EXPECT_LT(k, 80);
  for (int32_t k : docs_of(*splits.valid)) EXPECT_TRUE(k >= 80 && k < 90) << k;
  for (int32_t k : docs_of(*splits.test)) EXPECT_GE(k, 90);
  c.split = "1,0,0";
  const auto only_train = build_datasets(c, 30, 10, 10);
  EXPECT_TRUE(only_train.train && !only_train.valid && !only_train.test);
  fs::remove_all(d);
}

TEST(GptDataset, BlendFollowsWeights) {
  const fs::path d = temp_dir("gpt_blend");
  DataConfig c;
  const std::string a = write_docs(d, "a", 60, 0), b = write_docs(d, "b", 60, 100000);
  c.data_path = {"0.3", a, "0.7", b};
  c.split = "1,0,0";
  c.seq_length = 8;
  const auto s = build_datasets(c, 1000, 0, 0);
  ASSERT_TRUE(s.train);
  EXPECT_EQ(s.train->size(), 1000);
  const auto* blend = dynamic_cast<const BlendedDataset*>(s.train.get());
  ASSERT_NE(blend, nullptr);
  int64_t from_b = std::count(blend->dataset_index().begin(), blend->dataset_index().end(), 1);
  EXPECT_NEAR(static_cast<double>(from_b), 700.0, 1.0);
  // Every 10 consecutive samples hold 3 of a and 7 of b (give or take one).
  for (int start = 0; start + 10 <= 1000; start += 10) {
    const auto n = std::count(blend->dataset_index().begin() + start, blend->dataset_index().begin() + start + 10, 1);
    EXPECT_NEAR(static_cast<double>(n), 7.0, 1.0) << start;
  }
  // Samples of b carry b's tokens.
  for (int64_t i = 0; i < 50; ++i) {
    const auto t = s.train->sample(i);
    const bool is_b = blend->dataset_index()[i] == 1;
    for (int32_t v : t)
      if (v != 1) EXPECT_EQ(v >= 100000, is_b);
  }
  // Separate train/valid paths.
  DataConfig sep;
  sep.train_data_path = {a};
  sep.valid_data_path = {b};
  sep.seq_length = 8;
  const auto s2 = build_datasets(sep, 20, 5, 0);
  ASSERT_TRUE(s2.train && s2.valid && !s2.test);
  for (int32_t v : s2.valid->sample(0))
    if (v != 1) EXPECT_GE(v, 100000);
  fs::remove_all(d);
}

TEST(BatchLoader, DataParallelRanksAndResume) {
  const fs::path d = temp_dir("gpt_loader");
  auto src = std::make_shared<IndexedTokenSource>(write_docs(d, "docs", 50));
  auto o = opts(64, 8);
  o.eod_mask_loss = true;
  GptDataset ds(src, 0, 50, o);
  BatchLoader r0(ds, 2, 0, 2, 0), r1(ds, 2, 1, 2, 0);
  const Batch b0 = r0.next(), b1 = r1.next();
  ASSERT_EQ(b0.tokens.shape(), (primus::Shape{2, 8}));
  EXPECT_EQ(b0.tokens.dtype(), primus::DType::I32);
  EXPECT_EQ(b0.loss_mask.dtype(), primus::DType::F32);
  auto row = [](const Batch& b, int r) {
    return std::vector<int32_t>(b.tokens.data<int32_t>() + r * 8, b.tokens.data<int32_t>() + r * 8 + 8);
  };
  for (int r = 0; r < 2; ++r) {
    const auto s0 = ds.sample(r), s1 = ds.sample(2 + r);
    EXPECT_EQ(row(b0, r), std::vector<int32_t>(s0.begin(), s0.end() - 1));
    EXPECT_EQ(row(b1, r), std::vector<int32_t>(s1.begin(), s1.end() - 1));
    for (int k = 0; k < 8; ++k) {
      EXPECT_EQ(b0.labels.data<int32_t>()[r * 8 + k], s0[k + 1]);
      EXPECT_EQ(b0.loss_mask.data<float>()[r * 8 + k], s0[k] == 1 ? 0.0f : 1.0f);  // input eod masked
    }
  }
  EXPECT_EQ(r0.consumed_samples(), 4);
  const Batch second = r0.next();
  BatchLoader resumed(ds, 2, 0, 2, 4);
  const Batch again = resumed.next();
  EXPECT_EQ(row(again, 0), row(second, 0));
  EXPECT_EQ(row(again, 1), row(second, 1));
  EXPECT_EQ(resumed.consumed_samples(), 8);
  fs::remove_all(d);
}

TEST(MockData, SyntheticTokensWithoutFiles) {
  DataConfig c;
  c.mock_data = true;
  c.vocab_size = 500;
  c.eod_token = 3;
  c.seq_length = 32;
  const auto s = build_datasets(c, 200, 20, 0);
  ASSERT_TRUE(s.train && s.valid);
  EXPECT_GE(s.train->size(), 200);
  int eods = 0;
  for (int64_t i = 0; i < 200; ++i)
    for (int32_t t : s.train->sample(i)) {
      ASSERT_TRUE(t >= 0 && t < 500) << t;
      eods += t == 3;
    }
  EXPECT_GT(eods, 0);
  const auto again = build_datasets(c, 200, 20, 0);
  EXPECT_EQ(again.train->sample(17), s.train->sample(17));
}

TEST(GptDataset, ClearErrors) {
  const fs::path d = temp_dir("gpt_errors");
  DataConfig c;
  c.seq_length = 8;
  try {
    build_datasets(c, 10, 0, 0);
    FAIL();
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("data_path"), std::string::npos) << e.what();
  }
  c.data_path = {(d / "missing_text_document").string()};
  try {
    build_datasets(c, 10, 0, 0);
    FAIL();
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing_text_document.idx"), std::string::npos) << e.what();
  }
  fs::remove_all(d);
}

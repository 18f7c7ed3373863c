// build_datasets: DataConfig -> train/valid/test datasets (Megatron's
// BlendedMegatronDatasetBuilder rules for splits, blends and per-split paths).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/strings.h"
#include "data/gpt_dataset.h"

namespace primus::data {

namespace {

constexpr double kBlendSurplus = 0.005;  // each blended part gets 0.5% more samples
constexpr int64_t kMockDocuments = 100000;
const char* const kSplitNames[3] = {"train", "valid", "test"};

bool parse_double(const std::string& s, double& v) {
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return !s.empty() && end == s.c_str() + s.size();
}

std::shared_ptr<const TokenSource> open_source(const std::string& prefix) {
  return std::make_shared<IndexedTokenSource>(prefix);
}

GptDatasetOptions options_for(const DataConfig& c, int64_t samples, int split) {
  GptDatasetOptions o;
  o.num_samples = samples;
  o.seq_length = c.seq_length;
  o.seed = c.seed;
  o.cache_dir = c.data_cache_path;
  o.split_name = kSplitNames[split];
  o.eod = static_cast<int32_t>(c.eod_token);
  o.pad = static_cast<int32_t>(c.pad_token);
  o.eod_mask_loss = c.eod_mask_loss;
  o.reset_position_ids = c.reset_position_ids;
  o.reset_attention_mask = c.reset_attention_mask;
  return o;
}

// Datasets of one source for the three splits (null where the split is empty).
std::array<std::shared_ptr<const Dataset>, 3> split_source(const DataConfig& c, std::shared_ptr<const TokenSource> src,
                                                           const std::vector<double>& split,
                                                           const std::array<int64_t, 3>& samples) {
  const auto bounds = split_boundaries(split, src->num_sequences());
  std::array<std::shared_ptr<const Dataset>, 3> out;
  for (int s = 0; s < 3; ++s) {
    if (bounds[s + 1] <= bounds[s] || samples[s] <= 0) continue;
    out[s] = std::make_shared<GptDataset>(src, bounds[s], bounds[s + 1], options_for(c, samples[s], s));
  }
  return out;
}

// One blend list -> its three splits (whole_split: the list is used for one split only).
std::array<std::shared_ptr<const Dataset>, 3> build_blend(const DataConfig& c, const std::vector<std::string>& spec,
                                                          const std::vector<double>& split,
                                                          const std::array<int64_t, 3>& samples) {
  std::vector<std::string> prefixes;
  std::vector<double> weights;
  parse_blend(spec, prefixes, weights);
  if (prefixes.size() == 1) return split_source(c, open_source(prefixes[0]), split, samples);
  std::vector<std::shared_ptr<const TokenSource>> sources;
  for (const auto& p : prefixes) sources.push_back(open_source(p));
  if (weights.empty()) {  // no weights: proportional to the tokens of each prefix
    for (const auto& s : sources) {
      double tokens = 0;
      for (int64_t i = 0; i < s->num_sequences(); ++i) tokens += s->sequence_length(i);
      weights.push_back(tokens);
    }
  }
  double sum = 0;
  for (double w : weights) sum += w;
  std::array<std::vector<std::shared_ptr<const Dataset>>, 3> parts;
  std::array<std::vector<double>, 3> part_weights;
  for (size_t k = 0; k < sources.size(); ++k) {
    std::array<int64_t, 3> per{};
    for (int s = 0; s < 3; ++s)
      per[s] = samples[s] > 0 ? static_cast<int64_t>(
                                    std::ceil(std::ceil(samples[s] * weights[k] / sum) * (1 + kBlendSurplus)))
                              : 0;
    const auto ds = split_source(c, sources[k], split, per);
    for (int s = 0; s < 3; ++s)
      if (ds[s]) {
        parts[s].push_back(ds[s]);
        part_weights[s].push_back(weights[k]);
      }
  }
  std::array<std::shared_ptr<const Dataset>, 3> out;
  for (int s = 0; s < 3; ++s)
    if (!parts[s].empty() && samples[s] > 0)
      out[s] = std::make_shared<BlendedDataset>(parts[s], part_weights[s], samples[s]);
  return out;
}

}  // namespace

std::vector<double> parse_split(const std::string& split) {
  std::vector<double> w;
  std::string cur;
  auto push = [&] {
    const std::string t = trim(cur);
    double v = 0;
    PRIMUS_CHECK(parse_double(t, v) && v >= 0, "split '{}': '{}' is not a non-negative number (expected e.g. "
                                               "\"969,30,1\")", split, t);
    w.push_back(v);
    cur.clear();
  };
  for (char ch : split) {
    if (ch == ',' || ch == '/')
      push();
    else
      cur.push_back(ch);
  }
  push();
  PRIMUS_CHECK(w.size() <= 3, "split '{}' has {} parts; at most 3 (train, valid, test)", split, w.size());
  while (w.size() < 3) w.push_back(0);
  double sum = w[0] + w[1] + w[2];
  PRIMUS_CHECK(sum > 0, "split '{}' sums to 0", split);
  for (double& v : w) v /= sum;
  return w;
}

std::vector<int64_t> split_boundaries(const std::vector<double>& weights, int64_t n) {
  std::vector<int64_t> b{0};
  for (double w : weights) b.push_back(b.back() + static_cast<int64_t>(std::nearbyint(w * static_cast<double>(n))));
  const int64_t excess = b.back() - n;
  for (size_t i = 1; i < b.size(); ++i) b[i] -= excess;
  return b;
}

void parse_blend(const std::vector<std::string>& spec, std::vector<std::string>& prefixes,
                 std::vector<double>& weights) {
  std::vector<std::string> items;
  for (const auto& s : spec)
    for (const auto& part : split(s, ' '))
      if (!trim(part).empty()) items.push_back(trim(part));
  PRIMUS_CHECK(!items.empty(), "data path is empty");
  prefixes.clear();
  weights.clear();
  double v = 0;
  bool weighted = items.size() % 2 == 0 && parse_double(items[0], v);
  if (weighted)
    for (size_t i = 0; i < items.size(); i += 2) weighted &= parse_double(items[i], v) && !parse_double(items[i + 1], v);
  if (!weighted) {
    for (const auto& it : items) {
      PRIMUS_CHECK(!parse_double(it, v),
                   "data path {}: '{}' looks like a weight, but the list is not 'weight prefix weight prefix ...'",
                   fmt::format("{}", fmt::join(items, " ")), it);
      prefixes.push_back(it);
    }
    return;
  }
  for (size_t i = 0; i < items.size(); i += 2) {
    parse_double(items[i], v);
    PRIMUS_CHECK(v >= 0, "data path weight {} is negative", v);
    weights.push_back(v);
    prefixes.push_back(items[i + 1]);
  }
}

DatasetSplits build_datasets(const DataConfig& c, int64_t train_samples, int64_t valid_samples, int64_t test_samples) {
  PRIMUS_CHECK(c.seq_length > 0, "seq_length must be > 0 to build datasets (got {})", c.seq_length);
  const std::array<int64_t, 3> samples{train_samples, valid_samples, test_samples};
  std::array<std::shared_ptr<const Dataset>, 3> out;
  if (c.mock_data) {
    PRIMUS_CHECK(c.vocab_size > 1, "mock_data needs the model's vocab_size (got {})", c.vocab_size);
    auto src = std::make_shared<MockTokenSource>(c.vocab_size, static_cast<int32_t>(c.eod_token), c.seed,
                                                 c.seq_length, kMockDocuments);
    out = split_source(c, src, parse_split(c.split), samples);
  } else if (!c.train_data_path.empty() || !c.valid_data_path.empty() || !c.test_data_path.empty()) {
    const std::vector<std::string>* paths[3] = {&c.train_data_path, &c.valid_data_path, &c.test_data_path};
    for (int s = 0; s < 3; ++s) {
      if (paths[s]->empty() || samples[s] <= 0) continue;
      std::vector<double> whole(3, 0.0);
      whole[s] = 1.0;
      std::array<int64_t, 3> only{};
      only[s] = samples[s];
      out[s] = build_blend(c, *paths[s], whole, only)[s];
    }
  } else {
    PRIMUS_CHECK(!c.data_path.empty(),
                 "no training data: set data_path (a prefix written by `primus preprocess`, e.g. "
                 "output/data/brown_llama3_text_document), train_data_path, or mock_data: true");
    out = build_blend(c, c.data_path, parse_split(c.split), samples);
  }
  return {out[0], out[1], out[2]};
}

std::string explain_empty_train_split(const DataConfig& c) {
  if (c.mock_data) return "mock data gave no training samples (train_iters x global_batch_size is 0?)";
  const bool per_split = !c.train_data_path.empty() || !c.valid_data_path.empty() || !c.test_data_path.empty();
  if (per_split && c.train_data_path.empty())
    return "valid_data_path/test_data_path are set but train_data_path is not; set train_data_path (or data_path "
           "with a split)";
  std::vector<std::string> prefixes;
  std::vector<double> weights;
  parse_blend(per_split ? c.train_data_path : c.data_path, prefixes, weights);
  const std::vector<double> split = per_split ? std::vector<double>{1.0, 0.0, 0.0} : parse_split(c.split);
  std::vector<std::string> parts;
  bool any_empty = false;
  for (const std::string& p : prefixes) {
    const int64_t n = open_source(p)->num_sequences();
    const auto b = split_boundaries(split, n);
    any_empty |= n == 0;
    parts.push_back(fmt::format("{} holds {} document(s), {} of them for training", p, n, b[1] - b[0]));
  }
  const std::string fix =
      any_empty ? "a dataset with no documents comes from an empty `primus preprocess` input (check the JSONL "
                  "and its --json-keys)"
                : fmt::format("split '{}' gives training {:.1f}% of the documents, which rounds to none; raise "
                              "its first share or add documents",
                              c.split, 100.0 * split[0]);
  return fmt::format("{}: {}", fmt::join(parts, "; "), fix);
}

}  // namespace primus::data

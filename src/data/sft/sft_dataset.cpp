#include "data/sft/sft_dataset.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>

#include "core/error.h"
#include "core/strings.h"
#include "data/numpy_random.h"

namespace primus::data::sft {

namespace {

// A permutation of [0, n) by numpy's RandomState(seed).shuffle.
std::vector<int64_t> shuffled(int64_t n, uint64_t seed) {
  PRIMUS_CHECK(seed <= 0xffffffffULL, "seed {} does not fit numpy's RandomState (must be < 2^32)", seed);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  NumpyRandomState rng(static_cast<uint32_t>(seed));
  rng.shuffle(std::span<int64_t>(p));
  return p;
}

std::string corpora_names(const std::vector<std::shared_ptr<const TokenizedCorpus>>& corpora) {
  std::string s;
  for (size_t i = 0; i < corpora.size(); ++i) s += (i ? ", " : "") + corpora[i]->source();
  return s;
}

// One sequence (cut to seq_length) into a row at slot `at`; returns the slots used.
// positions/segments may be null.
int64_t write_sequence(const TokenizedCorpus& c, int64_t seq, int64_t seq_length, int64_t at, int32_t segment,
                       int32_t* tokens, int32_t* labels, float* loss_mask, int32_t* positions, int32_t* segments) {
  const int64_t len = std::min<int64_t>(c.length(seq), seq_length - at);
  std::vector<int32_t> t(static_cast<size_t>(len));
  std::vector<uint8_t> m(static_cast<size_t>(len));
  c.read(seq, 0, len, t.data(), m.data());
  for (int64_t j = 0; j < len; ++j) {
    const bool has_next = j + 1 < len;
    tokens[at + j] = t[j];
    labels[at + j] = has_next ? t[j + 1] : -1;
    loss_mask[at + j] = has_next && m[j + 1] ? 1.0f : 0.0f;
    if (positions) positions[at + j] = static_cast<int32_t>(j);
    if (segments) segments[at + j] = segment;
  }
  return len;
}

void write_padding(int64_t from, int64_t seq_length, int32_t pad, int32_t segment, int32_t* tokens, int32_t* labels,
                   float* loss_mask, int32_t* positions, int32_t* segments) {
  for (int64_t k = from; k < seq_length; ++k) {
    tokens[k] = pad;
    labels[k] = -1;
    loss_mask[k] = 0.0f;
    if (positions) positions[k] = static_cast<int32_t>(k - from);
    if (segments) segments[k] = segment;
  }
}

// Trained targets among the first `len` tokens of a sequence (token 0 is never a target).
int64_t targets_within(const TokenizedCorpus& c, int64_t seq, int64_t len) {
  std::vector<int32_t> t(static_cast<size_t>(len));
  std::vector<uint8_t> m(static_cast<size_t>(len));
  c.read(seq, 0, len, t.data(), m.data());
  int64_t n = 0;
  for (int64_t j = 1; j < len; ++j) n += m[j];
  return n;
}

// Index of the first trained token of a sequence (the prompt's length), or its length.
int64_t first_trained(const TokenizedCorpus& c, int64_t seq) {
  const int64_t len = c.length(seq);
  std::vector<int32_t> t(static_cast<size_t>(len));
  std::vector<uint8_t> m(static_cast<size_t>(len));
  c.read(seq, 0, len, t.data(), m.data());
  for (int64_t j = 0; j < len; ++j)
    if (m[j]) return j;
  return len;
}

void check_options(const SftDatasetOptions& o, const char* what) {
  PRIMUS_CHECK(o.seq_length > 1, "{} dataset: seq_length must be > 1 (got {})", what, o.seq_length);
  PRIMUS_CHECK(o.pad >= 0, "{} dataset: the pad token id must be >= 0 (got {})", what, o.pad);
}

}  // namespace

// ---- SftDataset ----------------------------------------------------------------------------

SftDataset::SftDataset(std::vector<std::shared_ptr<const TokenizedCorpus>> corpora, std::vector<RecordRef> records,
                       SftDatasetOptions opt)
    : corpora_(std::move(corpora)), opt_(std::move(opt)) {
  check_options(opt_, "SFT");
  const int64_t t = opt_.seq_length;
  stats_.examples = static_cast<int64_t>(records.size());
  std::vector<RecordRef> kept;
  std::vector<int64_t> lengths;
  for (const RecordRef& r : records) {
    const TokenizedCorpus& c = *corpora_.at(static_cast<size_t>(r.corpus));
    PRIMUS_CHECK(c.sequences_per_record() == 1, "SFT dataset: {} holds preference pairs, not SFT examples", c.source());
    const int64_t len = c.length(r.record);
    const int64_t targets = targets_within(c, r.record, std::min(len, t));
    if (targets == 0) {
      ++stats_.dropped;
      continue;
    }
    kept.push_back(r);
    lengths.push_back(std::max<int64_t>(len, 1));
    stats_.loss_tokens += targets;
  }
  const Packing p = opt_.packing ? pack_first_fit_decreasing(lengths, t) : pack_one_per_row(lengths, t);
  stats_.truncated = p.truncated;
  stats_.tokens = p.tokens;
  stats_.rows = static_cast<int64_t>(p.rows.size());
  stats_.packing_efficiency = p.efficiency();
  const std::vector<int64_t> order = shuffled(stats_.rows, opt_.seed);
  rows_.reserve(p.rows.size());
  for (int64_t r : order) {
    std::vector<RecordRef> row;
    for (int64_t e : p.rows[static_cast<size_t>(r)]) row.push_back(kept[static_cast<size_t>(e)]);
    rows_.push_back(std::move(row));
  }
}

std::string SftDataset::name() const { return fmt::format("sft({})[{}]", corpora_names(corpora_), opt_.split_name); }

void SftDataset::example(int64_t i, ExampleView v) const {
  PRIMUS_CHECK(i >= 0 && i < size(), "SFT dataset {}: row {} outside [0, {})", name(), i, size());
  int32_t* pos = opt_.packing ? v.positions : nullptr;
  int32_t* seg = opt_.packing ? v.segments : nullptr;
  if (opt_.packing)
    PRIMUS_CHECK(pos && seg, "SFT dataset {} packs rows, but the batch has no positions/segments", name());
  int64_t at = 0;
  int32_t segment = 0;
  for (const RecordRef& r : rows_[static_cast<size_t>(i)]) {
    at += write_sequence(*corpora_[static_cast<size_t>(r.corpus)], r.record, opt_.seq_length, at, segment++, v.tokens,
                         v.labels, v.loss_mask, pos, seg);
  }
  write_padding(at, opt_.seq_length, opt_.pad, segment, v.tokens, v.labels, v.loss_mask, pos, seg);
}

void SftDataset::sample(int64_t i, int32_t* out) const {
  const auto t = static_cast<size_t>(opt_.seq_length);
  std::vector<int32_t> labels(t), positions(t), segments(t);
  std::vector<float> mask(t);
  example(i, ExampleView{out, labels.data(), mask.data(), positions.data(), segments.data()});
  out[t] = opt_.pad;
}

// ---- PreferenceDataset ---------------------------------------------------------------------

PreferenceDataset::PreferenceDataset(std::vector<std::shared_ptr<const TokenizedCorpus>> corpora,
                                     std::vector<RecordRef> pairs, SftDatasetOptions opt)
    : corpora_(std::move(corpora)), opt_(std::move(opt)) {
  check_options(opt_, "preference");
  PRIMUS_CHECK(!opt_.packing, "preference dataset: pairs are not packed (packing must be off)");
  const int64_t t = opt_.seq_length;
  stats_.examples = static_cast<int64_t>(pairs.size());
  std::vector<RecordRef> kept;
  for (const RecordRef& r : pairs) {
    const TokenizedCorpus& c = *corpora_.at(static_cast<size_t>(r.corpus));
    PRIMUS_CHECK(c.sequences_per_record() == 2, "preference dataset: {} holds SFT examples, not preference pairs",
                 c.source());
    const int64_t chosen = 2 * r.record, rejected = chosen + 1;
    if (std::max(first_trained(c, chosen), first_trained(c, rejected)) >= t) {
      ++stats_.dropped;
      continue;
    }
    kept.push_back(r);
    if (c.length(chosen) > t || c.length(rejected) > t) ++stats_.truncated;
    for (int64_t s : {chosen, rejected}) {
      const int64_t len = std::min(c.length(s), t);
      stats_.tokens += len;
      stats_.loss_tokens += targets_within(c, s, len);
    }
  }
  stats_.rows = static_cast<int64_t>(kept.size());
  stats_.packing_efficiency =
      kept.empty() ? 0.0 : static_cast<double>(stats_.tokens) / (2.0 * static_cast<double>(kept.size()) * t);
  for (int64_t k : shuffled(stats_.rows, opt_.seed)) pairs_.push_back(kept[static_cast<size_t>(k)]);
}

std::string PreferenceDataset::name() const {
  return fmt::format("preference({})[{}]", corpora_names(corpora_), opt_.split_name);
}

void PreferenceDataset::example(int64_t i, ExampleView v) const {
  PRIMUS_CHECK(i >= 0 && i < size(), "preference dataset {}: pair {} outside [0, {})", name(), i, size());
  PRIMUS_CHECK(v.row_stride >= opt_.seq_length, "preference dataset {}: row_stride {} is less than seq_length {}",
               name(), v.row_stride, opt_.seq_length);
  const RecordRef& r = pairs_[static_cast<size_t>(i)];
  const TokenizedCorpus& c = *corpora_[static_cast<size_t>(r.corpus)];
  for (int64_t k = 0; k < 2; ++k) {
    const int64_t off = k * v.row_stride;
    int32_t* pos = v.positions ? v.positions + off : nullptr;
    int32_t* seg = v.segments ? v.segments + off : nullptr;
    const int64_t at = write_sequence(c, 2 * r.record + k, opt_.seq_length, 0, 0, v.tokens + off, v.labels + off,
                                      v.loss_mask + off, pos, seg);
    write_padding(at, opt_.seq_length, opt_.pad, 1, v.tokens + off, v.labels + off, v.loss_mask + off, pos, seg);
  }
}

void PreferenceDataset::sample(int64_t i, int32_t* out) const {
  const auto t = static_cast<size_t>(opt_.seq_length);
  std::vector<int32_t> tokens(2 * t), labels(2 * t);
  std::vector<float> mask(2 * t);
  example(i, ExampleView{tokens.data(), labels.data(), mask.data(), nullptr, nullptr, static_cast<int64_t>(t)});
  std::copy(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(t), out);
  out[t] = opt_.pad;
}

// ---- builder -------------------------------------------------------------------------------

namespace {

// Paths of a list whose entries may hold several space-separated paths (Megatron's style);
// weights are refused.
std::vector<std::string> expand_paths(const std::vector<std::string>& list, const char* key) {
  std::vector<std::string> weights;
  std::vector<std::string> out = split_path_list(list, weights);
  PRIMUS_CHECK(weights.empty(),
               "{}: '{}' looks like a blend weight; SFT data takes a list of JSONL files without weights "
               "(repeat a file to weight it up)",
               key, weights.empty() ? std::string() : weights.front());
  return out;
}

std::string format_split(const SftSplitStats& s, const char* unit) {
  return fmt::format("{} {} -> {} rows, {} tokens, {} loss tokens, packing efficiency {:.1f}%, {} truncated, {} "
                     "dropped",
                     s.examples, unit, s.rows, s.tokens, s.loss_tokens, 100.0 * s.packing_efficiency, s.truncated,
                     s.dropped);
}

}  // namespace

std::string SftDatasets::summary() const {
  std::string s = fmt::format("SFT data (chat template {}): train {}", chat_template, format_split(train_stats, "examples"));
  if (valid) s += fmt::format("; valid {}", format_split(valid_stats, "examples"));
  s += fmt::format("; {} file(s) from cache, {} tokenized", files_from_cache, files_tokenized);
  return s;
}

SftDatasets build_sft_datasets(const SftDataOptions& o, Tokenizer& tokenizer, const std::string& model_path) {
  PRIMUS_CHECK(o.seq_length > 1, "SFT data: seq_length must be > 1 (got {})", o.seq_length);
  const bool per_split = !o.train_paths.empty() || !o.valid_paths.empty();
  std::vector<std::string> train_files, valid_files;
  if (per_split) {
    train_files = expand_paths(o.train_paths, "train_data_path");
    valid_files = expand_paths(o.valid_paths, "valid_data_path");
    PRIMUS_CHECK(!train_files.empty(),
                 "SFT data: valid_data_path is set but train_data_path is not; set train_data_path (or data_path "
                 "with a split)");
  } else {
    train_files = expand_paths(o.data_paths, "data_path");
    PRIMUS_CHECK(!train_files.empty(),
                 "no SFT data: set data_path (JSONL files, split by `split`) or train_data_path / valid_data_path");
  }
  SftDatasets out;
  ChatTemplateSource tmpl = load_chat_template(o.chat_template, model_path, tokenizer);
  out.chat_template = tmpl.name;
  SftTokenizer sft_tok(tokenizer, tmpl, o.loss_mode);
  CorpusOptions copt;
  copt.kind = o.preference ? RecordKind::kPreference : RecordKind::kSft;
  copt.cache_dir = o.cache_dir;
  copt.use_cache = o.use_cache;
  copt.tokenizer_identity = tokenizer_identity(tokenizer, model_path);

  // Each distinct file is tokenized (or loaded) once.
  std::vector<std::shared_ptr<const TokenizedCorpus>> corpora;
  std::vector<std::string> names;
  auto corpus_of = [&](const std::string& path) -> int32_t {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == path) return static_cast<int32_t>(i);
    CorpusLoad l = load_or_build_corpus(path, sft_tok, copt);
    (l.from_cache ? out.files_from_cache : out.files_tokenized) += 1;
    out.cache_dirs.push_back(l.cache_dir);
    if (!l.warning.empty()) out.warnings.push_back(l.warning);
    corpora.push_back(l.corpus);
    names.push_back(path);
    return static_cast<int32_t>(corpora.size() - 1);
  };
  auto refs_of = [&](const std::vector<std::string>& files) {
    std::vector<RecordRef> refs;
    for (const std::string& f : files) {
      const int32_t c = corpus_of(f);
      for (int64_t r = 0; r < corpora[static_cast<size_t>(c)]->num_records(); ++r) refs.push_back({c, r});
    }
    return refs;
  };
  std::vector<RecordRef> train = refs_of(train_files), valid = refs_of(valid_files);
  if (!per_split) {
    const auto b = split_boundaries(parse_split(o.split), static_cast<int64_t>(train.size()));
    valid.assign(train.begin() + b[1], train.begin() + b[2]);
    train.resize(static_cast<size_t>(b[1]));
    PRIMUS_CHECK(!train.empty(), "SFT data {}: {} record(s), and split '{}' gives none of them to training",
                 fmt::format("{}", fmt::join(train_files, " ")), b[3], o.split);
  }
  PRIMUS_CHECK(!train.empty(), "SFT data {}: no records (empty files?)", fmt::format("{}", fmt::join(train_files, " ")));

  SftDatasetOptions dopt;
  dopt.seq_length = o.seq_length;
  dopt.seed = o.seed;
  dopt.packing = o.packing && !o.preference;
  dopt.pad = tokenizer.pad() >= 0 ? tokenizer.pad() : std::max(tokenizer.eod(), 0);
  auto make = [&](std::vector<RecordRef> refs, const char* split_name, SftSplitStats& stats)
      -> std::shared_ptr<const Dataset> {
    dopt.split_name = split_name;
    if (o.preference) {
      auto d = std::make_shared<PreferenceDataset>(corpora, std::move(refs), dopt);
      stats = d->stats();
      return d->size() > 0 ? d : nullptr;
    }
    auto d = std::make_shared<SftDataset>(corpora, std::move(refs), dopt);
    stats = d->stats();
    return d->size() > 0 ? d : nullptr;
  };
  out.train = make(std::move(train), "train", out.train_stats);
  PRIMUS_CHECK(out.train != nullptr,
               "SFT data: all {} training example(s) were dropped: none has a trained token within seq_length {} "
               "(raise seq_length, or check the loss mode and the data)",
               out.train_stats.examples, o.seq_length);
  if (!valid.empty()) out.valid = make(std::move(valid), "valid", out.valid_stats);
  return out;
}

std::vector<std::string> split_path_list(const std::vector<std::string>& list, std::vector<std::string>& weights) {
  std::vector<std::string> out;
  for (const std::string& s : list)
    for (const std::string& part : split(s, ' ')) {
      const std::string p = trim(part);
      if (p.empty()) continue;
      char* end = nullptr;
      std::strtod(p.c_str(), &end);
      (end == p.c_str() + p.size() ? weights : out).push_back(p);
    }
  return out;
}

}  // namespace primus::data::sft

#include "data/gpt_dataset.h"

#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "data/npy.h"
#include "data/numpy_random.h"

namespace primus::data {

namespace {

constexpr int64_t kAddExtraToken = 1;  // samples are seq_length + 1 tokens
constexpr const char* kIndexVersion = "primus-gpt-index-v1";

// Megatron's _build_document_index: the documents repeated num_epochs times, shuffled as
// one array, or (separate_final_epoch) the first num_epochs-1 epochs and the last one
// shuffled separately, with the same RNG in that order.
std::vector<int32_t> build_document_index(const std::vector<int32_t>& docs, int64_t num_epochs,
                                          NumpyRandomState& rng, bool separate_final_epoch) {
  if (!separate_final_epoch || num_epochs == 1) {
    std::vector<int32_t> out;
    out.reserve(docs.size() * static_cast<size_t>(num_epochs));
    for (int64_t e = 0; e < num_epochs; ++e) out.insert(out.end(), docs.begin(), docs.end());
    rng.shuffle(std::span<int32_t>(out));
    return out;
  }
  std::vector<int32_t> first = build_document_index(docs, num_epochs - 1, rng, false);
  std::vector<int32_t> last = build_document_index(docs, 1, rng, false);
  first.insert(first.end(), last.begin(), last.end());
  return first;
}

// Megatron's build_sample_idx (helpers.cpp) with drop_last_partial_sequence = true.
std::vector<int64_t> build_sample_index(const TokenSource& src, const std::vector<int32_t>& document_index,
                                        int64_t seq_length, int64_t num_epochs, int64_t tokens_per_epoch) {
  const int64_t num_samples = (num_epochs * tokens_per_epoch - kAddExtraToken) / seq_length;
  std::vector<int64_t> idx(static_cast<size_t>(2 * (num_samples + 1)));
  int64_t sample = 0, doc_pos = 0, doc_offset = 0;
  idx[0] = 0;
  idx[1] = 0;
  ++sample;
  const auto n_docs = static_cast<int64_t>(document_index.size());
  while (sample <= num_samples) {
    int64_t remaining = seq_length + kAddExtraToken;
    while (remaining != 0) {
      const int64_t doc_len = src.sequence_length(document_index[doc_pos]) - doc_offset;
      remaining -= doc_len;
      if (remaining <= 0) {
        doc_offset += remaining + doc_len - kAddExtraToken;
        remaining = 0;
      } else {
        if (doc_pos == n_docs - 1) {
          PRIMUS_CHECK(sample == num_samples, "sample index ran out of documents at sample {} of {}", sample,
                       num_samples);
          doc_offset = src.sequence_length(document_index[doc_pos]) - kAddExtraToken;
          break;
        }
        ++doc_pos;
        doc_offset = 0;
      }
    }
    idx[2 * sample] = doc_pos;
    idx[2 * sample + 1] = doc_offset;
    ++sample;
  }
  return idx;
}

// Megatron's _build_shuffle_index: [0, num_samples) shuffled, then [num_samples, total)
// shuffled separately.
std::vector<int64_t> build_shuffle_index(int64_t num_samples, int64_t total, NumpyRandomState& rng) {
  std::vector<int64_t> first(static_cast<size_t>(num_samples));
  std::iota(first.begin(), first.end(), 0);
  rng.shuffle(std::span<int64_t>(first));
  if (num_samples == total) return first;
  std::vector<int64_t> last(static_cast<size_t>(total - num_samples));
  std::iota(last.begin(), last.end(), num_samples);
  rng.shuffle(std::span<int64_t>(last));
  first.insert(first.end(), last.begin(), last.end());
  return first;
}

std::string hash_hex(const std::string& s) {
  uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x84222325cbf29ce4ULL;
  for (unsigned char c : s) {
    h1 = (h1 ^ c) * 0x100000001b3ULL;
    h2 = (h2 ^ c) * 0x100000001b3ULL + 0x9E3779B97F4A7C15ULL;
  }
  return fmt::format("{:016x}{:016x}", h1, h2);
}

}  // namespace

GptDataset::GptDataset(std::shared_ptr<const TokenSource> source, int64_t first, int64_t last, GptDatasetOptions opt)
    : source_(std::move(source)), first_(first), last_(last), opt_(std::move(opt)) {
  PRIMUS_CHECK(opt_.seq_length > 0, "GPT dataset {}: seq_length must be > 0 (got {})", name(), opt_.seq_length);
  PRIMUS_CHECK(0 <= first_ && first_ < last_ && last_ <= source_->num_sequences(),
               "GPT dataset {}: document range [{}, {}) is empty or outside [0, {})", name(), first_, last_,
               source_->num_sequences());
  PRIMUS_CHECK(opt_.num_samples > 0, "GPT dataset {}: num_samples must be > 0 (got {})", name(), opt_.num_samples);
  const std::string description =
      fmt::format("{}\nsource={}\ndocuments=[{}, {})\nnum_samples={}\nseq_length={}\nseed={}\nsplit={}\n",
                  kIndexVersion, source_->cache_key(), first_, last_, opt_.num_samples, opt_.seq_length, opt_.seed,
                  opt_.split_name);
  hash_ = hash_hex(description);
  std::string base;
  if (!opt_.cache_dir.empty()) {
    std::filesystem::create_directories(opt_.cache_dir);
    base = (std::filesystem::path(opt_.cache_dir) / (hash_ + "-GPTDataset-" + opt_.split_name)).string();
    if (load_cache(base, description)) {
      from_cache_ = true;
      return;
    }
  }
  build();
  if (!base.empty()) save_cache(base, description);
}

std::string GptDataset::name() const { return fmt::format("{}[{}]", source_->name(), opt_.split_name); }

void GptDataset::build() {
  std::vector<int32_t> docs(static_cast<size_t>(last_ - first_));
  std::iota(docs.begin(), docs.end(), static_cast<int32_t>(first_));
  int64_t tokens_per_epoch = 0;
  for (int32_t d : docs) tokens_per_epoch += source_->sequence_length(d);
  PRIMUS_CHECK(tokens_per_epoch > kAddExtraToken,
               "GPT dataset {}: its {} documents hold {} tokens; at least seq_length + 1 = {} are needed", name(),
               docs.size(), tokens_per_epoch, opt_.seq_length + 1);
  // Megatron's _get_num_epochs.
  int64_t num_epochs = 1, tokens = tokens_per_epoch;
  const int64_t tokens_needed = opt_.num_samples * opt_.seq_length + kAddExtraToken;
  while (tokens < tokens_needed) {
    tokens += tokens_per_epoch;
    ++num_epochs;
  }
  bool separate_final_epoch = false;
  int64_t samples_sans_final = 0;
  if (num_epochs > 1) {
    samples_sans_final = ((num_epochs - 1) * tokens_per_epoch - kAddExtraToken) / opt_.seq_length;
    const int64_t from_final = opt_.num_samples - samples_sans_final;
    const int64_t per_epoch = (tokens_per_epoch - kAddExtraToken) / opt_.seq_length;
    separate_final_epoch = from_final < static_cast<int64_t>(0.80 * static_cast<double>(per_epoch));
  }
  PRIMUS_CHECK(opt_.seed <= 0xffffffffULL, "seed {} does not fit numpy's RandomState (must be < 2^32)", opt_.seed);
  NumpyRandomState rng(static_cast<uint32_t>(opt_.seed));
  document_index_ = build_document_index(docs, num_epochs, rng, separate_final_epoch);
  sample_index_ = build_sample_index(*source_, document_index_, opt_.seq_length, num_epochs, tokens_per_epoch);
  const int64_t total = static_cast<int64_t>(sample_index_.size() / 2) - 1;
  shuffle_index_ = build_shuffle_index(separate_final_epoch ? samples_sans_final : total, total, rng);
}

bool GptDataset::load_cache(const std::string& base, const std::string& description) {
  std::ifstream d(base + "-description.txt");
  if (!d.good()) return false;
  std::stringstream ss;
  ss << d.rdbuf();
  if (ss.str() != description) return false;
  auto doc = npy_read_i32(base + "-document_index.npy");
  auto smp = npy_read_i64(base + "-sample_index.npy");
  auto shf = npy_read_i64(base + "-shuffle_index.npy");
  if (!doc || !smp || !shf || smp->size() < 4 || smp->size() % 2 || shf->size() != smp->size() / 2 - 1) return false;
  document_index_ = std::move(*doc);
  sample_index_ = std::move(*smp);
  shuffle_index_ = std::move(*shf);
  return true;
}

void GptDataset::save_cache(const std::string& base, const std::string& description) const {
  npy_write_i32(base + "-document_index.npy", document_index_);
  npy_write_i64(base + "-sample_index.npy", sample_index_, 2);
  npy_write_i64(base + "-shuffle_index.npy", shuffle_index_);
  // The description last: its presence marks a complete set.
  const std::string tmp = base + "-description.txt.tmp";
  {
    std::ofstream out(tmp);
    out << description;
    PRIMUS_CHECK(out.good(), "cannot write {}", tmp);
  }
  std::filesystem::rename(tmp, base + "-description.txt");
}

void GptDataset::sample(int64_t i, int32_t* out) const {
  PRIMUS_CHECK(i >= 0 && i < size(), "GPT dataset {}: sample {} outside [0, {})", name(), i, size());
  const int64_t s = shuffle_index_[i];
  const int64_t beg = sample_index_[2 * s], beg_off = sample_index_[2 * s + 1];
  const int64_t end = sample_index_[2 * s + 2], end_off = sample_index_[2 * s + 3];
  if (beg == end) {
    source_->read(document_index_[beg], beg_off, end_off - beg_off + kAddExtraToken, out);
    return;
  }
  int64_t written = 0;
  for (int64_t k = beg; k <= end; ++k) {
    const int32_t doc = document_index_[k];
    const int64_t off = (k == beg) ? beg_off : 0;
    const int64_t len = (k < end) ? source_->sequence_length(doc) - off : end_off + kAddExtraToken;
    source_->read(doc, off, len, out + written);
    written += len;
  }
  PRIMUS_CHECK(written == opt_.seq_length + 1, "GPT dataset {}: sample {} has {} tokens, expected {}", name(), i,
               written, opt_.seq_length + 1);
}

void GptDataset::example(int64_t i, ExampleView out) const {
  const int64_t t = opt_.seq_length;
  std::vector<int32_t> text(static_cast<size_t>(t + 1));
  sample(i, text.data());
  for (int64_t k = 0; k < t; ++k) {
    out.tokens[k] = text[k];
    out.labels[k] = text[k + 1];
    float m = 1.0f;
    if (opt_.eod_mask_loss && text[k] == opt_.eod) m = 0.0f;
    if (opt_.pad >= 0 && text[k + 1] == opt_.pad) m = 0.0f;
    out.loss_mask[k] = m;
  }
  if (out.positions == nullptr) return;
  // The end-of-document token belongs to the document it ends; the next token starts the next.
  int32_t segment = 0, position = 0;
  for (int64_t k = 0; k < t; ++k) {
    out.positions[k] = opt_.reset_position_ids ? position : static_cast<int32_t>(k);
    out.segments[k] = opt_.reset_attention_mask ? segment : 0;
    ++position;
    if (text[k] == opt_.eod) {
      ++segment;
      position = 0;
    }
  }
}

// ---- blending -------------------------------------------------------------------------

BlendedDataset::BlendedDataset(std::vector<std::shared_ptr<const Dataset>> datasets, std::vector<double> weights,
                               int64_t size)
    : datasets_(std::move(datasets)) {
  PRIMUS_CHECK(!datasets_.empty() && datasets_.size() == weights.size() && datasets_.size() < 32768,
               "blend of {} datasets with {} weights", datasets_.size(), weights.size());
  double sum = 0;
  for (double w : weights) {
    PRIMUS_CHECK(w >= 0, "blend weight {} is negative", w);
    sum += w;
  }
  PRIMUS_CHECK(sum > 0, "blend weights sum to 0");
  for (double& w : weights) w /= sum;
  for (const auto& d : datasets_)
    PRIMUS_CHECK(d->seq_length() == datasets_[0]->seq_length() && d->rows_per_sample() == datasets_[0]->rows_per_sample() &&
                     d->packs() == datasets_[0]->packs(),
                 "blended datasets differ in seq_length, rows per sample or packing ({} and {})", d->name(),
                 datasets_[0]->name());
  // Megatron's build_blending_indices: pick the dataset with the largest deficit.
  dataset_index_.resize(static_cast<size_t>(size));
  dataset_sample_index_.resize(static_cast<size_t>(size));
  std::vector<int64_t> current(datasets_.size(), 0);
  for (int64_t i = 0; i < size; ++i) {
    const double denom = std::max(static_cast<double>(i), 1.0);
    size_t best = 0;
    double best_err = weights[0] * denom - static_cast<double>(current[0]);
    for (size_t d = 1; d < datasets_.size(); ++d) {
      const double err = weights[d] * denom - static_cast<double>(current[d]);
      if (err > best_err) {
        best_err = err;
        best = d;
      }
    }
    dataset_index_[i] = static_cast<int16_t>(best);
    dataset_sample_index_[i] = current[best]++;
  }
  for (size_t d = 0; d < datasets_.size(); ++d)
    PRIMUS_CHECK(current[d] <= datasets_[d]->size(), "blend needs {} samples of {}, which has {}", current[d],
                 datasets_[d]->name(), datasets_[d]->size());
}

void BlendedDataset::sample(int64_t i, int32_t* out) const {
  PRIMUS_CHECK(i >= 0 && i < size(), "blended dataset: sample {} outside [0, {})", i, size());
  datasets_[dataset_index_[i]]->sample(dataset_sample_index_[i], out);
}

void BlendedDataset::example(int64_t i, ExampleView out) const {
  PRIMUS_CHECK(i >= 0 && i < size(), "blended dataset: sample {} outside [0, {})", i, size());
  datasets_[dataset_index_[i]]->example(dataset_sample_index_[i], out);
}

std::string BlendedDataset::name() const {
  std::string s = "blend(";
  for (size_t d = 0; d < datasets_.size(); ++d) s += (d ? ", " : "") + datasets_[d]->name();
  return s + ")";
}

// ---- loader ---------------------------------------------------------------------------

BatchLoader::BatchLoader(const Dataset& dataset, int64_t micro_batch, int dp_rank, int dp_size,
                         int64_t consumed_samples)
    : dataset_(dataset), micro_batch_(micro_batch), dp_rank_(dp_rank), dp_size_(dp_size), consumed_(consumed_samples) {
  PRIMUS_CHECK(micro_batch > 0, "micro_batch_size must be > 0 (got {})", micro_batch);
  PRIMUS_CHECK(dp_size > 0 && dp_rank >= 0 && dp_rank < dp_size, "data-parallel rank {} of size {}", dp_rank, dp_size);
  PRIMUS_CHECK(consumed_samples >= 0, "consumed_samples must be >= 0 (got {})", consumed_samples);
  PRIMUS_CHECK(dataset.size() > 0, "dataset {} is empty", dataset.name());
}

Batch make_batch(const Dataset& dataset, const std::vector<int64_t>& samples) {
  const int64_t t = dataset.seq_length(), mb = static_cast<int64_t>(samples.size());
  const int64_t rows = dataset.rows_per_sample() * mb;
  const bool packs = dataset.packs();
  Batch b;
  b.tokens = Tensor::empty({rows, t}, DType::I32);
  b.labels = Tensor::empty({rows, t}, DType::I32);
  b.loss_mask = Tensor::empty({rows, t}, DType::F32);
  if (packs) {
    b.positions = Tensor::empty({rows, t}, DType::I32);
    b.segments = Tensor::empty({rows, t}, DType::I32);
  }
  for (int64_t r = 0; r < mb; ++r) {
    ExampleView v{b.tokens.data<int32_t>() + r * t, b.labels.data<int32_t>() + r * t,
                  b.loss_mask.data<float>() + r * t};
    if (packs) {
      v.positions = b.positions.data<int32_t>() + r * t;
      v.segments = b.segments.data<int32_t>() + r * t;
    }
    v.row_stride = mb * t;
    dataset.example(samples[static_cast<size_t>(r)], v);
  }
  b.samples = samples;
  return b;
}

Batch BatchLoader::next() {
  const int64_t start = consumed_ + static_cast<int64_t>(dp_rank_) * micro_batch_;
  std::vector<int64_t> samples(static_cast<size_t>(micro_batch_));
  for (int64_t r = 0; r < micro_batch_; ++r) samples[static_cast<size_t>(r)] = (start + r) % dataset_.size();
  consumed_ += micro_batch_ * dp_size_;
  return make_batch(dataset_, samples);
}

}  // namespace primus::data

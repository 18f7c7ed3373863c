// Megatron's GPT dataset, its blending and the splits, and the micro-batch loader.
//
// GptDataset (megatron/core/datasets/gpt_dataset.py, same algorithm and same numpy RNG, so
// the same seed gives Megatron's sample order):
//   document_index  the split's sequence ids repeated over as many epochs as the requested
//                   samples need, shuffled (the last epoch separately when it is used for
//                   less than 80% of an epoch)
//   sample_index    (document_index position, token offset) where each sample starts;
//                   a sample is seq_length + 1 tokens and may span documents
//   shuffle_index   a permutation of the samples
// BlendedDataset: sample i comes from the dataset whose share so far lags its weight most
// (Megatron's build_blending_indices); each part is built with 0.5% more samples than its
// share.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/data_config.h"
#include "data/token_source.h"

namespace primus::data {

// One training example: tokens (T), labels (T), loss mask (T) with T = seq_length, for each
// of the dataset's rows_per_sample() rows: row r starts at x + r * row_stride. positions and
// segments (T per row) are null unless the dataset packs (Dataset::packs()).
struct ExampleView {
  int32_t* tokens;
  int32_t* labels;
  float* loss_mask;
  int32_t* positions = nullptr;
  int32_t* segments = nullptr;
  int64_t row_stride = 0;  // elements between a sample's rows (rows_per_sample() > 1)
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual int64_t seq_length() const = 0;
  // The seq_length + 1 tokens of sample i (0 <= i < size()).
  virtual void sample(int64_t i, int32_t* out) const = 0;
  std::vector<int32_t> sample(int64_t i) const {
    std::vector<int32_t> v(static_cast<size_t>(seq_length() + 1));
    sample(i, v.data());
    return v;
  }
  // tokens = sample[:-1], labels = sample[1:]; loss_mask 0 where the input token is the
  // end of document and eod_mask_loss is set (Megatron's rule), and where the label is the
  // pad token; else 1.
  virtual void example(int64_t i, ExampleView out) const = 0;
  virtual std::string name() const = 0;
  // Rows one sample fills (2 for a preference pair: chosen, then rejected).
  virtual int64_t rows_per_sample() const { return 1; }
  // True when examples hold several documents per row (positions and segments are filled).
  virtual bool packs() const { return false; }
};

struct GptDatasetOptions {
  int64_t num_samples = 0;  // at least this many samples are built
  int64_t seq_length = 0;
  uint64_t seed = 1234;
  std::string cache_dir;    // empty: no cache
  std::string split_name = "train";
  int32_t eod = 0;
  int32_t pad = -1;
  bool eod_mask_loss = false;
  bool reset_position_ids = false, reset_attention_mask = false;  // DataConfig's
};

class GptDataset final : public Dataset {
 public:
  // Uses sequences [first, last) of `source`.
  GptDataset(std::shared_ptr<const TokenSource> source, int64_t first, int64_t last, GptDatasetOptions options);
  int64_t size() const override { return static_cast<int64_t>(sample_index_.size() / 2) - 1; }
  int64_t seq_length() const override { return opt_.seq_length; }
  void sample(int64_t i, int32_t* out) const override;
  using Dataset::sample;
  void example(int64_t i, ExampleView out) const override;
  std::string name() const override;
  bool packs() const override { return opt_.reset_position_ids || opt_.reset_attention_mask; }

  // The indices (for tests and the numpy reference).
  const std::vector<int32_t>& document_index() const { return document_index_; }
  const std::vector<int64_t>& sample_index() const { return sample_index_; }  // (rows, 2) flat
  const std::vector<int64_t>& shuffle_index() const { return shuffle_index_; }
  bool loaded_from_cache() const { return from_cache_; }
  std::string cache_hash() const { return hash_; }

 private:
  void build();
  bool load_cache(const std::string& base, const std::string& description);
  void save_cache(const std::string& base, const std::string& description) const;

  std::shared_ptr<const TokenSource> source_;
  int64_t first_, last_;
  GptDatasetOptions opt_;
  std::vector<int32_t> document_index_;
  std::vector<int64_t> sample_index_;
  std::vector<int64_t> shuffle_index_;
  bool from_cache_ = false;
  std::string hash_;
};

class BlendedDataset final : public Dataset {
 public:
  BlendedDataset(std::vector<std::shared_ptr<const Dataset>> datasets, std::vector<double> weights, int64_t size);
  int64_t size() const override { return static_cast<int64_t>(dataset_index_.size()); }
  int64_t seq_length() const override { return datasets_[0]->seq_length(); }
  void sample(int64_t i, int32_t* out) const override;
  using Dataset::sample;
  void example(int64_t i, ExampleView out) const override;
  std::string name() const override;
  int64_t rows_per_sample() const override { return datasets_[0]->rows_per_sample(); }
  bool packs() const override { return datasets_[0]->packs(); }
  const std::vector<int16_t>& dataset_index() const { return dataset_index_; }
  const std::vector<int64_t>& dataset_sample_index() const { return dataset_sample_index_; }

 private:
  std::vector<std::shared_ptr<const Dataset>> datasets_;
  std::vector<int16_t> dataset_index_;
  std::vector<int64_t> dataset_sample_index_;
};

// The datasets of a run; a split with no data or no requested samples is null.
struct DatasetSplits {
  std::shared_ptr<const Dataset> train, valid, test;
};

DatasetSplits build_datasets(const DataConfig& config, int64_t train_samples, int64_t valid_samples,
                             int64_t test_samples);

// Why `build_datasets` left the training split null, in words for the error message: each
// source's document count and how many documents the split gives training, with the fix.
std::string explain_empty_train_split(const DataConfig& config);

// "969,30,1" (or "98/2/0") -> normalized weights, padded to 3.
std::vector<double> parse_split(const std::string& split);
// Megatron's _get_split_indices: boundaries [0, a, b, n] over n documents.
std::vector<int64_t> split_boundaries(const std::vector<double>& weights, int64_t n);
// Megatron's blend list -> (prefixes, weights); weights empty when none were given.
void parse_blend(const std::vector<std::string>& spec, std::vector<std::string>& prefixes,
                 std::vector<double>& weights);

// Deterministic sampler (rows_per_sample R: a batch of R * micro_batch rows, row r of the
// micro-batch's j-th sample at batch row r * micro_batch + j): call k returns samples [c + r*B, c + (r+1)*B) of the dataset,
// where c = consumed_samples + k*B*dp_size, r = dp_rank, B = micro_batch (Megatron's
// MegatronPretrainingSampler); indices past the end wrap around. Resume by passing the
// consumed_samples of the checkpoint.
// The micro-batch of the given samples of `dataset` (BatchLoader's layout).
Batch make_batch(const Dataset& dataset, const std::vector<int64_t>& samples);

class BatchLoader {
 public:
  BatchLoader(const Dataset& dataset, int64_t micro_batch, int dp_rank, int dp_size, int64_t consumed_samples);
  Batch next();
  int64_t consumed_samples() const { return consumed_; }

 private:
  const Dataset& dataset_;
  int64_t micro_batch_;
  int dp_rank_, dp_size_;
  int64_t consumed_;
};

}  // namespace primus::data

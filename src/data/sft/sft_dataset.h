// Post-training datasets (SFT, LoRA, DPO) over tokenized chat data, and their builder.
//
// SftDataset: one row per packed bin (packing: first-fit decreasing, packing.h) or per
//   example (padded). In a row, example e of length L (cut to seq_length) fills L slots:
//     tokens    its tokens
//     labels    the next token of the same example; -1 at its last token (no target)
//     loss_mask the mask bit of the label token (sft_tokenize.h); 0 at its last token
//     positions 0, 1, ..., L-1 (restart per example)                       [packing only]
//     segments  e's index in the row: 0, 1, 2, ...                           [packing only]
//   The free slots at the end are padding: token = pad (the tokenizer's pad id, else eod),
//   label -1, loss_mask 0, positions from 0 again, segment = the number of examples in the
//   row (its own id after the last example). Rows are shuffled once by the seed (numpy's
//   RandomState(seed).shuffle, as the GPT dataset's indices); size() = rows. Examples with no
//   trained target inside seq_length are dropped (counted).
// PreferenceDataset: rows_per_sample() = 2; example i writes the chosen sequence at row 0 and
//   the rejected one at row 1 (ExampleView::row_stride further), each padded to seq_length,
//   the loss mask on completion tokens only. Pairs whose prompt alone is >= seq_length are
//   dropped; longer completions are cut at seq_length (both counted). Pairs are shuffled by
//   the seed.
// build_sft_datasets: the files of each split (JSONL, plain/.gz/.zst) -> records -> cached
//   tokenization (sft_cache.h) -> train and valid datasets, with the statistics for the log.
//   Splits as for GPT data: data_paths are split by `split` ("969,30,1": train, valid and a
//   test share that SFT does not use) over the records in file order; train_paths /
//   valid_paths, when either is set, are used whole instead.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/gpt_dataset.h"
#include "data/sft/packing.h"
#include "data/sft/sft_cache.h"
#include "data/sft/sft_tokenize.h"

namespace primus::data::sft {

// A record of one of the corpora.
struct RecordRef {
  int32_t corpus = 0;
  int64_t record = 0;
};

struct SftSplitStats {
  int64_t examples = 0;      // records given to the split (pairs for preference data)
  int64_t rows = 0;          // dataset rows (preference: pairs kept, each two batch rows)
  int64_t tokens = 0;        // real tokens in the rows, after cutting to seq_length
  int64_t loss_tokens = 0;   // trained targets in the rows
  int64_t truncated = 0;     // examples (pairs) cut to seq_length
  int64_t dropped = 0;       // examples with no trained target within seq_length (pairs whose prompt fills it)
  double packing_efficiency = 0;  // tokens / (rows x rows_per_sample x seq_length)
};

struct SftDatasetOptions {
  int64_t seq_length = 0;
  uint64_t seed = 1234;  // < 2^32 (numpy's RandomState)
  bool packing = false;
  int32_t pad = 0;       // token id written into padding slots
  std::string split_name = "train";
};

class SftDataset final : public Dataset {
 public:
  SftDataset(std::vector<std::shared_ptr<const TokenizedCorpus>> corpora, std::vector<RecordRef> records,
             SftDatasetOptions options);
  int64_t size() const override { return static_cast<int64_t>(rows_.size()); }
  int64_t seq_length() const override { return opt_.seq_length; }
  // The row's tokens, then one pad token (seq_length + 1).
  void sample(int64_t i, int32_t* out) const override;
  using Dataset::sample;
  void example(int64_t i, ExampleView out) const override;
  std::string name() const override;
  bool packs() const override { return opt_.packing; }

  // rows()[i] = the records in row i (after the shuffle), in slot order.
  const std::vector<std::vector<RecordRef>>& rows() const { return rows_; }
  const SftSplitStats& stats() const { return stats_; }

 private:
  std::vector<std::shared_ptr<const TokenizedCorpus>> corpora_;
  SftDatasetOptions opt_;
  std::vector<std::vector<RecordRef>> rows_;
  SftSplitStats stats_;
};

class PreferenceDataset final : public Dataset {
 public:
  // Every corpus must hold preference records (two sequences each).
  PreferenceDataset(std::vector<std::shared_ptr<const TokenizedCorpus>> corpora, std::vector<RecordRef> pairs,
                    SftDatasetOptions options);
  int64_t size() const override { return static_cast<int64_t>(pairs_.size()); }
  int64_t seq_length() const override { return opt_.seq_length; }
  // The chosen row's tokens, then one pad token (seq_length + 1).
  void sample(int64_t i, int32_t* out) const override;
  using Dataset::sample;
  void example(int64_t i, ExampleView out) const override;
  std::string name() const override;
  int64_t rows_per_sample() const override { return 2; }

  const std::vector<RecordRef>& pairs() const { return pairs_; }  // after drops and the shuffle
  const SftSplitStats& stats() const { return stats_; }

 private:
  std::vector<std::shared_ptr<const TokenizedCorpus>> corpora_;
  SftDatasetOptions opt_;
  std::vector<RecordRef> pairs_;
  SftSplitStats stats_;
};

struct SftDataOptions {
  std::vector<std::string> data_paths;   // JSONL files, split into train/valid by `split`
  std::vector<std::string> train_paths;  // when this or valid_paths is set: used whole,
  std::vector<std::string> valid_paths;  //   and data_paths is not read
  std::string split = "969,30,1";
  int64_t seq_length = 0;
  uint64_t seed = 1234;
  bool packing = false;                  // SFT only; preference pairs are never packed
  LossMode loss_mode = LossMode::kAssistantOnly;
  // "" = the chat_template of tokenizer_config.json beside the tokenizer model, "none" = raw
  // prompt + completion, else a .jinja file or a tokenizer_config.json.
  std::string chat_template;
  std::string cache_dir;                 // data_cache_path; "" = next to each input
  bool use_cache = true;
  bool preference = false;               // DPO pairs instead of SFT records
};

struct SftDatasets {
  std::shared_ptr<const Dataset> train, valid;  // valid is null when no data goes to it
  SftSplitStats train_stats, valid_stats;
  int64_t files_from_cache = 0;  // inputs whose tokenization was loaded from the cache
  int64_t files_tokenized = 0;   // inputs tokenized by this call
  std::vector<std::string> cache_dirs;  // one per input ("" where none could be written)
  std::vector<std::string> warnings;    // caches rebuilt or not writable
  std::string chat_template;            // the template's origin, or "none"
  // One log line: examples, rows, tokens, loss tokens, packing efficiency, truncated, dropped.
  std::string summary() const;
};

// Reads, tokenizes (or loads from the cache) and builds the datasets. `tokenizer` is used
// for encoding (its word cache is touched); tokenizer_model_path is where its files are (for
// the default chat template and the cache key; "" for NullTokenizer).
SftDatasets build_sft_datasets(const SftDataOptions& options, Tokenizer& tokenizer,
                               const std::string& tokenizer_model_path);

// The entries of a data path list, each of which may hold several space-separated paths
// (Megatron's style); the numbers among them (blend weights) go to `weights` instead.
std::vector<std::string> split_path_list(const std::vector<std::string>& list, std::vector<std::string>& weights);

}  // namespace primus::data::sft

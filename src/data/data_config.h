// What the trainer tells the data pipeline (filled from the experiment config, Megatron's
// option names), and the micro-batch it gets back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace primus::data {

struct DataConfig {
  // Each list is Megatron's blend syntax: ["prefix"] or ["0.3", "prefixA", "0.7", "prefixB"]
  // (a single string "0.3 prefixA 0.7 prefixB" is split on spaces). data_path is split
  // into train/valid/test by `split`; the *_data_path lists, when set, are used whole.
  std::vector<std::string> data_path, train_data_path, valid_data_path, test_data_path;
  std::string split = "969,30,1";
  std::string data_cache_path;  // where index files are cached; empty: no cache (built in memory)
  int64_t seq_length = 0;
  uint64_t seed = 1234;
  bool mock_data = false;  // synthetic documents of vocab_size ids, no files
  int64_t vocab_size = 0;  // for mock_data
  int64_t eod_token = 0;
  bool eod_mask_loss = false;
  // Megatron's get_ltor_masks_and_position_ids: after each end-of-document token of a sample,
  // positions restart at 0 (reset_position_ids) and attention does not reach back across it
  // (reset_attention_mask). Either makes batches carry positions and segments.
  bool reset_position_ids = false, reset_attention_mask = false;
  int64_t pad_token = -1;
};

// One micro-batch, CPU tensors. B = micro_batch_size x the dataset's rows_per_sample (2 for
// preference pairs: rows [0, mb) chosen, [mb, 2 mb) rejected).
struct Batch {
  Tensor tokens;     // int32 (B, T)   inputs
  Tensor labels;     // int32 (B, T)   targets: tokens shifted by one
  Tensor loss_mask;  // fp32 (B, T)    1, or 0 where the loss is masked (see Dataset::example)
  // Packed sequences (several documents in one row; empty for datasets that do not pack):
  Tensor positions;  // int32 (B, T)   position of each token within its document (RoPE), from 0
  Tensor segments;   // int32 (B, T)   document id of each token, non-decreasing along a row;
                     //                attention never crosses a change of id
  std::vector<int64_t> samples;  // the dataset sample of each micro-batch entry (micro_batch_size)
};

}  // namespace primus::data

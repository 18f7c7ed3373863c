// The files and directories a training run reads and writes, checked before it starts
// (`primus train --dry-run`, docs/SAFE.md "--dry-run checks"), as the run itself would find them:
//
//   reads   pretraining: every prefix of data_path (Megatron's "weight prefix ..." list), or of
//             train_data_path and (with eval_iters > 0) valid_data_path / test_data_path: PREFIX.bin
//             and PREFIX.idx; nothing with mock_data;
//           post-training: the chat JSONL files of data_path, or train_data_path / valid_data_path
//             (GRPO: the prompt files of train_data_path or data_path), and the chat template
//             (chat_template, or tokenizer_config.json beside tokenizer_model);
//           the tokenizer (tokenizer_type / tokenizer_model) whenever data is read;
//           the checkpoint the run starts from, chosen as Trainer::restore chooses it: save under
//             auto_continue_train when it holds one, else load, else pretrained_checkpoint (opened
//             with CheckpointReader: tracker, meta.json, file sizes, safetensors headers); GRPO's
//             reference model (pretrained_checkpoint with grpo_beta > 0);
//   writes  save, the log directory (<workspace>/<work_group>/<user_name>/<exp_name>/logs),
//           tensorboard_dir (unless disable_tensorboard), data_cache_path: each must be a writable
//           directory, or creatable under its nearest existing parent. The check creates and removes
//           a probe file there; it never creates the directory itself and leaves nothing behind.
//
// Relative paths are relative to the current directory, as for the run. Files are opened for
// reading (an unreadable file is named even when it exists); nothing is parsed beyond what the
// checkpoint reader validates.
#pragma once

#include <string>
#include <vector>

#include "config/config.h"

namespace primus::train {

struct PathFinding {
  bool problem = true;  // false: a warning (the run starts, perhaps not as meant)
  std::string key;      // what it is about: "data_path[1]", "save", "tokenizer_model", "log directory" ...
  std::string message;  // "<key> '<path>': what is wrong; the fix"
};

struct RunPathsReport {
  std::vector<PathFinding> findings;  // problems and warnings, in the order above
  std::vector<std::string> checked;   // what passed, one line each ("save output/ckpt: writable")
};

// `cfg` validated (config::load_experiment).
RunPathsReport check_run_paths(const config::Config& cfg);

}  // namespace primus::train

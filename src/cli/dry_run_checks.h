// What `primus train --dry-run` checks besides resolving the config (docs/SAFE.md "--dry-run
// checks"), so that a run that would stop at start-up (or in its first minutes) stops here:
//
//   refusals  what the run refuses once the config is valid: train::train_options (fp8, keys of
//             features that are not built or not on, ...) and the model's check_buildable;
//   files     train/run_paths.h: every data, tokenizer, chat-template and checkpoint file the run
//             reads, and every directory it writes (save, logs, tensorboard_dir, data_cache_path);
//   keys      config/ignored_keys.h: keys set to a non-default value that this run ignores (warnings);
//   memory    the estimate per GPU against --device-memory: a warning above 95% of it (tight), and
//             above 100% (does not fit), as describe_model prints it.
//
// Problems fail the dry run (exit 1) after everything is printed; warnings do not.
#pragma once

#include <string>
#include <vector>

#include "config/config.h"

namespace primus::cli {

struct DryRunReport {
  std::vector<std::string> problems;  // each names its key, the path or value, and the fix
  std::vector<std::string> warnings;
  std::vector<std::string> checked;   // what passed

  // The "dry-run checks:" block: one line per item checked, problem and warning.
  std::string text() const;
  // The last line: "dry run: OK ..." or "dry run FAILED: N problems ...".
  std::string verdict() const;
};

// `cfg` validated; device_memory_gib 0 skips the memory comparison.
DryRunReport dry_run_checks(const config::Config& cfg, double device_memory_gib);

}  // namespace primus::cli

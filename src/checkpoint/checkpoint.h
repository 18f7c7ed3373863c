// Checkpoints in Megatron's layout, written so that a crash never loses the last good one.
//
//   <save>/latest_checkpointed_iteration.txt     "100" (the tracker; Megatron's name and format)
//   <save>/iter_0000100/meta.json                format version, iteration, consumed samples,
//                                                which parts exist and their byte sizes, extra
//   <save>/iter_0000100/model.safetensors        model weights by parameter name
//   <save>/iter_0000100/optimizer.safetensors    optimizer state (moments, master weights, step)
//                                                unless no_save_optim
//   <save>/iter_0000100/rng.json                 RNG state unless no_save_rng
//   <save>/iter_0000100/config.json              the resolved experiment config
//
// Save protocol (each step durable before the next):
//   1. remove stale `iter_*.tmp-<pid>` / `iter_*.trash-<pid>` directories left by killed
//      saves (never a complete `iter_XXXXXXX`, never a live process's own temp dir);
//   2. write every file into `<save>/iter_XXXXXXX.tmp-<pid>/`, fsync each, meta.json last;
//      fsync the directory;
//   3. rename it to `iter_XXXXXXX` (an existing one of the same iteration is swapped out
//      atomically with renameat2(RENAME_EXCHANGE) and then deleted); fsync `<save>`;
//   4. only then replace the tracker: temp file + fsync + rename + fsync `<save>`.
// A kill -9 at any point leaves the tracker naming a complete directory.
//
// One writer per save directory: in a multi-rank run, rank 0 saves (the others pass their
// state to it or skip).
//
// Async save: save() snapshots every tensor to host memory on the calling thread (the only
// part training waits for), then writes on a background thread. At most one save is in
// flight: the next save() (or wait(), or the destructor) waits for the previous one. The
// host buffers are kept and reused by the next save with the same tensors (one host copy
// of model + optimizer stays allocated while the writer lives).
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "core/tensor.h"

namespace primus::checkpoint {

constexpr int kCheckpointFormatVersion = 1;
constexpr const char* kTrackerFileName = "latest_checkpointed_iteration.txt";

struct CheckpointContent {
  int64_t iteration = 0;
  int64_t consumed_train_samples = 0;
  int64_t consumed_valid_samples = 0;
  NamedTensorList model;      // any device; copied to host
  NamedTensorList optimizer;  // empty: not saved (no_save_optim)
  nlohmann::json rng;         // null: not saved (no_save_rng)
  nlohmann::json config;      // the resolved config; null: no config.json
  nlohmann::json extra;       // anything else the loop needs back (data position, scheduler, ...)
};

struct SaveResult {
  int64_t iteration = 0;
  std::string path;          // the final iter_XXXXXXX directory
  uint64_t bytes = 0;        // total bytes written
  double snapshot_seconds = 0;  // time the caller waited for the host copy
  double write_seconds = 0;     // time spent writing and syncing
};

struct CheckpointWriterOptions {
  bool async = false;
  // Keep only the newest `keep_last` complete checkpoints (0 = keep all). The one the
  // tracker names is never deleted.
  int keep_last = 0;
  // Called after each save is durable (on the writer thread when async).
  std::function<void(const SaveResult&)> on_saved;
};

class CheckpointWriter {
 public:
  CheckpointWriter(std::string save_dir, CheckpointWriterOptions options = {});
  ~CheckpointWriter();  // waits for an in-flight save; reports its error to stderr
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Saves `content`. With async, returns after the host snapshot; an error of the
  // background write is rethrown by the next save() or wait().
  void save(const CheckpointContent& content);
  // Blocks until no save is in flight; rethrows the error of a failed background save.
  void wait();
  // A save was started and not yet waited for (its thread may have finished already).
  bool in_flight() const { return worker_.joinable(); }
  // The last save that completed (safe to call while a save is in flight).
  std::optional<SaveResult> last_result() const;
  const std::string& save_dir() const { return save_dir_; }

 private:
  std::string save_dir_;
  CheckpointWriterOptions options_;
  std::thread worker_;
  std::exception_ptr worker_error_;
  mutable std::mutex result_mutex_;
  // Host buffers of the last async snapshot, reused when the next one has the same tensors.
  NamedTensorList staging_model_, staging_optimizer_;
  std::optional<SaveResult> last_result_;
};

// "iter_0000100"
std::string checkpoint_dir_name(int64_t iteration);
// The iteration in `<dir>/latest_checkpointed_iteration.txt`, or nullopt when there is no
// tracker. Throws naming the file when its content is not an iteration number.
std::optional<int64_t> latest_iteration(const std::string& dir);
// Iterations of the complete checkpoints (iter_XXXXXXX with a valid meta.json) in `dir`, ascending.
std::vector<int64_t> complete_checkpoints(const std::string& dir);

// Writes one checkpoint directory at `iter_dir` (no temp name, no tracker): the building
// block of CheckpointWriter, exposed for tools (convert) and tests. Returns bytes written.
uint64_t write_checkpoint_files(const std::string& iter_dir, const CheckpointContent& content);

// Which parts a checkpoint directory holds.
struct CheckpointParts {
  bool model = false, optimizer = false, rng = false, config = false;
};

// Opens a checkpoint for reading. `dir` is either a save directory (then `iteration`, or
// the tracker's iteration when absent) or an iter_XXXXXXX directory itself. Validates
// meta.json and the size of every listed file up front; errors name the file, what was
// found and what was expected.
class CheckpointReader {
 public:
  CheckpointReader(const std::string& dir, std::optional<int64_t> iteration = std::nullopt);
  ~CheckpointReader();

  const std::string& path() const { return path_; }  // the iter_XXXXXXX directory
  int64_t iteration() const { return iteration_; }
  int format_version() const { return format_version_; }
  int64_t consumed_train_samples() const { return meta_.value("consumed_train_samples", int64_t{0}); }
  int64_t consumed_valid_samples() const { return meta_.value("consumed_valid_samples", int64_t{0}); }
  const CheckpointParts& parts() const { return parts_; }
  const nlohmann::json& meta() const { return meta_; }
  nlohmann::json extra() const { return meta_.value("extra", nlohmann::json()); }
  nlohmann::json rng() const;     // throws when the checkpoint has no RNG state
  nlohmann::json config() const;  // throws when there is no config.json

  // Tensors as stored, copied into owned CPU tensors.
  NamedTensorList model_tensors() const;
  NamedTensorList optimizer_tensors() const;  // throws when there is no optimizer state
  // The open files (mapped), for callers that copy straight into device memory.
  const SafetensorsFile& model_file() const;
  const SafetensorsFile& optimizer_file() const;

 private:
  std::string path_;
  int64_t iteration_ = 0;
  int format_version_ = 0;
  nlohmann::json meta_;
  CheckpointParts parts_;
  std::unique_ptr<SafetensorsFile> model_, optimizer_;
};

// Copies `file`'s tensors into `targets` by name (targets on any device). Every target
// must be in the file with the same shape; with `strict`, every file tensor must be a
// target too. Same dtype copies bit for bit; F32/BF16/F16 convert between each other.
// Errors name the file, the tensor, both shapes, and the nearest name for unknown ones.
void load_tensors_into(const SafetensorsFile& file, const NamedTensorList& targets, bool strict = true);

// The whole checkpoint on the host, as the training loop restores it.
struct LoadedCheckpoint {
  std::string path;
  int64_t iteration = 0;
  int format_version = 0;
  int64_t consumed_train_samples = 0;
  int64_t consumed_valid_samples = 0;
  CheckpointParts parts;  // what the checkpoint holds
  NamedTensorList model;
  NamedTensorList optimizer;  // empty unless load_optim and present
  nlohmann::json rng;         // null unless load_rng and present
  nlohmann::json config;
  nlohmann::json extra;
};
LoadedCheckpoint load_checkpoint(const std::string& dir, std::optional<int64_t> iteration = std::nullopt,
                                 bool load_optim = true, bool load_rng = true);

}  // namespace primus::checkpoint

#include "checkpoint/checkpoint.h"

#include "model/fp8_training.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>

#include "core/error.h"
#include "core/strings.h"
#include "core/durable_file.h"

namespace primus::checkpoint {

namespace fs = std::filesystem;

namespace {

constexpr const char* kMetaFile = "meta.json";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kRngFile = "rng.json";
constexpr const char* kConfigFile = "config.json";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string iso_time_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

uint64_t file_size(const std::string& path) {
  std::error_code ec;
  const auto n = fs::file_size(path, ec);
  PRIMUS_CHECK(!ec, "cannot stat '{}': {}", path, ec.message());
  return n;
}

// iter_0000100 -> 100; iter_0000100.tmp-123 -> (100, "tmp", 123).
struct DirName {
  int64_t iteration = -1;
  std::string kind;  // "" (complete), "tmp", "trash"
  long pid = 0;
};
std::optional<DirName> parse_dir_name(const std::string& name) {
  static const std::regex re(R"(iter_(\d{7,})(?:\.(tmp|trash)-(\d+))?)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return std::nullopt;
  DirName d;
  d.iteration = std::stoll(m[1]);
  if (m[2].matched) {
    d.kind = m[2];
    d.pid = std::stol(m[3]);
  }
  return d;
}

bool process_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = durable::read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: not valid JSON ({}); the checkpoint is corrupt: load an older iteration or re-save", path, e.what());
  }
}

// A directory is a complete checkpoint when its meta.json parses and names its iteration.
bool is_complete(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(dir / kMetaFile, ec)) return false;
  try {
    const auto meta = read_json_file((dir / kMetaFile).string());
    return meta.contains("iteration") && meta.contains("format_version");
  } catch (const Error&) {
    return false;
  }
}

// Copies `tensors` to host memory. The copies go into `staging` when it has the same names,
// shapes and dtypes (the previous save's buffers: touching fresh pages costs more than the
// copy itself), otherwise into new buffers that become the staging for next time. The
// caller guarantees no write of the previous snapshot is still running.
NamedTensorList snapshot_to_host(const NamedTensorList& tensors, NamedTensorList& staging) {
  bool reusable = staging.size() == tensors.size();
  for (size_t i = 0; reusable && i < tensors.size(); ++i)
    reusable = staging[i].first == tensors[i].first && staging[i].second.shape() == tensors[i].second.shape() &&
               staging[i].second.dtype() == tensors[i].second.dtype();
  if (!reusable) {
    staging.clear();
    for (const auto& [name, t] : tensors) {
      PRIMUS_CHECK(t.defined(), "checkpoint: tensor '{}' is undefined", name);
      staging.emplace_back(name, Tensor::empty(t.shape(), t.dtype(), Device::CPU));
    }
  }
  // A copy even for CPU tensors: training keeps mutating the originals.
  for (size_t i = 0; i < tensors.size(); ++i) staging[i].second.copy_from(tensors[i].second);
  return staging;
}

// Removes what killed saves left behind. Complete checkpoints are never touched; a trash
// directory whose iteration directory is missing (a crash between the two renames of an
// overwrite) is put back instead of deleted.
void clean_stale(const std::string& save_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(save_dir, ec)) {
    const auto d = parse_dir_name(entry.path().filename().string());
    if (!d || d->kind.empty() || !entry.is_directory()) continue;
    if (d->pid == ::getpid() || !process_alive(d->pid)) {
      const fs::path final_dir = fs::path(save_dir) / checkpoint_dir_name(d->iteration);
      if (d->kind == "trash" && !fs::exists(final_dir) && is_complete(entry.path())) {
        durable::rename_path(entry.path().string(), final_dir.string());
        continue;
      }
      fs::remove_all(entry.path(), ec);
    }
  }
  // Stale tracker temp files.
  for (const auto& entry : fs::directory_iterator(save_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(std::string(kTrackerFileName) + ".tmp-", 0) == 0) fs::remove(entry.path(), ec);
  }
}

void apply_retention(const std::string& save_dir, int keep_last) {
  if (keep_last <= 0) return;
  const std::vector<int64_t> complete = complete_checkpoints(save_dir);
  const std::optional<int64_t> tracked = latest_iteration(save_dir);
  const int64_t excess = static_cast<int64_t>(complete.size()) - keep_last;
  for (int64_t i = 0; i < excess; ++i) {
    if (tracked && complete[i] == *tracked) continue;
    // Rename first so a crash mid-delete never leaves a half-deleted directory under a
    // complete checkpoint's name.
    const fs::path dir = fs::path(save_dir) / checkpoint_dir_name(complete[i]);
    const fs::path trash = fs::path(save_dir) / fmt::format("{}.trash-{}", checkpoint_dir_name(complete[i]), ::getpid());
    durable::rename_path(dir.string(), trash.string());
    std::error_code ec;
    fs::remove_all(trash, ec);
  }
}

SaveResult write_checkpoint(const std::string& save_dir, const CheckpointContent& content, int keep_last) {
  const auto t0 = std::chrono::steady_clock::now();
  std::error_code ec;
  fs::create_directories(save_dir, ec);
  PRIMUS_CHECK(!ec, "cannot create the checkpoint directory '{}' (save): {}", save_dir, ec.message());
  clean_stale(save_dir);

  const std::string name = checkpoint_dir_name(content.iteration);
  const std::string final_dir = (fs::path(save_dir) / name).string();
  const std::string tmp_dir = (fs::path(save_dir) / fmt::format("{}.tmp-{}", name, ::getpid())).string();
  fs::remove_all(tmp_dir, ec);
  PRIMUS_CHECK(fs::create_directory(tmp_dir, ec) && !ec, "cannot create '{}': {}", tmp_dir, ec.message());

  SaveResult result;
  result.iteration = content.iteration;
  result.path = final_dir;
  try {
    result.bytes = write_checkpoint_files(tmp_dir, content);
    durable::fsync_path(tmp_dir);
  } catch (const std::exception& e) {
    // A full disk (or any write error): leave no half-written directory behind.
    fs::remove_all(tmp_dir, ec);
    fail("saving the checkpoint of iteration {} into '{}' failed: {} (the partial files were removed; the last "
         "complete checkpoint and the tracker are untouched)",
         content.iteration, save_dir, e.what());
  }

  // Publish the directory.
  if (fs::exists(final_dir)) {
    // Same iteration saved again: swap atomically, then drop the old one.
    const std::string trash = (fs::path(save_dir) / fmt::format("{}.trash-{}", name, ::getpid())).string();
    if (durable::exchange_paths(tmp_dir, final_dir)) {
      durable::fsync_path(save_dir);
      durable::rename_path(tmp_dir, trash);  // tmp_dir now holds the old checkpoint
    } else {
      durable::rename_path(final_dir, trash);  // a crash here is repaired by clean_stale / the reader
      durable::rename_path(tmp_dir, final_dir);
    }
    durable::fsync_path(save_dir);
    fs::remove_all(trash, ec);
  } else {
    durable::rename_path(tmp_dir, final_dir);
  }
  durable::fsync_path(save_dir);

  // The tracker moves last: until here it names the previous complete checkpoint.
  durable::write_file_atomic((fs::path(save_dir) / kTrackerFileName).string(), std::to_string(content.iteration));
  apply_retention(save_dir, keep_last);
  result.write_seconds = seconds_since(t0);
  return result;
}

}  // namespace

std::string checkpoint_dir_name(int64_t iteration) {
  PRIMUS_CHECK(iteration >= 0, "checkpoint iteration must be >= 0, got {}", iteration);
  return fmt::format("iter_{:07d}", iteration);
}

std::optional<int64_t> latest_iteration(const std::string& dir) {
  const std::string path = (fs::path(dir) / kTrackerFileName).string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  const std::string text = std::string(trim(durable::read_file(path)));
  if (text == "release")
    fail("{}: says 'release' (a Megatron release checkpoint); Primus reads iter_XXXXXXX directories of "
         "safetensors: convert it with `primus convert` first", path);
  int64_t it = -1;
  try {
    size_t used = 0;
    it = std::stoll(text, &used);
    PRIMUS_CHECK(used == text.size(), "trailing characters");
  } catch (const std::exception&) {
    fail("{}: expected an iteration number, found '{}'; fix or delete the file (the iter_XXXXXXX directories "
         "are intact)", path, printable(text, 40));
  }
  PRIMUS_CHECK(it >= 0, "{}: negative iteration {}", path, it);
  return it;
}

std::vector<int64_t> complete_checkpoints(const std::string& dir) {
  std::vector<int64_t> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const auto d = parse_dir_name(entry.path().filename().string());
    if (d && d->kind.empty() && entry.is_directory() && is_complete(entry.path())) out.push_back(d->iteration);
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t write_checkpoint_files(const std::string& iter_dir, const CheckpointContent& c) {
  PRIMUS_CHECK(!c.model.empty(), "checkpoint at iteration {}: no model tensors to save", c.iteration);
  std::error_code ec;
  fs::create_directories(iter_dir, ec);
  PRIMUS_CHECK(!ec, "cannot create the checkpoint directory '{}': {}", iter_dir, ec.message());
  const std::map<std::string, std::string> st_meta = {{"format", "primus"},
                                                      {"iteration", std::to_string(c.iteration)}};
  nlohmann::json files = nlohmann::json::object();
  auto record = [&](const char* file, nlohmann::json info) {
    const std::string p = (fs::path(iter_dir) / file).string();
    info["bytes"] = file_size(p);
    files[file] = info;
    return info["bytes"].get<uint64_t>();
  };
  uint64_t total = 0;
  // The model and optimizer files are independent: the optimizer's (2-3x the model's bytes) is
  // written on a second thread meanwhile; an error on either is rethrown here.
  std::future<void> optimizer_written;
  if (!c.optimizer.empty())
    optimizer_written = std::async(std::launch::async, [&] {
      save_safetensors((fs::path(iter_dir) / kOptimizerFile).string(), c.optimizer, st_meta);
    });
  try {
    save_safetensors((fs::path(iter_dir) / kModelFile).string(), c.model, st_meta);
  } catch (...) {
    if (optimizer_written.valid()) optimizer_written.wait();  // it reads c and st_meta: let it finish
    throw;
  }
  total += record(kModelFile, {{"tensors", c.model.size()}});
  if (optimizer_written.valid()) {
    optimizer_written.get();
    total += record(kOptimizerFile, {{"tensors", c.optimizer.size()}});
  }
  if (!c.rng.is_null()) {
    durable::write_file((fs::path(iter_dir) / kRngFile).string(), c.rng.dump(1));
    total += record(kRngFile, nlohmann::json::object());
  }
  if (!c.config.is_null()) {
    durable::write_file((fs::path(iter_dir) / kConfigFile).string(), c.config.dump(2));
    total += record(kConfigFile, nlohmann::json::object());
  }
  nlohmann::json meta = {{"format", "primus-checkpoint"},
                         {"format_version", kCheckpointFormatVersion},
                         {"iteration", c.iteration},
                         {"consumed_train_samples", c.consumed_train_samples},
                         {"consumed_valid_samples", c.consumed_valid_samples},
                         {"files", files},
                         {"saved_at", iso_time_now()},
                         {"extra", c.extra.is_null() ? nlohmann::json::object() : c.extra}};
  const std::string text = meta.dump(2);
  durable::write_file((fs::path(iter_dir) / kMetaFile).string(), text);  // last: its presence means complete
  return total + text.size();
}

// ---- CheckpointWriter ------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::string save_dir, CheckpointWriterOptions options)
    : save_dir_(std::move(save_dir)), options_(std::move(options)) {
  PRIMUS_CHECK(!save_dir_.empty(), "checkpoint writer: `save` is empty; set save: <dir> to save checkpoints");
  // Found now rather than at the first save, minutes or hours in: the directory must be
  // creatable and writable.
  std::error_code ec;
  fs::create_directories(save_dir_, ec);
  PRIMUS_CHECK(!ec, "save: cannot create the checkpoint directory '{}': {}; point save at a writable directory",
               save_dir_, ec.message());
  const std::string probe = (fs::path(save_dir_) / fmt::format(".primus-write-test-{}", ::getpid())).string();
  try {
    durable::write_file(probe, "primus");
  } catch (const std::exception& e) {
    fail("save: the checkpoint directory '{}' is not writable ({}); point save at a writable directory", save_dir_,
         e.what());
  }
  fs::remove(probe, ec);
}

CheckpointWriter::~CheckpointWriter() {
  try {
    wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "primus: the last checkpoint save failed: %s\n", e.what());
  }
}

void CheckpointWriter::wait() {
  if (worker_.joinable()) worker_.join();
  if (worker_error_) {
    std::exception_ptr e = worker_error_;
    worker_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

std::optional<SaveResult> CheckpointWriter::last_result() const {
  std::lock_guard<std::mutex> lock(result_mutex_);
  return last_result_;
}

void CheckpointWriter::save(const CheckpointContent& content) {
  wait();  // at most one save in flight
  const auto t0 = std::chrono::steady_clock::now();
  if (!options_.async) {
    SaveResult r = write_checkpoint(save_dir_, content, options_.keep_last);
    r.snapshot_seconds = 0;
    {
      std::lock_guard<std::mutex> lock(result_mutex_);
      last_result_ = r;
    }
    if (options_.on_saved) options_.on_saved(r);
    return;
  }
  // Snapshot on the caller's thread: after this returns, training may change the tensors.
  auto snap = std::make_shared<CheckpointContent>();
  snap->iteration = content.iteration;
  snap->consumed_train_samples = content.consumed_train_samples;
  snap->consumed_valid_samples = content.consumed_valid_samples;
  snap->model = snapshot_to_host(content.model, staging_model_);
  snap->optimizer = snapshot_to_host(content.optimizer, staging_optimizer_);
  snap->rng = content.rng;
  snap->config = content.config;
  snap->extra = content.extra;
  const double snapshot_s = seconds_since(t0);
  worker_ = std::thread([this, snap, snapshot_s] {
    try {
      SaveResult r = write_checkpoint(save_dir_, *snap, options_.keep_last);
      r.snapshot_seconds = snapshot_s;
      {
        std::lock_guard<std::mutex> lock(result_mutex_);
        last_result_ = r;
      }
      if (options_.on_saved) options_.on_saved(r);
    } catch (...) {
      worker_error_ = std::current_exception();
    }
  });
}

// ---- reading ---------------------------------------------------------------

CheckpointReader::CheckpointReader(const std::string& dir, std::optional<int64_t> iteration) {
  std::error_code ec;
  PRIMUS_CHECK(fs::is_directory(dir, ec), "checkpoint directory '{}' does not exist (load)", dir);
  if (fs::is_regular_file(fs::path(dir) / kMetaFile) && !iteration) {
    path_ = dir;  // an iter_XXXXXXX directory itself
  } else {
    if (!iteration) {
      iteration = latest_iteration(dir);
      PRIMUS_CHECK(iteration.has_value(),
                   "'{}' has no {} and no meta.json: not a Primus checkpoint directory (complete checkpoints "
                   "here: {})", dir, kTrackerFileName, fmt::join(complete_checkpoints(dir), ", "));
    }
    path_ = (fs::path(dir) / checkpoint_dir_name(*iteration)).string();
    if (!fs::is_directory(path_)) {
      // A crash in the middle of overwriting this iteration may have left it under a trash name.
      for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const auto d = parse_dir_name(entry.path().filename().string());
        if (d && d->kind == "trash" && d->iteration == *iteration && is_complete(entry.path())) {
          path_ = entry.path().string();
          break;
        }
      }
    }
    PRIMUS_CHECK(fs::is_directory(path_), "checkpoint for iteration {} not found: '{}' does not exist "
                 "(complete checkpoints in '{}': {})", *iteration, path_, dir,
                 fmt::join(complete_checkpoints(dir), ", "));
  }
  const std::string meta_path = (fs::path(path_) / kMetaFile).string();
  PRIMUS_CHECK(fs::is_regular_file(meta_path), "{}: missing; '{}' is not a complete checkpoint (a save was "
               "interrupted?): load another iteration", meta_path, path_);
  meta_ = read_json_file(meta_path);
  PRIMUS_CHECK(meta_.is_object() && meta_.contains("format_version") && meta_.contains("iteration"),
               "{}: lacks format_version/iteration; not a Primus checkpoint", meta_path);
  format_version_ = meta_["format_version"].get<int>();
  PRIMUS_CHECK(format_version_ >= 1 && format_version_ <= kCheckpointFormatVersion,
               "{}: format_version {} is newer than this primus understands ({}); use a newer primus",
               meta_path, format_version_, kCheckpointFormatVersion);
  iteration_ = meta_["iteration"].get<int64_t>();
  if (iteration) {
    PRIMUS_CHECK(iteration_ == *iteration, "{}: says iteration {}, but the directory is for iteration {}",
                 meta_path, iteration_, *iteration);
  }
  // Every listed file must be there with the recorded size (a truncated copy is caught here).
  const nlohmann::json files = meta_.value("files", nlohmann::json::object());
  for (const auto& [file, info] : files.items()) {
    const std::string p = (fs::path(path_) / file).string();
    PRIMUS_CHECK(fs::is_regular_file(p), "{}: missing (listed in meta.json); the checkpoint is incomplete", p);
    const uint64_t want = info.value("bytes", uint64_t{0}), got = file_size(p);
    PRIMUS_CHECK(got == want, "{}: size mismatch: {} bytes on disk, {} recorded in meta.json (truncated or "
                 "overwritten copy)", p, got, want);
  }
  parts_.model = files.contains(kModelFile);
  parts_.optimizer = files.contains(kOptimizerFile);
  parts_.rng = files.contains(kRngFile);
  parts_.config = files.contains(kConfigFile);
  PRIMUS_CHECK(parts_.model, "{}: lists no {}; the checkpoint has no model weights", meta_path, kModelFile);
  model_ = std::make_unique<SafetensorsFile>((fs::path(path_) / kModelFile).string());
  if (parts_.optimizer) optimizer_ = std::make_unique<SafetensorsFile>((fs::path(path_) / kOptimizerFile).string());
}

CheckpointReader::~CheckpointReader() = default;

nlohmann::json CheckpointReader::rng() const {
  PRIMUS_CHECK(parts_.rng, "'{}' has no RNG state (saved with no_save_rng); set no_load_rng: true", path_);
  return read_json_file((fs::path(path_) / kRngFile).string());
}

nlohmann::json CheckpointReader::config() const {
  PRIMUS_CHECK(parts_.config, "'{}' has no config.json", path_);
  return read_json_file((fs::path(path_) / kConfigFile).string());
}

namespace {
NamedTensorList copy_all(const SafetensorsFile& f) {
  NamedTensorList out;
  for (const auto& e : f.entries()) out.emplace_back(e.name, f.load(e.name, Device::CPU));
  return out;
}
}  // namespace

NamedTensorList CheckpointReader::model_tensors() const { return copy_all(*model_); }

NamedTensorList CheckpointReader::optimizer_tensors() const { return copy_all(optimizer_file()); }

const SafetensorsFile& CheckpointReader::model_file() const { return *model_; }

const SafetensorsFile& CheckpointReader::optimizer_file() const {
  PRIMUS_CHECK(optimizer_ != nullptr, "'{}' has no optimizer state (saved with no_save_optim); set "
               "no_load_optim: true (or finetune: true) to load the weights only", path_);
  return *optimizer_;
}

void load_tensors_into(const SafetensorsFile& file, const NamedTensorList& targets, bool strict) {
  std::vector<std::string> target_names;
  for (const auto& [name, t] : targets) target_names.push_back(name);
  if (strict) {
    for (const auto& e : file.entries()) {
      // FP8 scaling states (model/fp8_training.h) of a run with fp8: a run without it has no use for them.
      if (e.name.ends_with(kFp8StateSuffix)) continue;
      const bool known = std::find(target_names.begin(), target_names.end(), e.name) != target_names.end();
      PRIMUS_CHECK(known, "{}: unknown tensor '{}' {} (not a parameter of this model{}); was the checkpoint "
                   "saved from a different model config?", file.path(), e.name, shape_str(e.shape),
                   did_you_mean(e.name, target_names));
    }
  }
  const std::vector<std::string> file_names = file.names();
  for (const auto& [name, target] : targets) {
    PRIMUS_CHECK(file.contains(name), "{}: missing tensor '{}' {} that the model expects{}", file.path(), name,
                 shape_str(target.shape()), did_you_mean(name, file_names));
    const auto& e = file.entry(name);
    PRIMUS_CHECK(e.shape == target.shape(), "{}: tensor '{}' has shape {} in the checkpoint but the model "
                 "expects {}", file.path(), name, shape_str(e.shape), shape_str(target.shape()));
    Tensor dst = target;  // shares storage: writes land in the caller's tensor
    const Tensor src = file.view(name);
    if (e.dtype == target.dtype()) {
      dst.copy_from(src);
    } else {
      auto is_float = [](DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; };
      PRIMUS_CHECK(is_float(e.dtype) && is_float(target.dtype()), "{}: tensor '{}' is {} in the checkpoint "
                   "but {} in the model; only F32/BF16/F16 convert", file.path(), name, dtype_name(e.dtype),
                   dtype_name(target.dtype()));
      dst.copy_from(Tensor::from_floats(src.to_float_vector(), target.shape(), target.dtype(), target.device()));
    }
  }
}

LoadedCheckpoint load_checkpoint(const std::string& dir, std::optional<int64_t> iteration, bool load_optim,
                                 bool load_rng) {
  const CheckpointReader reader(dir, iteration);
  LoadedCheckpoint c;
  c.path = reader.path();
  c.iteration = reader.iteration();
  c.format_version = reader.format_version();
  c.consumed_train_samples = reader.consumed_train_samples();
  c.consumed_valid_samples = reader.consumed_valid_samples();
  c.parts = reader.parts();
  c.model = reader.model_tensors();
  if (load_optim && c.parts.optimizer) c.optimizer = reader.optimizer_tensors();
  if (load_rng && c.parts.rng) c.rng = reader.rng();
  if (c.parts.config) c.config = reader.config();
  c.extra = reader.extra();
  return c;
}

}  // namespace primus::checkpoint

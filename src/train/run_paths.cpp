#include "train/run_paths.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "config/describe.h"
#include "core/error.h"
#include "core/strings.h"
#include "data/gpt_dataset.h"
#include "data/sft/sft_dataset.h"
#include "data/tokenizer/tokenizer.h"
#include "checkpoint/checkpoint.h"
#include "train/logging.h"

namespace primus::train {

namespace fs = std::filesystem;

namespace {

std::string shown(const fs::path& p) { return config::display_path(p.string()); }

// Why `path` cannot be looked at: "" when it can; else "does not exist" or the system's reason.
// `type` gets what it is.
std::string stat_path(const std::string& path, fs::file_type& type) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  type = st.type();
  if (type == fs::file_type::not_found) return fmt::format("{} does not exist", path);
  if (ec) return fmt::format("{} cannot be reached ({})", path, ec.message());
  return "";
}

// Why `path` cannot be read as a file ("" when it can): it is missing, not a regular file, or
// opening it for reading fails (permissions).
std::string unreadable_file(const std::string& path) {
  fs::file_type type;
  if (std::string why = stat_path(path, type); !why.empty()) return why;
  if (type == fs::file_type::directory) return fmt::format("{} is a directory, not a file", path);
  if (type != fs::file_type::regular) return fmt::format("{} is not a regular file", path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fmt::format("{} cannot be read ({})", path, std::strerror(errno));
  ::close(fd);
  return "";
}

// The same for a directory (listing it).
std::string unreadable_dir(const std::string& path) {
  fs::file_type type;
  if (std::string why = stat_path(path, type); !why.empty()) return why;
  if (type != fs::file_type::directory) return fmt::format("{} is not a directory", path);
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return fmt::format("{} cannot be read ({})", path, std::strerror(errno));
  ::closedir(d);
  return "";
}

// Creates and removes a probe file in the directory `dir`: "" when that works, else the reason.
std::string probe_write(const fs::path& dir) {
  static std::atomic<int> counter{0};
  const fs::path probe = dir / fmt::format(".primus-dry-run-probe.{}.{}", ::getpid(), counter++);
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return fmt::format("{} is not writable ({})", shown(dir), std::strerror(errno));
  ::close(fd);
  if (::unlink(probe.c_str()) != 0)
    return fmt::format("the probe file {} could not be removed ({}); delete it", shown(probe), std::strerror(errno));
  return "";
}

// Why the directory `path` cannot be written or created ("" when it can); `how` says which.
std::string unwritable_dir(const std::string& path, std::string& how) {
  fs::path p = fs::absolute(fs::path(path)).lexically_normal();
  while (p.has_relative_path() && p.filename().empty()) p = p.parent_path();  // "a/b/" -> "a/b"
  fs::path existing = p;
  for (;;) {
    std::error_code ec;
    const fs::file_status st = fs::status(existing, ec);
    if (st.type() == fs::file_type::not_found && existing.has_relative_path()) {
      existing = existing.parent_path();
      continue;
    }
    if (ec) return fmt::format("{} cannot be reached ({})", shown(existing), ec.message());
    if (st.type() != fs::file_type::directory) {
      return existing == p ? fmt::format("{} is not a directory", path)
                           : fmt::format("it cannot be created: {} is not a directory", shown(existing));
    }
    break;
  }
  if (std::string why = probe_write(existing); !why.empty())
    return existing == p ? why : fmt::format("it cannot be created: {}", why);
  how = existing == p ? "writable" : fmt::format("does not exist yet; {} is writable", shown(existing));
  return "";
}

class Checker {
 public:
  explicit Checker(const config::Config& cfg) : cfg_(cfg) {}

  void problem(std::string key, std::string message) {
    r_.findings.push_back({true, std::move(key), std::move(message)});
  }
  void warning(std::string key, std::string message) {
    r_.findings.push_back({false, std::move(key), std::move(message)});
  }
  void ok(std::string line) { r_.checked.push_back(std::move(line)); }
  RunPathsReport take() { return std::move(r_); }

  std::string opt(const char* key) const { return cfg_.opt_s(key).value_or(""); }
  bool posttrain() const { return cfg_.module_kind == "post_trainer"; }
  static bool absent(const std::string& path) {
    std::error_code ec;
    return fs::status(path, ec).type() == fs::file_type::not_found;
  }
  static bool is_dir(const std::string& path) {
    std::error_code ec;
    return fs::is_directory(path, ec);
  }

  // ---- pretraining: Megatron .bin/.idx prefixes --------------------------------------------------
  void gpt_data() {
    const bool per_split = cfg_.has("train_data_path") || cfg_.has("valid_data_path") || cfg_.has("test_data_path");
    if (!per_split) {
      prefixes("data_path");
      return;
    }
    if (!cfg_.has("train_data_path"))
      problem("train_data_path", "valid_data_path / test_data_path are set, so data_path is not read, but "
                                 "train_data_path is not: nothing would be trained on; set train_data_path (or "
                                 "remove the per-split lists and split data_path)");
    else
      prefixes("train_data_path");
    const bool evaluates = cfg_.i("eval_iters") > 0;  // else no valid / test sample is drawn
    for (const char* k : {"valid_data_path", "test_data_path"})
      if (cfg_.has(k) && evaluates) prefixes(k);
  }

  void prefixes(const char* key) {
    std::vector<std::string> list;
    std::vector<double> weights;
    try {
      data::parse_blend(cfg_.list(key), list, weights);
    } catch (const Error& e) {
      problem(key, fmt::format("{} ({}): {}", key, cfg_.source(key).str(), e.what()));
      return;
    }
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string& prefix = list[i];
      const std::string name = fmt::format("{}[{}]", key, i);
      const std::string bin = unreadable_file(prefix + ".bin"), idx = unreadable_file(prefix + ".idx");
      if (bin.empty() && idx.empty()) {
        ok(fmt::format("{} {} (.bin and .idx readable)", name, prefix));
        continue;
      }
      const bool no_bin = absent(prefix + ".bin"), no_idx = absent(prefix + ".idx");
      const std::string why = no_bin && no_idx        ? fmt::format("neither {0}.bin nor {0}.idx exists", prefix)
                              : !bin.empty() && !idx.empty() ? bin + "; " + idx
                              : bin.empty()                  ? idx
                                                             : bin;
      std::string fix = "check its permissions";
      const std::string_view ext = prefix.size() > 4 ? std::string_view(prefix).substr(prefix.size() - 4) : "";
      if (ext == ".bin" || ext == ".idx")
        fix = fmt::format("a prefix names the pair without the extension: {}", prefix.substr(0, prefix.size() - 4));
      else if (no_bin || no_idx)
        fix = fmt::format("write the pair with `primus preprocess --input DOCS.jsonl --output-prefix {} ...` "
                          "(docs/DATA.md) or fix the prefix",
                          prefix);
      problem(name, fmt::format("{} '{}' ({}): {}; {}", name, prefix, cfg_.source(key).str(), why, fix));
    }
  }

  // ---- post-training: chat JSONL files -----------------------------------------------------------
  void chat_data() {
    if (cfg_.b("mock_data"))
      problem("mock_data", fmt::format("mock_data = true ({}): post-training reads chat JSONL (data_path); remove "
                                       "mock_data",
                                       cfg_.source("mock_data").str()));
    std::vector<const char*> keys;
    if (cfg_.b("grpo")) {
      keys.push_back(cfg_.has("train_data_path") ? "train_data_path" : "data_path");
    } else if (cfg_.has("train_data_path") || cfg_.has("valid_data_path")) {
      if (!cfg_.has("train_data_path"))
        problem("train_data_path", "valid_data_path is set, so data_path is not read, but train_data_path is not: "
                                   "set train_data_path (or data_path with split)");
      keys = {"train_data_path", "valid_data_path"};
    } else {
      keys.push_back("data_path");
    }
    for (const char* key : keys) {
      std::vector<std::string> weights;
      const std::vector<std::string> files = data::sft::split_path_list(cfg_.list(key), weights);
      for (const std::string& w : weights)
        problem(key, fmt::format("{} ({}): '{}' looks like a blend weight; chat data is a list of JSONL files "
                                 "without weights (repeat a file to weight it up)",
                                 key, cfg_.source(key).str(), w));
      for (size_t i = 0; i < files.size(); ++i) {
        const std::string name = fmt::format("{}[{}]", key, i);
        if (const std::string why = unreadable_file(files[i]); !why.empty())
          problem(name, fmt::format("{} '{}' ({}): {}; fix the path (JSONL, plain, .gz or .zst)", name, files[i],
                                    cfg_.source(key).str(), why));
        else
          ok(fmt::format("{} {} (readable)", name, files[i]));
      }
    }
  }

  // The chat template (data/sft load_chat_template): a file, none, or tokenizer_config.json beside the
  // tokenizer model.
  void chat_template() {
    const std::string tmpl = opt("chat_template");
    const std::string model = opt("tokenizer_model");
    if (tmpl == "none") {
      ok("chat_template none (prompt + completion as plain text)");
    } else if (tmpl.empty()) {
      if (model.empty()) {
        problem("chat_template", "chat_template is null (the tokenizer's own), but there is no tokenizer_model whose "
                                 "tokenizer_config.json could hold one: set chat_template to a .jinja file, a "
                                 "tokenizer_config.json, or none");
        return;
      }
      const fs::path dir = is_dir(model) ? fs::path(model) : fs::path(model).parent_path();
      const std::string path = (dir / "tokenizer_config.json").string();
      if (const std::string why = unreadable_file(path); !why.empty())
        problem("chat_template", fmt::format("chat_template is null, so the template comes from the "
                                             "tokenizer_config.json beside tokenizer_model {}, but {}; set "
                                             "chat_template to a .jinja file, a tokenizer_config.json, or none",
                                             model, why));
      else
        ok(fmt::format("chat_template {} (readable; beside tokenizer_model)", path));
    } else if (const std::string why = unreadable_file(tmpl); !why.empty()) {
      problem("chat_template", fmt::format("chat_template '{}' ({}): {}; set a .jinja file, a tokenizer_config.json, "
                                           "or none",
                                           tmpl, cfg_.source("chat_template").str(), why));
    } else {
      ok(fmt::format("chat_template {} (readable)", tmpl));
    }
  }

  // ---- the tokenizer (data::make_tokenizer's files) ------------------------------------------------
  void tokenizer() {
    if (!cfg_.has("tokenizer_type")) {
      if (posttrain())
        problem("tokenizer_type", "post-training reads chat data and needs tokenizer_type and tokenizer_model (a "
                                  "HuggingFace tokenizer.json with its tokenizer_config.json)");
      return;  // pretraining: validate() asks for it
    }
    const std::string type = cfg_.s("tokenizer_type");
    const std::string at = fmt::format("tokenizer_type = {} ({})", type, cfg_.source("tokenizer_type").str());
    if (type == "NullTokenizer") {
      ok("tokenizer_type NullTokenizer (no file)");
      return;
    }
    const auto& built = data::tokenizer_type_names();
    if (std::find(built.begin(), built.end(), type) == built.end()) {
      std::string names;
      for (const std::string& n : built) names += (names.empty() ? "" : ", ") + n;
      problem("tokenizer_type", fmt::format("{}: Primus has no tokenizer of that type (it reads {}); use "
                                            "HuggingFaceTokenizer with the model's tokenizer.json",
                                            at, names));
      return;
    }
    const std::string model = opt("tokenizer_model");
    if (model.empty()) {
      problem("tokenizer_model", fmt::format("{} needs tokenizer_model (the tokenizer's file)", at));
      return;
    }
    const std::string where = fmt::format("tokenizer_model '{}' ({})", model, cfg_.source("tokenizer_model").str());
    std::vector<std::string> files;
    if (type == "GPT2BPETokenizer") {
      if (!is_dir(model)) {
        problem("tokenizer_model", fmt::format("{}: GPT2BPETokenizer reads vocab.json and merges.txt from a "
                                               "directory; point tokenizer_model at it",
                                               where));
        return;
      }
      files = {(fs::path(model) / "vocab.json").string(), (fs::path(model) / "merges.txt").string()};
    } else if (type == "HuggingFaceTokenizer" && is_dir(model)) {
      files = {(fs::path(model) / "tokenizer.json").string()};
    } else {
      files = {model};
    }
    for (const std::string& f : files) {
      if (const std::string why = unreadable_file(f); !why.empty())
        problem("tokenizer_model", fmt::format("{}: {}; point tokenizer_model at the tokenizer's file (or, for "
                                               "HuggingFaceTokenizer, its directory)",
                                               where, why));
      else
        ok(fmt::format("tokenizer_model {} (readable)", f));
    }
  }

  // ---- checkpoints read (Trainer::restore) -------------------------------------------------------
  static bool holds_checkpoint(const std::string& dir) {
    if (dir.empty()) return false;
    try {
      return checkpoint::latest_iteration(dir).has_value() || !absent((fs::path(dir) / "meta.json").string());
    } catch (const Error&) {
      return true;  // a tracker that does not parse: the reader names it
    }
  }

  // "does not exist" / "cannot be read" / "holds no checkpoint (...)".
  static std::string no_checkpoint(const std::string& dir) {
    if (std::string why = unreadable_dir(dir); !why.empty()) return why;
    return fmt::format("{} holds no checkpoint (no {} or meta.json)", dir, checkpoint::kTrackerFileName);
  }

  void open_checkpoint(const char* key, const std::string& dir, const std::string& role) {
    try {
      checkpoint::CheckpointReader reader(dir);
      ok(fmt::format("{} {}: iteration {} ({})", key, reader.path(), reader.iteration(), role));
    } catch (const Error& e) {
      problem(key, fmt::format("{} '{}' ({}): {}", key, dir, cfg_.source(key).str(), e.what()));
    }
  }

  void checkpoints() {
    const std::string save = opt("save"), load = opt("load"), pretrained = opt("pretrained_checkpoint");
    const bool auto_continue = cfg_.b("auto_continue_train");
    std::string dir = load;
    const char* key = "load";
    if (auto_continue && holds_checkpoint(save)) {
      dir = save;
      key = "save";
    }
    if (!holds_checkpoint(dir) && !pretrained.empty()) {
      dir = pretrained;
      key = "pretrained_checkpoint";
    }
    const bool grpo_reference = cfg_.b("grpo") && cfg_.f("grpo_beta") != 0.0;
    if (!dir.empty()) {
      if (holds_checkpoint(dir)) {
        open_checkpoint(key, dir, std::string(key) == "save" ? "resumed: auto_continue_train"
                                  : std::string(key) == "load" ? "resumed" : "the starting weights");
      } else if (std::string(key) == "pretrained_checkpoint") {
        problem(key, fmt::format("pretrained_checkpoint '{}' ({}): {}; point it at a Primus checkpoint (a converted "
                                 "HF model: primus convert hf-to-primus)",
                                 dir, cfg_.source(key).str(), no_checkpoint(dir)));
      } else if (auto_continue) {
        ok(fmt::format("load {}: no checkpoint yet; auto_continue_train starts from iteration 0", dir));
      } else {
        problem(key, fmt::format("load '{}' ({}): {}; point load at a save directory, or set auto_continue_train: "
                                 "true to start fresh when none exists",
                                 dir, cfg_.source("load").str(), no_checkpoint(dir)));
      }
    }
    if (!pretrained.empty() && std::string(key) != "pretrained_checkpoint") {
      if (grpo_reference)
        open_checkpoint("pretrained_checkpoint", pretrained, "GRPO's reference model: grpo_beta > 0");
      else if (!holds_checkpoint(pretrained))
        warning("pretrained_checkpoint",
                fmt::format("pretrained_checkpoint '{}' ({}): {}; this run does not read it (it resumes from {} {}), "
                            "but a fresh start would fail",
                            pretrained, cfg_.source("pretrained_checkpoint").str(), no_checkpoint(pretrained), key,
                            dir));
    }
  }

  // ---- directories written -------------------------------------------------------------------------
  void writable(const std::string& key, const std::string& path, const std::string& source, bool fatal,
                const std::string& fix) {
    std::string how;
    if (const std::string why = unwritable_dir(path, how); !why.empty()) {
      const std::string msg = fmt::format("{} '{}' ({}): {}; {}", key, path, source, why, fix);
      fatal ? problem(key, msg) : warning(key, msg);
    } else {
      ok(fmt::format("{} {} ({})", key, path, how));
    }
  }

  void written_dirs() {
    if (const std::string save = opt("save"); !save.empty())
      writable("save", save, cfg_.source("save").str(), true, "set save to a writable directory");
    writable("log directory", experiment_log_dir(cfg_.workspace, cfg_.work_group, cfg_.user_name, cfg_.exp_name),
             "workspace / work_group / user_name / exp_name of the experiment", true,
             "set the experiment's workspace to a writable directory");
    if (!cfg_.b("disable_tensorboard")) {
      const bool set = cfg_.has("tensorboard_dir");
      const std::string dir =
          set ? cfg_.s("tensorboard_dir")
              : (fs::path(cfg_.workspace) / cfg_.work_group / cfg_.user_name / cfg_.exp_name / "tensorboard").string();
      writable("tensorboard_dir", dir, set ? cfg_.source("tensorboard_dir").str() : "default: under the workspace",
               true, "set tensorboard_dir to a writable directory, or disable_tensorboard: true");
    }
    // Pretraining caches its sample indices there (failing to create it fails the run); SFT / DPO
    // tokenize again when they cannot write their cache; GRPO has none.
    if (const std::string cache = opt("data_cache_path"); !cache.empty() && !(posttrain() && cfg_.b("grpo")))
      writable("data_cache_path", cache, cfg_.source("data_cache_path").str(), !posttrain(),
               posttrain() ? "without it the chat data is tokenized again at every start"
                           : "set data_cache_path to a writable directory, or null (no cache)");
  }

 private:
  const config::Config& cfg_;
  RunPathsReport r_;
};

}  // namespace

RunPathsReport check_run_paths(const config::Config& cfg) {
  Checker c(cfg);
  if (c.posttrain()) {
    c.chat_data();
    c.tokenizer();
    c.chat_template();
  } else if (cfg.b("mock_data")) {
    c.ok("mock_data: no data or tokenizer file is read");
  } else {
    c.gpt_data();
    c.tokenizer();
  }
  c.checkpoints();
  c.written_dirs();
  return c.take();
}

}  // namespace primus::train

// `primus train --dry-run`'s checks (cli/dry_run_checks.h): the files a run reads and the
// directories it writes (train/run_paths.h), the keys it ignores (config/ignored_keys.h), the
// memory per GPU against the device's, and the binary's exit code and output.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <set>

#include "cli/dry_run_checks.h"
#include "config/describe.h"
#include "config/ignored_keys.h"
#include "core/error.h"
#include "test_cli_util.h"
#include "checkpoint/checkpoint.h"
#include "train/run_paths.h"

using ::testing::HasSubstr;
using ::testing::Not;

namespace primus {
namespace {

namespace fs = std::filesystem;

class DryRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("primus_dry_run_{}_{}", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                       ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void touch(const std::string& name, const std::string& text = "x") const {
    fs::create_directories(fs::path(path(name)).parent_path());
    std::ofstream(path(name)) << text;
  }

  // A test experiment from tests/train (its workspace under this test's directory), then `sets`.
  config::Config load(const std::string& experiment, std::vector<std::string> sets = {}) const {
    config::LoadOptions lo;
    lo.sets = std::move(sets);
    lo.world_size = 0;  // as --dry-run assumes
    const std::string workspace = path("ws");
    const config::EnvLookup process = config::process_env();
    lo.env = [workspace, process](const std::string& name) -> std::optional<std::string> {
      if (name == "PRIMUS_TEST_WORKSPACE") return workspace;
      if (name == "PRIMUS_TEST_RUN") return std::nullopt;
      return process(name);
    };
    return config::load_experiment(std::string(PRIMUS_SOURCE_DIR) + "/tests/train/" + experiment, lo);
  }
  // tiny_mock on real (.bin/.idx) data under this directory, with save and tensorboard_dir here.
  config::Config pretrain(std::vector<std::string> sets = {}) const {
    std::vector<std::string> all = {"mock_data=false", "tokenizer_type=NullTokenizer",
                                    "data_path=" + path("data/a"), "save=" + path("ckpt/run"),
                                    "tensorboard_dir=" + path("tb")};
    all.insert(all.end(), sets.begin(), sets.end());
    return load("tiny_mock-pretrain.yaml", all);
  }

  // Every file and directory under the test directory, for "leaves nothing behind".
  std::set<std::string> listing() const {
    std::set<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) out.insert(e.path().string());
    return out;
  }

  fs::path dir_;
};

const train::PathFinding* finding(const train::RunPathsReport& r, const std::string& key) {
  for (const auto& f : r.findings)
    if (f.key == key) return &f;
  return nullptr;
}

std::string all_findings(const train::RunPathsReport& r) {
  std::string s;
  for (const auto& f : r.findings) s += (f.problem ? "PROBLEM " : "warning ") + f.message + "\n";
  return s;
}

// ---- files read ------------------------------------------------------------------------------------

TEST_F(DryRunTest, MissingIdxIsNamedWithItsKeyIndexAndFix) {
  touch("data/a.bin");
  touch("data/a.idx");
  touch("data/b.bin");  // no b.idx
  const auto r = train::check_run_paths(pretrain({"data_path=0.3 " + path("data/a") + " 0.7 " + path("data/b")}));
  const train::PathFinding* f = finding(r, "data_path[1]");
  ASSERT_NE(f, nullptr) << all_findings(r);
  EXPECT_TRUE(f->problem);
  EXPECT_THAT(f->message, HasSubstr("data_path[1] '" + path("data/b") + "'"));
  EXPECT_THAT(f->message, HasSubstr(path("data/b") + ".idx does not exist"));
  EXPECT_THAT(f->message, HasSubstr("primus preprocess"));
  EXPECT_THAT(f->message, HasSubstr("command line"));  // where data_path was set
  EXPECT_EQ(finding(r, "data_path[0]"), nullptr) << all_findings(r);
  EXPECT_EQ(r.findings.size(), 1u) << all_findings(r);

  // A prefix given with its extension, and a list where neither file exists.
  const auto r2 = train::check_run_paths(pretrain({"data_path=" + path("data/a.bin") + " " + path("data/c")}));
  ASSERT_NE(finding(r2, "data_path[0]"), nullptr) << all_findings(r2);
  EXPECT_THAT(finding(r2, "data_path[0]")->message, HasSubstr("without the extension: " + path("data/a")));
  ASSERT_NE(finding(r2, "data_path[1]"), nullptr) << all_findings(r2);
  EXPECT_THAT(finding(r2, "data_path[1]")->message, HasSubstr("neither " + path("data/c") + ".bin nor"));
}

TEST_F(DryRunTest, PerSplitListsReplaceDataPathAndValidationIsReadOnlyWhenEvaluating) {
  touch("data/a.bin");
  touch("data/a.idx");
  // valid_data_path is missing, but eval_iters 0 draws no validation sample: not read.
  auto r = train::check_run_paths(pretrain({"data_path=null", "train_data_path=" + path("data/a"),
                                            "valid_data_path=" + path("data/v"), "eval_iters=0"}));
  EXPECT_TRUE(r.findings.empty()) << all_findings(r);
  r = train::check_run_paths(pretrain({"data_path=null", "train_data_path=" + path("data/a"),
                                       "valid_data_path=" + path("data/v"), "eval_iters=1"}));
  ASSERT_NE(finding(r, "valid_data_path[0]"), nullptr) << all_findings(r);
  // Only a validation list: data_path is not read, nothing would be trained on.
  r = train::check_run_paths(pretrain({"valid_data_path=" + path("data/a")}));
  ASSERT_NE(finding(r, "train_data_path"), nullptr) << all_findings(r);
}

// A chmod 000 file is readable to root, and these tests run as root: the check then runs in a
// child process that dropped to uid/gid 65534 (nobody), where the mode bits apply again.
TEST_F(DryRunTest, UnreadableFileIsNamed) {
  touch("data/a.bin");
  touch("data/a.idx");
  ASSERT_EQ(::chmod(path("data/a.idx").c_str(), 0), 0);
  fs::permissions(dir_, fs::perms::all, fs::perm_options::add);  // the child must reach the files
  fs::permissions(dir_ / "data", fs::perms::all, fs::perm_options::add);
  const config::Config cfg = pretrain();
  auto check = [&] {
    const auto r = train::check_run_paths(cfg);
    const train::PathFinding* f = finding(r, "data_path[0]");
    return f != nullptr && f->problem && f->message.find(path("data/a.idx") + " cannot be read") != std::string::npos &&
           f->message.find("check its permissions") != std::string::npos;
  };
  if (::geteuid() != 0) {
    EXPECT_TRUE(check());
    return;
  }
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    ::_exit(check() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 2)
    GTEST_SKIP() << "running as root, and this process may not drop to uid 65534: a chmod 000 file stays readable "
                    "to root, so unreadability cannot be shown here";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child (uid 65534) did not find data_path[0]'s .idx unreadable";
}

TEST_F(DryRunTest, TokenizerAndChatFilesAreChecked) {
  touch("data/a.bin");
  touch("data/a.idx");
  auto r = train::check_run_paths(pretrain({"tokenizer_type=HuggingFaceTokenizer",
                                            "tokenizer_model=" + path("tok/tokenizer.json")}));
  ASSERT_NE(finding(r, "tokenizer_model"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "tokenizer_model")->message, HasSubstr("tokenizer.json does not exist"));
  // Upstream Primus's model-family names are built (they read the model's tokenizer.json): the
  // type passes, the file is what is checked.
  r = train::check_run_paths(pretrain({"tokenizer_type=Llama3Tokenizer", "tokenizer_model=" + path("tok/tokenizer.json")}));
  EXPECT_EQ(finding(r, "tokenizer_type"), nullptr) << all_findings(r);
  ASSERT_NE(finding(r, "tokenizer_model"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "tokenizer_model")->message, HasSubstr("tokenizer.json does not exist"));

  // Post-training: the chat JSONL files and the template (here a missing .jinja file).
  touch("chat/train.jsonl", "{}\n");
  r = train::check_run_paths(load("tiny_chat-posttrain.yaml",
                                  {"data_path=" + path("chat/train.jsonl") + " " + path("chat/missing.jsonl"),
                                   "chat_template=" + path("chat/t.jinja")}));
  EXPECT_EQ(finding(r, "data_path[0]"), nullptr) << all_findings(r);
  ASSERT_NE(finding(r, "data_path[1]"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "data_path[1]")->message, HasSubstr("missing.jsonl does not exist"));
  ASSERT_NE(finding(r, "chat_template"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "chat_template")->message, HasSubstr("t.jinja does not exist"));
}

TEST_F(DryRunTest, CheckpointsAreCheckedAsTheRunResumes) {
  touch("data/a.bin");
  touch("data/a.idx");
  // load without a checkpoint fails the run, unless auto_continue_train starts fresh.
  auto r = train::check_run_paths(pretrain({"load=" + path("nothing")}));
  ASSERT_NE(finding(r, "load"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "load")->message, HasSubstr("does not exist"));
  r = train::check_run_paths(pretrain({"load=" + path("nothing"), "auto_continue_train=true"}));
  EXPECT_TRUE(r.findings.empty()) << all_findings(r);
  r = train::check_run_paths(pretrain({"pretrained_checkpoint=" + path("nothing")}));
  ASSERT_NE(finding(r, "pretrained_checkpoint"), nullptr) << all_findings(r);

  // A real checkpoint opens; the same one truncated does not.
  {
    checkpoint::CheckpointWriter w(path("saved"));
    checkpoint::CheckpointContent c;
    c.iteration = 3;
    c.model.emplace_back("w", Tensor::zeros({4}, DType::F32));
    w.save(c);
  }
  r = train::check_run_paths(pretrain({"load=" + path("saved")}));
  EXPECT_TRUE(r.findings.empty()) << all_findings(r);
  EXPECT_THAT(::testing::PrintToString(r.checked), HasSubstr("iteration 3"));
  fs::resize_file(path("saved/iter_0000003/model.safetensors"), 8);
  r = train::check_run_paths(pretrain({"load=" + path("saved")}));
  ASSERT_NE(finding(r, "load"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "load")->message, HasSubstr("size mismatch"));
}

// ---- directories written -------------------------------------------------------------------------

TEST_F(DryRunTest, SaveUnderARegularFileIsNotWritable) {
  touch("data/a.bin");
  touch("data/a.idx");
  touch("file");
  auto r = train::check_run_paths(pretrain({"save=" + path("file/sub")}));
  ASSERT_NE(finding(r, "save"), nullptr) << all_findings(r);
  EXPECT_TRUE(finding(r, "save")->problem);
  EXPECT_THAT(finding(r, "save")->message, HasSubstr("cannot be created: " + path("file") + " is not a directory"));
  r = train::check_run_paths(pretrain({"save=" + path("file")}));
  ASSERT_NE(finding(r, "save"), nullptr) << all_findings(r);
  EXPECT_THAT(finding(r, "save")->message, HasSubstr("is not a directory"));
  // The same rule for the other directories a run writes.
  r = train::check_run_paths(pretrain({"tensorboard_dir=" + path("file/tb")}));
  ASSERT_NE(finding(r, "tensorboard_dir"), nullptr) << all_findings(r);
}

TEST_F(DryRunTest, GoodConfigPassesAndLeavesNothingBehind) {
  touch("data/a.bin");
  touch("data/a.idx");
  fs::create_directories(path("ckpt"));  // save's parent exists; save itself does not
  const std::set<std::string> before = listing();
  const auto r = train::check_run_paths(pretrain());
  EXPECT_TRUE(r.findings.empty()) << all_findings(r);
  const std::string checked = ::testing::PrintToString(r.checked);
  EXPECT_THAT(checked, HasSubstr("data_path[0]"));
  EXPECT_THAT(checked, HasSubstr("save " + path("ckpt/run") + " (does not exist yet;"));
  EXPECT_THAT(checked, HasSubstr("log directory"));
  EXPECT_THAT(checked, HasSubstr("tensorboard_dir"));
  EXPECT_EQ(listing(), before);  // no probe file left, no directory created
  EXPECT_FALSE(fs::exists(path("ckpt/run")));
  EXPECT_FALSE(fs::exists(path("ws")));
}

// ---- keys ignored ------------------------------------------------------------------------------------

TEST(IgnoredKeys, EveryRuleNamesASchemaKey) {
  for (const config::IgnoredKeyRule& r : config::ignored_key_rules()) {
    EXPECT_NE(config::schema().find(r.key), nullptr) << r.key;
    EXPECT_NE(std::string(r.why), "") << r.key;
  }
}

TEST_F(DryRunTest, KeysOfFeaturesThatAreOffAreNamed) {
  const config::Config cfg =
      load("tiny_mock-pretrain.yaml", {"moe_aux_loss_coeff=0.01", "lora_dim=8", "eval_interval=7", "ckpt_format=torch",
                                       "loss_scale=1024", "sequence_parallel=true"});
  std::string text;
  std::set<std::string> keys;
  for (const auto& k : config::ignored_keys(cfg)) {
    keys.insert(k.key);
    text += k.message() + "\n";
  }
  EXPECT_EQ(keys, (std::set<std::string>{"moe_aux_loss_coeff", "lora_dim", "eval_interval", "ckpt_format",
                                         "loss_scale", "sequence_parallel"}))
      << text;
  EXPECT_THAT(text, HasSubstr("moe_aux_loss_coeff = 0.01 (command line) has no effect in this run: num_experts is "
                              "unset"));
  EXPECT_THAT(text, HasSubstr("lora_dim = 8 (command line) has no effect in this run: peft is none"));
  EXPECT_THAT(text, HasSubstr("eval_interval = 7 (command line) has no effect in this run: eval_iters is 0"));
  EXPECT_THAT(text, HasSubstr("loss_scale = 1024.0 (command line) has no effect in this run: fp16 is false"));
}

TEST_F(DryRunTest, KeysOfFeaturesThatAreOnAreNotNamed) {
  // The same keys with their features on: an MoE model, LoRA, validation, fp16 on a GPU, TP 2.
  config::Config cfg = load("tiny_mock-pretrain.yaml",
                            {"num_experts=4", "moe_aux_loss_coeff=0.01", "peft=lora", "lora_dim=8", "eval_iters=1",
                             "eval_interval=7", "fp16=true", "device=auto", "loss_scale=1024",
                             "tensor_model_parallel_size=2", "sequence_parallel=true"});
  std::string text;
  for (const auto& k : config::ignored_keys(cfg)) text += k.message() + "\n";
  EXPECT_EQ(text, "");
  // Within MoE: the coefficient does nothing without a balancing loss.
  cfg = load("tiny_mock-pretrain.yaml",
             {"num_experts=4", "moe_aux_loss_coeff=0.01", "moe_router_load_balancing_type=none"});
  text.clear();
  for (const auto& k : config::ignored_keys(cfg)) text += k.message() + "\n";
  EXPECT_THAT(text, HasSubstr("moe_aux_loss_coeff = 0.01 (command line) has no effect in this run: "
                              "moe_router_load_balancing_type is none"));
}

TEST_F(DryRunTest, DefaultsAndDerivedValuesAreNotNamed) {
  // tiny_mock restates no default; a key set to its default, and the derived expert tensor-parallel
  // size (= tensor_model_parallel_size) of a dense model, are not "set".
  config::Config cfg = load("tiny_mock-pretrain.yaml", {"moe_aux_loss_coeff=0.0", "ckpt_format=torch_dist"});
  EXPECT_EQ(cfg.source("expert_tensor_parallel_size").file.rfind("derived", 0), 0u);
  EXPECT_TRUE(config::ignored_keys(cfg).empty());
  cfg = load("tiny_mock-pretrain.yaml", {"expert_tensor_parallel_size=1"});
  ASSERT_EQ(config::ignored_keys(cfg).size(), 1u);
  EXPECT_EQ(config::ignored_keys(cfg)[0].key, "expert_tensor_parallel_size");
}

TEST(IgnoredKeys, EveryExampleIsJudgedWithoutError) {
  // Each rule's condition reads its keys from every shape of config the examples have (dense,
  // MoE, MLA, post-training, GRPO, DPO, LoRA) without throwing.
  int count = 0;
  for (const auto& f : fs::directory_iterator(std::string(PRIMUS_SOURCE_DIR) + "/examples/megatron")) {
    if (f.path().extension() != ".yaml") continue;
    config::LoadOptions o;
    o.world_size = 0;
    o.configs_dir = std::string(PRIMUS_SOURCE_DIR) + "/configs";
    try {
      const config::Config cfg = config::load_experiment(f.path().string(), o);
      for (const config::IgnoredKeyRule& r : config::ignored_key_rules()) (void)r.matters(cfg);
      (void)config::ignored_keys(cfg);
      ++count;
    } catch (const Error& e) {
      ADD_FAILURE() << f.path() << ": " << e.what();
    }
  }
  EXPECT_GE(count, 16);
}

// ---- memory -------------------------------------------------------------------------------------------

TEST(DryRunMemory, FitTightAndDoesNotFit) {
  EXPECT_EQ(config::memory_fit(76.0, 80.0), config::MemoryFit::kFits);   // 95% exactly
  EXPECT_EQ(config::memory_fit(76.1, 80.0), config::MemoryFit::kTight);  // 95.1%
  EXPECT_EQ(config::memory_fit(80.0, 80.0), config::MemoryFit::kTight);
  EXPECT_EQ(config::memory_fit(80.1, 80.0), config::MemoryFit::kDoesNotFit);
}

// ---- the binary ---------------------------------------------------------------------------------------

class DryRunCli : public DryRunTest {
 protected:
  // `primus train --config tests/train/tiny_mock-pretrain.yaml --dry-run` in the source tree with
  // this test's workspace, then `args`.
  test::CliRun dry_run(const std::string& args) const {
    return test::run_shell(fmt::format("cd '{}' && env -u WORLD_SIZE -u PRIMUS_CONFIGS_DIR PRIMUS_TEST_WORKSPACE='{}' "
                                       "'{}' train --config tests/train/tiny_mock-pretrain.yaml --dry-run {}",
                                       PRIMUS_SOURCE_DIR, path("ws"), PRIMUS_BINARY, args));
  }
  std::string real_data_args() const {
    return fmt::format("--set mock_data=false --set tokenizer_type=NullTokenizer --set data_path={} --set save={} "
                       "--set tensorboard_dir={}",
                       path("data/a"), path("ckpt/run"), path("tb"));
  }
};

TEST_F(DryRunCli, EveryProblemIsListedTheEstimateStillPrintsAndTheExitCodeIsOne) {
  touch("data/a.bin");  // no a.idx
  touch("file");
  const test::CliRun r =
      dry_run(real_data_args() + " --set save=" + path("file/sub") + " --set moe_aux_loss_coeff=0.01");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("  - PROBLEM  data_path[0] '" + path("data/a") + "'"));
  EXPECT_THAT(r.output, HasSubstr(path("data/a") + ".idx does not exist"));
  EXPECT_THAT(r.output, HasSubstr("  - PROBLEM  save '" + path("file/sub") + "'"));
  EXPECT_THAT(r.output, HasSubstr("  - warning  moe_aux_loss_coeff = 0.01 (command line) has no effect"));
  EXPECT_THAT(r.output, HasSubstr("memory per GPU"));  // the estimate comes after the problems
  EXPECT_LT(r.output.find("PROBLEM"), r.output.find("memory per GPU"));
  EXPECT_THAT(r.output, HasSubstr("dry run FAILED: 2 problems and 1 warning"));
}

TEST_F(DryRunCli, GoodConfigExitsZeroAndLeavesNothingBehind) {
  touch("data/a.bin");
  touch("data/a.idx");
  const std::set<std::string> before = listing();
  const test::CliRun r = dry_run(real_data_args());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("  - ok       data_path[0] " + path("data/a")));
  EXPECT_THAT(r.output, Not(HasSubstr("PROBLEM")));
  EXPECT_THAT(r.output, HasSubstr("\ndry run OK\n"));
  EXPECT_EQ(listing(), before);
}

TEST_F(DryRunCli, MemoryAbove95PercentOfTheDeviceWarns) {
  const double need = config::memory_estimate_gib(load("tiny_mock-pretrain.yaml"));
  ASSERT_GT(need, 0);
  test::CliRun r = dry_run(fmt::format("--device-memory {:.9f}", need / 0.97));  // 97% of the device
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("WARNING: tight:"));
  EXPECT_THAT(r.output, HasSubstr("  - warning  memory: the estimate"));
  EXPECT_THAT(r.output, HasSubstr("dry run OK, with 1 warning"));
  r = dry_run(fmt::format("--device-memory {:.9f}", need / 0.90));  // 90%: fits
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fits in"));
  EXPECT_THAT(r.output, Not(HasSubstr("WARNING")));
  r = dry_run(fmt::format("--device-memory {:.9f}", need / 1.10));  // 110%: does not fit, still a warning
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("WARNING: does not fit"));
}

TEST_F(DryRunCli, ARealRunNamesTheIgnoredKeysAndTrainsAsBefore) {
  const test::CliRun r = test::run_shell(
      fmt::format("cd '{}' && env -u WORLD_SIZE -u PRIMUS_CONFIGS_DIR PRIMUS_TEST_WORKSPACE='{}' '{}' train --config "
                  "tests/train/tiny_mock-pretrain.yaml --set train_iters=3 --set lora_dim=8",
                  PRIMUS_SOURCE_DIR, path("ws"), PRIMUS_BINARY));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("warning: lora_dim = 8 (command line) has no effect in this run: peft is none"));
  EXPECT_THAT(r.output, HasSubstr("iteration        3/       3"));
}

TEST(DryRunCliHelp, DescribesTheChecks) {
  const test::CliRun r = test::run_shell(fmt::format("'{}' train --help", PRIMUS_BINARY));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--dry-run"));
  EXPECT_THAT(r.output, HasSubstr("writable"));
  EXPECT_THAT(r.output, HasSubstr("95%"));
}

}  // namespace
}  // namespace primus

// The built `primus` binary: `train --dry-run` on the seed example and on every example
// experiment, `config --list` / `--show`, and the hand-off to the training loop.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <sys/wait.h>

#include "config/describe.h"
#include "config/schema.h"
#include "test_cli_util.h"
#include "test_config_util.h"

using ::testing::HasSubstr;

namespace {

using primus::test::CliRun;

// Runs `primus <args>` in the source tree with a clean WORLD_SIZE and the given env prefix.
CliRun run_primus(const std::string& args, const std::string& env = "") {
  return primus::test::run_shell(std::string("cd '") + PRIMUS_SOURCE_DIR + "' && env -u WORLD_SIZE -u PRIMUS_CONFIGS_DIR " +
                         env + " '" + PRIMUS_BINARY + "' " + args);
}

const std::string kSeed = "examples/megatron/llama3.1_8B-pretrain.yaml";
// The published examples read data under /data/primus_data, which a dry run checks (and fails on
// when it is missing: DryRunReadsTheSeedExamplesDataPaths); the tests of the estimate and the
// config run them on mock data, whose checks pass anywhere.
const std::string kMockData = " --set mock_data=true --set data_cache_path=null";

int seed_line(const std::string& text) {
  return primus::config::testing::line_of(std::string(PRIMUS_SOURCE_DIR) + "/" + kSeed, text);
}

}  // namespace

TEST(ConfigCli, SeedExampleDryRuns) {
  const CliRun r = run_primus("train --config " + kSeed + " --dry-run" + kMockData);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("8,030,261,248 (8.03B)"));
  EXPECT_THAT(r.output, HasSubstr("exp_name llama3.1_8B-fineweb-pretrain"));
  EXPECT_THAT(r.output, HasSubstr(kSeed + ":" + std::to_string(seed_line("train_iters:"))));
  EXPECT_THAT(r.output, HasSubstr("configs/models/megatron/llama3_8B.yaml:"));  // num_layers from the chain
  EXPECT_THAT(r.output, HasSubstr("schema default"));
  EXPECT_THAT(r.output, HasSubstr("FLOPs per token"));
  EXPECT_THAT(r.output, HasSubstr("memory per GPU"));
  EXPECT_THAT(r.output, HasSubstr("world size 4 = tensor 2 x pipeline 2"));
}

TEST(ConfigCli, EnvironmentCommandLineAndUpstreamForm) {
  CliRun r = run_primus("train pretrain --config " + kSeed + " --dry-run" + kMockData + " --set lr=1e-4 min_lr=1e-5",
                 "PRIMUS_EXP_NAME=my-run WORLD_SIZE=8");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("exp_name my-run"));
  EXPECT_THAT(r.output, HasSubstr("world size 8 = tensor 2 x pipeline 2 x context 1 x data 2"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("lr +0.0001 +command line"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("min_lr +1e-05 +command line"));

  r = run_primus("train --config " + kSeed + " --dry-run --set bogus_key=1");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("unknown config key 'bogus_key'"));
  r = run_primus("train --config " + kSeed + " --dry-run --world-size 3");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("world size 3"));
  r = run_primus("train --config " + kSeed + " --dry-run --dry-rum");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("did you mean '--dry-run'"));
}

TEST(ConfigCli, EveryExampleDryRuns) {
  // In process (what `train --dry-run` prints), so the suite stays fast; the binary path is
  // covered by the seed above and one more example here.
  int count = 0;
  for (const auto& f : std::filesystem::directory_iterator(std::string(PRIMUS_SOURCE_DIR) + "/examples/megatron")) {
    if (f.path().extension() != ".yaml") continue;
    ++count;
    primus::config::LoadOptions o;
    o.world_size = 0;  // the smallest world that fits, as --dry-run assumes
    o.configs_dir = std::string(PRIMUS_SOURCE_DIR) + "/configs";
    o.env = primus::config::testing::env_of({});
    try {
      const primus::config::Config cfg = primus::config::load_experiment(f.path().string(), o);
      EXPECT_FALSE(primus::config::describe_config(cfg).empty());
      EXPECT_THAT(primus::config::describe_model(cfg), HasSubstr("parameters")) << f.path();
    } catch (const primus::Error& e) {
      ADD_FAILURE() << f.path() << ": " << e.what();
    }
  }
  EXPECT_GE(count, 16);  // the twelve published models, llama_tiny, llama_125M, Llama 3.2 1B/3B
  const CliRun r = run_primus("train --config examples/megatron/deepseek_v3-pretrain.yaml --dry-run" + kMockData);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("671,026,404,352"));
  EXPECT_THAT(r.output, HasSubstr("MTP modules"));
}

TEST(ConfigCli, DryRunComparesExpertParallelLayoutsWithDeviceMemory) {
  // Mixtral 8x22B at EP8 x PP4 (x TP2) on 64 GPUs: the routed experts are split 8 ways.
  const std::string mixtral = "train --config examples/megatron/mixtral_8x22B_v0.1-pretrain.yaml --dry-run "
                              "--world-size 64 --set expert_model_parallel_size=8 "
                              "--set pipeline_model_parallel_size=4" + kMockData;
  CliRun r = run_primus(mixtral);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tp 2, pp 4, cp 1, dp 8, ep 8"));
  EXPECT_THAT(r.output, HasSubstr("2,113,929,216 of them routed-expert"));  // 135.3B / 8 experts' ranks / 4 stages x 14/14
  EXPECT_THAT(r.output, HasSubstr("fits in 80 GiB of device memory"));
  r = run_primus(mixtral + " --device-memory 24");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("WARNING: does not fit: 42.5 GiB > 24 GiB of device memory"));
  // DeepSeek-V3 at EP64 x PP16 on 1024 GPUs (Megatron's uneven split: one layer on the first stage).
  r = run_primus("train --config examples/megatron/deepseek_v3-pretrain.yaml --dry-run --world-size 1024 "
                 "--set expert_model_parallel_size=64 --set pipeline_model_parallel_size=16 "
                 "--set decoder_first_pipeline_num_layers=1 --set decoder_last_pipeline_num_layers=null" + kMockData);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("dp 64, ep 64"));
  EXPECT_THAT(r.output, HasSubstr("880,803,840 of them routed-expert"));
  EXPECT_THAT(r.output, HasSubstr("fits in 80 GiB"));
}

TEST(ConfigCli, DryRunReadsTheSeedExamplesDataPaths) {
  // As published, the seed trains on /data/primus_data/...: a dry run where that is missing names
  // it, still prints the estimate, and fails.
  const std::string prefix = "/data/primus_data/fineweb/llama3.1/fineweb_text_document";
  if (std::filesystem::exists(prefix + ".idx")) GTEST_SKIP() << prefix << " exists on this machine";
  const CliRun r = run_primus("train --config " + kSeed + " --dry-run");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("PROBLEM  train_data_path[0] '" + prefix + "'"));
  EXPECT_THAT(r.output, HasSubstr("8,030,261,248 (8.03B)"));
  EXPECT_THAT(r.output, HasSubstr("dry run FAILED"));
}

TEST(ConfigCli, ListPrintsEveryKeyAndShowPrintsSources) {
  CliRun r = run_primus("config --list");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const auto& o : primus::config::schema().options()) EXPECT_THAT(r.output, HasSubstr(o.key));
  EXPECT_THAT(r.output, HasSubstr("[mixture of experts]"));
  r = run_primus("config --list --group nosuch");  // an error, and a failing exit code
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no config group 'nosuch'"));
  r = run_primus("config --show " + kSeed + " --set clip_grad=0.5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::ContainsRegex("clip_grad +0.5 +command line"));
  r = run_primus("config --show " + kSeed + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("\"options\""));
}

TEST(ConfigCli, TrainWithoutDryRunHandsTheConfigToTheTrainingLoop) {
  // A valid config reaches primus::train::run(). Until the loop of issue #4 lands, run()
  // says so and returns 3; with it, a missing data file must fail the run, not the config.
  const CliRun r = run_primus("train --config examples/megatron/llama_tiny-pretrain.yaml train_iters=1 "
                       "train_data_path=/nonexistent/primus_test_data");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 2) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("invalid config")));
  const CliRun bad = run_primus("train --config " + kSeed);  // world size 1 cannot hold TP 2 x PP 2
  EXPECT_EQ(bad.code, 1);
  EXPECT_THAT(bad.output, HasSubstr("world size 1"));
}

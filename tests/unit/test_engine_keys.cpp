// The engine's kernel and communication settings are experiment keys, read once by train_options():
// attention_backend (Megatron's) with the Turbo switches, logits_chunk_mb, the two cuDNN attention
// workarounds and distributed_timeout_minutes (Megatron's). The environment variables they replace
// are refused at start-up, naming the key (config/retired_env.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <map>
#include <set>

#include "config/config.h"
#include "config/ignored_keys.h"
#include "config/retired_env.h"
#include "core/error.h"
#include "test_cli_util.h"
#include "../test_util.h"
#include "train/train_options.h"

using ::testing::HasSubstr;

namespace primus::train {
namespace {

using test::error_of;

// tests/train/tiny_mock-pretrain.yaml (device: cpu) with `sets`; cuda_visible decides device: auto.
config::Config load(std::vector<std::string> sets) {
  config::LoadOptions lo;
  lo.sets = std::move(sets);
  lo.env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "PRIMUS_TEST_WORKSPACE") return "/tmp/primus_engine_keys";
    return std::nullopt;
  };
  return config::load_experiment(std::string(PRIMUS_SOURCE_DIR) + "/tests/train/tiny_mock-pretrain.yaml", lo);
}
TrainOptions cpu(std::vector<std::string> sets = {}) { return train_options(load(std::move(sets)), false); }
// The same experiment as a GPU run would read it (device: auto with a GPU visible; nothing touches a GPU).
TrainOptions gpu(std::vector<std::string> sets = {}) {
  sets.insert(sets.begin(), "device=auto");
  return train_options(load(std::move(sets)), true);
}
const std::vector<std::string> kTurbo = {"enable_primus_turbo=true", "use_turbo_attention=true"};
std::vector<std::string> turbo(std::string set) {
  std::vector<std::string> s = kTurbo;
  s.push_back(std::move(set));
  return s;
}

TEST(EngineKeys, DefaultsKeepTodaysBehaviour) {
  const TrainOptions o = gpu();
  EXPECT_EQ(o.attention_backend, "auto");
  EXPECT_EQ(o.attention, AttentionImpl::Plain);  // Turbo attention off: the plain kernel, as before
  EXPECT_EQ(gpu(kTurbo).attention, AttentionImpl::CudnnWithFlashFallback);
  EXPECT_EQ(o.logits_chunk_mb, 2048);
  EXPECT_EQ(o.cudnn_attention_padding_workaround, "auto");
  EXPECT_TRUE(o.cudnn_attention_mask_index_int32);
  EXPECT_EQ(o.distributed_timeout_minutes, 10);  // the communicator's 600 s
}

TEST(EngineKeys, AttentionBackendMapsToTheKernels) {
  EXPECT_EQ(gpu(turbo("attention_backend=auto")).attention, AttentionImpl::CudnnWithFlashFallback);
  EXPECT_EQ(gpu(turbo("attention_backend=fused")).attention, AttentionImpl::Cudnn);
  EXPECT_EQ(gpu(turbo("attention_backend=flash")).attention, AttentionImpl::Flash);
  EXPECT_EQ(gpu({"attention_backend=unfused"}).attention, AttentionImpl::Plain);
  EXPECT_EQ(gpu({"attention_backend=local"}).attention, AttentionImpl::Plain);
  EXPECT_EQ(gpu({"attention_backend=auto"}).attention, AttentionImpl::Plain);
  // One switch alone is not Turbo attention.
  EXPECT_EQ(gpu({"use_turbo_attention=true"}).attention, AttentionImpl::Plain);
}

TEST(EngineKeys, AttentionBackendAndTurboSwitchesThatContradictAreRefused) {
  std::string m = error_of([] { gpu(turbo("attention_backend=unfused")); });
  EXPECT_THAT(m, HasSubstr("attention_backend = unfused (command line)"));
  EXPECT_THAT(m, HasSubstr("use_turbo_attention"));
  m = error_of([] { gpu({"attention_backend=flash"}); });
  EXPECT_THAT(m, HasSubstr("attention_backend = flash (command line)"));
  EXPECT_THAT(m, HasSubstr("enable_primus_turbo = false"));
  m = error_of([] { gpu({"enable_primus_turbo=true", "attention_backend=fused"}); });
  EXPECT_THAT(m, HasSubstr("use_turbo_attention = false"));
  // A value Megatron does not have, or that has no kernel here, is refused by name at load.
  m = error_of([] { gpu({"attention_backend=flex"}); });
  EXPECT_THAT(m, HasSubstr("'attention_backend' = 'flex' is not allowed"));
  // The pure function says the same.
  EXPECT_THROW(attention_kernel("cudnn", true, true, "x"), Error);
  EXPECT_EQ(attention_kernel("local", false, true, "x"), AttentionImpl::Plain);
}

TEST(EngineKeys, CudaKernelsAreRefusedOnTheCpu) {
  for (const char* b : {"fused", "flash"}) {
    const std::string m = error_of([&] { cpu(turbo(std::string("attention_backend=") + b)); });
    EXPECT_THAT(m, HasSubstr(fmt::format("attention_backend = {} (command line)", b)));
    EXPECT_THAT(m, HasSubstr("CPU"));
  }
  // The CPU's one kernel is an unfused one: auto, unfused and local say nothing wrong about it.
  EXPECT_EQ(cpu({"attention_backend=unfused"}).attention_backend, "unfused");
  EXPECT_EQ(cpu({"attention_backend=local"}).attention_backend, "local");
  EXPECT_EQ(cpu().attention_backend, "auto");
}

TEST(EngineKeys, CudnnWorkaroundsLogitsChunksAndTimeoutAreRead) {
  // `on` / `off` are YAML booleans; the key still reads them as its words.
  EXPECT_EQ(gpu(turbo("cudnn_attention_padding_workaround=on")).cudnn_attention_padding_workaround, "on");
  EXPECT_EQ(gpu(turbo("cudnn_attention_padding_workaround=off")).cudnn_attention_padding_workaround, "off");
  EXPECT_FALSE(gpu(turbo("cudnn_attention_mask_index=float")).cudnn_attention_mask_index_int32);
  EXPECT_THAT(error_of([] { gpu({"cudnn_attention_padding_workaround=sometimes"}); }),
              HasSubstr("'cudnn_attention_padding_workaround' = 'sometimes' is not allowed"));
  EXPECT_THAT(error_of([] { gpu({"cudnn_attention_mask_index=int64"}); }),
              HasSubstr("'cudnn_attention_mask_index' = 'int64' is not allowed"));
  EXPECT_EQ(cpu({"logits_chunk_mb=512"}).logits_chunk_mb, 512);
  EXPECT_THAT(error_of([] { cpu({"logits_chunk_mb=0"}); }), HasSubstr("logits_chunk_mb"));
  EXPECT_EQ(cpu({"distributed_timeout_minutes=3"}).distributed_timeout_minutes, 3);
  EXPECT_THAT(error_of([] { cpu({"distributed_timeout_minutes=0"}); }), HasSubstr("distributed_timeout_minutes"));
}

TEST(EngineKeys, IgnoredKeysNameTheCudnnKnobsWhereCudnnDoesNotRun) {
  auto ignored = [](std::vector<std::string> sets) {
    std::set<std::string> keys;
    for (const auto& k : config::ignored_keys(load(std::move(sets)))) keys.insert(k.key);
    return keys;
  };
  // distributed_timeout_minutes acts now: never named.
  EXPECT_EQ(ignored({"device=auto", "distributed_timeout_minutes=3"}), std::set<std::string>{});
  EXPECT_EQ(ignored({"device=auto", "cudnn_attention_mask_index=float"}),
            std::set<std::string>{"cudnn_attention_mask_index"});
  EXPECT_EQ(ignored({"device=auto", "enable_primus_turbo=true", "use_turbo_attention=true",
                     "cudnn_attention_mask_index=float", "cudnn_attention_padding_workaround=on"}),
            std::set<std::string>{});
  EXPECT_EQ(ignored({"attention_backend=unfused", "cudnn_attention_padding_workaround=off"}),
            (std::set<std::string>{"attention_backend", "cudnn_attention_padding_workaround"}));
}

// ---- the retired environment variables ----------------------------------------------------------

config::EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(RetiredEnv, EveryOldVariableIsRefusedNamingItsKey) {
  const std::map<std::string, std::pair<std::string, std::string>> cases = {
      {"PRIMUS_ATTENTION_IMPL", {"cudnn-strict", "--set attention_backend=fused"}},
      {"PRIMUS_ATTENTION_KERNEL", {"simple", "--set attention_backend=unfused"}},
      {"PRIMUS_LOGITS_CHUNK_MB", {"1024", "--set logits_chunk_mb=1024"}},
      {"PRIMUS_CUDNN_ATTN_PADDING_WORKAROUND", {"1", "--set cudnn_attention_padding_workaround=on"}},
      {"PRIMUS_CUDNN_ATTN_MASK_INDEX", {"float", "--set cudnn_attention_mask_index=float"}},
      {"PRIMUS_COMM_TIMEOUT_S", {"90", "--set distributed_timeout_minutes=2"}},
  };
  EXPECT_EQ(cases.size(), config::retired_env_vars().size());
  for (const auto& [name, c] : cases) {
    const std::string m = error_of([&] { config::refuse_retired_env(env_of({{name, c.first}})); });
    EXPECT_THAT(m, HasSubstr(name + "=" + c.first + ": use the experiment key")) << name;
    EXPECT_THAT(m, HasSubstr(c.second)) << name;
  }
  // All at once, and a value with no translation still names the key.
  const std::string m = error_of([] {
    config::refuse_retired_env(env_of({{"PRIMUS_ATTENTION_IMPL", "fastest"}, {"PRIMUS_COMM_TIMEOUT_S", "soon"}}));
  });
  EXPECT_THAT(m, HasSubstr("these environment variables no longer configure the engine"));
  EXPECT_THAT(m, HasSubstr("PRIMUS_ATTENTION_IMPL=fastest: use the experiment key attention_backend"));
  EXPECT_THAT(m, HasSubstr("PRIMUS_COMM_TIMEOUT_S=soon: use the experiment key distributed_timeout_minutes"));
}

TEST(RetiredEnv, UnsetEmptyAndGemmTuningVariablesPass) {
  EXPECT_NO_THROW(config::refuse_retired_env(env_of({})));
  EXPECT_NO_THROW(config::refuse_retired_env(env_of({{"PRIMUS_ATTENTION_IMPL", ""}})));
  EXPECT_NO_THROW(config::refuse_retired_env(env_of({{"PRIMUS_GEMM_TUNING_STAGE", "1"}, {"PRIMUS_GEMM_TUNING_FILE", "t"}})));
}

TEST(RetiredEnv, ThePrimusBinaryRefusesThemAtStartUp) {
  const test::CliRun r = test::run_shell(std::string("env PRIMUS_ATTENTION_IMPL=flash '") + PRIMUS_BINARY +
                                         "' config --list --group parallelism");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("PRIMUS_ATTENTION_IMPL=flash: use the experiment key attention_backend "
                                  "(--set attention_backend=flash"));
  const test::CliRun ok = test::run_shell(std::string("env -u PRIMUS_ATTENTION_IMPL '") + PRIMUS_BINARY +
                                          "' config --list --group parallelism");
  EXPECT_EQ(ok.code, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("distributed_timeout_minutes"));
}

}  // namespace
}  // namespace primus::train

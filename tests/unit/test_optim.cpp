// LR / weight-decay schedules at hand-computed points of Megatron's formulas, and the
// AdamW optimizer: clipping, no-decay params, skipped non-finite steps, bf16 masters,
// and state export/import through safetensors reproducing later steps exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numbers>

#include "core/safetensors.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"

using namespace primus;

namespace {
// lr 1e-3 -> 1e-4 over 100 iterations of 8 samples, 10 warmup iterations.
MegatronScheduleArgs base_args(const char* style) {
  MegatronScheduleArgs a;
  a.lr = 1e-3;
  a.min_lr = 1e-4;
  a.lr_decay_style = style;
  a.global_batch_size = 8;
  a.train_iters = 100;
  a.lr_warmup_iters = 10;
  return a;
}
double lr_at(const MegatronScheduleArgs& a, double samples) { return LrSchedule(megatron_schedule(a)).lr(samples); }
}  // namespace

TEST(LrSchedule, WarmupThenDecayStylesAtKnownPoints) {
  // In samples: warmup 80, decay 800.
  const auto cos = base_args("cosine");
  EXPECT_DOUBLE_EQ(lr_at(cos, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(cos, 40), 0.5e-3);
  EXPECT_DOUBLE_EQ(lr_at(cos, 80), 1e-3);
  EXPECT_NEAR(lr_at(cos, 440), 1e-4 + 0.5 * 9e-4, 1e-15);  // halfway: cos(pi/2) = 0
  EXPECT_NEAR(lr_at(cos, 260), 1e-4 + 0.5 * (std::cos(std::numbers::pi / 4) + 1) * 9e-4, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(cos, 800), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(cos, 5000), 1e-4);
  EXPECT_NEAR(lr_at(base_args("linear"), 260), 1e-4 + 0.75 * 9e-4, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(base_args("constant"), 700), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(base_args("constant"), 5000), 1e-3);
  EXPECT_NEAR(lr_at(base_args("inverse-square-root"), 320), 1e-3 * std::sqrt(80.0 / 320.0), 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(base_args("inverse-square-root"), 79000), 1e-4);  // clamped at min_lr (after decay)

  auto init = base_args("linear");
  init.lr_warmup_init = 1e-4;
  EXPECT_NEAR(lr_at(init, 40), 1e-4 + 0.5 * 9e-4, 1e-15);
}

TEST(LrSchedule, WsdAnnealsOverItsLastSteps) {
  auto a = base_args("WSD");
  a.lr_wsd_decay_iters = 20;  // anneal over samples [640, 800]
  EXPECT_DOUBLE_EQ(lr_at(a, 600), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(a, 640), 1e-3);
  EXPECT_NEAR(lr_at(a, 720), 1e-4 + (2 * std::pow(0.5, 0.5) - 1) * 9e-4, 1e-15);  // exponential (default)
  a.lr_wsd_decay_style = "linear";
  EXPECT_NEAR(lr_at(a, 720), 1e-4 + 0.5 * 9e-4, 1e-15);
  a.lr_wsd_decay_style = "cosine";
  EXPECT_NEAR(lr_at(a, 680), 1e-4 + 0.5 * (std::cos(std::numbers::pi / 4) + 1) * 9e-4, 1e-15);
  a.lr_wsd_decay_style = "minus_sqrt";
  EXPECT_NEAR(lr_at(a, 720), 1e-4 + (1 - std::sqrt(0.5)) * 9e-4, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(a, 800), 1e-4);
}

TEST(LrSchedule, FractionAndSampleBasedVariants) {
  auto f = base_args("linear");
  f.lr_decay_iters = 50;        // decay 400 samples
  f.lr_warmup_fraction = 0.1;   // warmup 40 samples (overrides lr_warmup_iters)
  const LrScheduleConfig c = megatron_schedule(f);
  EXPECT_DOUBLE_EQ(c.decay_steps, 400);
  EXPECT_DOUBLE_EQ(c.warmup_steps, 40);
  EXPECT_DOUBLE_EQ(LrSchedule(c).lr(20), 0.5e-3);
  EXPECT_NEAR(LrSchedule(c).lr(220), 1e-4 + 0.5 * 9e-4, 1e-15);

  MegatronScheduleArgs s;
  s.lr = 2e-3;
  s.lr_decay_style = "cosine";
  s.train_samples = 1000;
  s.lr_warmup_samples = 100;
  s.lr_decay_samples = 600;
  EXPECT_DOUBLE_EQ(lr_at(s, 50), 1e-3);
  EXPECT_NEAR(lr_at(s, 350), 1e-3, 1e-15);  // ratio 0.5, min_lr 0
  EXPECT_DOUBLE_EQ(lr_at(s, 700), 0.0);
  s.lr_decay_samples.reset();  // defaults to train_samples
  EXPECT_DOUBLE_EQ(megatron_schedule(s).decay_steps, 1000);
}

TEST(LrSchedule, WeightDecayIncrement) {
  auto a = base_args("cosine");
  a.start_weight_decay = 0.0;
  a.end_weight_decay = 0.1;
  a.weight_decay_incr_style = "linear";  // over train_iters * gbs = 800 samples
  EXPECT_NEAR(LrSchedule(megatron_schedule(a)).weight_decay(200), 0.025, 1e-15);
  a.weight_decay_incr_style = "cosine";
  EXPECT_NEAR(LrSchedule(megatron_schedule(a)).weight_decay(200), 0.1 * 0.5 * (std::cos(std::numbers::pi * 0.75) + 1),
              1e-15);
  EXPECT_DOUBLE_EQ(LrSchedule(megatron_schedule(a)).weight_decay(1000), 0.1);
  EXPECT_DOUBLE_EQ(LrSchedule(megatron_schedule(base_args("cosine"))).weight_decay(300), 0.01);
}

TEST(LrSchedule, BadSettingsAreRejectedByName) {
  auto a = base_args("cosine");
  a.lr_warmup_iters = 100;
  EXPECT_THROW(LrSchedule(megatron_schedule(a)), Error);
  EXPECT_THROW(LrSchedule(megatron_schedule(base_args("WSD"))), Error);  // no lr_wsd_decay_iters
  try {
    megatron_schedule(base_args("cosin"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'cosine'"), std::string::npos) << e.what();
  }
  auto both = base_args("linear");
  both.train_samples = 10;
  EXPECT_THROW(megatron_schedule(both), Error);
}

namespace {
NamedTensor param(const std::string& name, std::vector<float> v, bool no_wd, DType dt = DType::F32) {
  NamedTensor p;
  p.name = name;
  p.value = Tensor::from_floats(v, {static_cast<int64_t>(v.size())}, dt);
  p.grad = Tensor::zeros({static_cast<int64_t>(v.size())}, DType::F32);
  p.no_weight_decay = no_wd;
  return p;
}
}  // namespace

TEST(AdamW, ClipsByGlobalNormAndSkipsNoDecayParams) {
  auto ctx = ops::Context::cpu();
  NamedTensor w = param("w", {1.f, 2.f}, false), n = param("norm", {1.f}, true);
  w.grad.data<float>()[0] = 6.f;
  w.grad.data<float>()[1] = 0.f;
  n.grad.data<float>()[0] = 8.f;  // global norm 10
  AdamWConfig cfg;
  cfg.beta1 = 0.9f;
  cfg.beta2 = 0.95f;
  cfg.clip_grad = 1.f;
  AdamW opt(ctx, {&w, &n}, cfg);
  const auto info = opt.step(0.1, 0.5);
  EXPECT_NEAR(info.grad_norm, 10.0, 1e-9);
  EXPECT_NEAR(info.clip_coeff, 1.0 / (10.0 + 1e-6), 1e-12);
  // Step 1: m_hat = g, v_hat = g^2, so the Adam direction is g / (|g| + eps) = sign(g).
  EXPECT_NEAR(w.value.data<float>()[0], 1.f * (1 - 0.1 * 0.5) - 0.1, 1e-6);
  EXPECT_NEAR(w.value.data<float>()[1], 2.f * (1 - 0.1 * 0.5), 1e-6);  // zero grad: decay only
  EXPECT_NEAR(n.value.data<float>()[0], 1.f - 0.1, 1e-6);              // no decay on norms
  EXPECT_EQ(opt.steps_taken(), 1);
  EXPECT_EQ(opt.count_zero_grads(), 1);

  n.grad.data<float>()[0] = NAN;
  const float before = w.value.data<float>()[0];
  EXPECT_TRUE(opt.step(0.1, 0.5).skipped);
  EXPECT_EQ(w.value.data<float>()[0], before);
  EXPECT_EQ(opt.steps_taken(), 1);
}

TEST(AdamW, Bf16ParamsKeepFp32Masters) {
  auto ctx = ops::Context::cpu();
  NamedTensor w = param("w", {1.f, -1.f}, false, DType::BF16);
  AdamW opt(ctx, {&w}, AdamWConfig{});
  const auto state = opt.state_tensors();
  ASSERT_EQ(state.size(), 4u);  // exp_avg, exp_avg_sq, master, step
  for (int s = 0; s < 3; ++s) {
    w.grad.data<float>()[0] = 1e-3f;
    w.grad.data<float>()[1] = -1e-3f;
    opt.step(1e-4, 0.0);
  }
  // Three steps of 1e-4 are below bf16 resolution at 1.0 but kept in the master.
  const Tensor& master = state[2].second;
  EXPECT_EQ(state[2].first, "w.master");
  EXPECT_NEAR(master.data<float>()[0], 1.f - 3e-4f, 1e-6);
  EXPECT_EQ(w.value.to_float_vector()[0], bf16_bits_to_fp32(fp32_to_bf16_bits(master.data<float>()[0])));
}

TEST(AdamW, StateRoundTripReproducesLaterStepsExactly) {
  auto ctx = ops::Context::cpu();
  auto set_grads = [](NamedTensor& p, int step) {
    for (int64_t i = 0; i < p.grad.numel(); ++i) p.grad.data<float>()[i] = std::sin(1.7f * i + step) * 0.3f;
  };
  NamedTensor a = param("a.weight", {0.5f, -0.25f, 2.f}, false), b = param("b.norm", {1.f, 1.f}, true);
  AdamW opt(ctx, {&a, &b}, AdamWConfig{});
  for (int s = 0; s < 3; ++s) {
    set_grads(a, s);
    set_grads(b, s);
    opt.step(1e-2, 0.1);
  }
  const std::string path = (std::filesystem::temp_directory_path() / "primus_adamw_state.safetensors").string();
  NamedTensorList saved = opt.state_tensors();
  saved.emplace_back("model.a.weight", a.value);
  saved.emplace_back("model.b.norm", b.value);
  save_safetensors(path, saved);

  SafetensorsFile f(path);
  NamedTensor a2 = param("a.weight", {0, 0, 0}, false), b2 = param("b.norm", {0, 0}, true);
  a2.value.copy_from(f.view("model.a.weight"));
  b2.value.copy_from(f.view("model.b.norm"));
  AdamW opt2(ctx, {&a2, &b2}, AdamWConfig{});
  NamedTensorList state;
  for (const std::string& name : f.names())
    if (!name.starts_with("model.")) state.emplace_back(name, f.load(name));
  opt2.load_state_tensors(state);
  EXPECT_EQ(opt2.steps_taken(), 3);
  for (int s = 3; s < 5; ++s) {
    for (NamedTensor* p : {&a, &b, &a2, &b2}) set_grads(*p, s);
    opt.step(1e-2, 0.1);
    opt2.step(1e-2, 0.1);
  }
  EXPECT_EQ(a.value.to_float_vector(), a2.value.to_float_vector());
  EXPECT_EQ(b.value.to_float_vector(), b2.value.to_float_vector());

  NamedTensorList missing;
  for (auto& [n, t] : state)
    if (n != "a.weight.exp_avg_sq") missing.emplace_back(n, t);
  try {
    opt2.load_state_tensors(missing);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.weight.exp_avg_sq"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

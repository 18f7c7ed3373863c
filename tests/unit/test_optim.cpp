// LR / weight-decay schedules at hand-computed points of Megatron's formulas, and the
// AdamW optimizer: clipping, no-decay params, skipped non-finite steps, bf16 masters,
// and state export/import through safetensors reproducing later steps exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <numbers>

#include "core/master_bits.h"
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

// ---- Megatron's precision-aware optimizer: bf16 moments, masters as bf16 + int16 remainder ----

namespace {
uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}
// n bf16 weights spread over several magnitudes and signs, and gradients that change each step.
NamedTensor bf16_param(const std::string& name, int64_t n, bool no_wd) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * i) * std::pow(10.f, static_cast<float>(i % 5) - 2.f);
  return param(name, v, no_wd, DType::BF16);
}
void set_step_grads(NamedTensor& p, int step) {
  for (int64_t i = 0; i < p.grad.numel(); ++i)
    p.grad.data<float>()[i] = std::cos(0.91f * i + 1.3f * step) * (i % 7 == 0 ? 5.f : 0.02f);
}
Tensor state_of(const NamedTensorList& s, const std::string& name) {
  for (const auto& [n, t] : s)
    if (n == name) return t;
  ADD_FAILURE() << "no state tensor " << name;
  return {};
}
}  // namespace

TEST(MasterBits, SplitThenJoinIsTheIdentityAndRoundsToNearest) {
  // Every sign/exponent/mantissa-high pattern with low halves around the rounding points.
  int64_t ties = 0;
  for (uint32_t hi = 0; hi < 0x10000u; hi += 7) {
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu, 0x1234u * (hi % 5)}) {
      const uint32_t bits = (hi << 16) | (lo & 0xFFFFu);
      uint16_t model = 0;
      int16_t rem = 0;
      split_master_bits(bits, model, rem);
      ASSERT_EQ(join_master_bits(model, rem), bits) << std::hex << bits;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      if (!std::isfinite(f) || !std::isfinite(bf16_bits_to_fp32(model))) continue;
      // Round to nearest: the model weight is the closer of the two bf16 neighbours; on a tie
      // (low half 0x8000) it is the one away from zero, which may differ from nearest-even.
      if ((lo & 0xFFFFu) == 0x8000u) {
        ++ties;
        EXPECT_EQ(model, static_cast<uint16_t>(hi + 1)) << std::hex << bits;
      } else {
        EXPECT_EQ(model, fp32_to_bf16_bits(f)) << std::hex << bits;
      }
    }
  }
  EXPECT_GT(ties, 0);
}

TEST(AdamW, ParamRemaindersKeepTheFp32MasterBitForBit) {
  // The same bf16 model trained by the plain mixed-precision AdamW (fp32 masters) and by one
  // holding each master as the bf16 weight + an int16 remainder: the masters must agree bit for
  // bit after every step, and the weights be the masters rounded to nearest.
  auto ctx = ops::Context::cpu();
  const int64_t n = 4099;  // not a multiple of 4
  NamedTensor a = bf16_param("w", n, false), b = bf16_param("w", n, false);
  NamedTensor an = bf16_param("norm", 5, true), bn = bf16_param("norm", 5, true);
  AdamWConfig plain;
  plain.clip_grad = 1.f;
  AdamWConfig split = plain;
  split.store_param_remainders = true;
  AdamW oa(ctx, {&a, &an}, plain), ob(ctx, {&b, &bn}, split);
  const std::vector<float> initial = b.value.to_float_vector();
  for (int s = 0; s < 12; ++s) {
    for (NamedTensor* p : {&a, &an, &b, &bn}) set_step_grads(*p, s);
    const auto ia = oa.step(3e-3, 0.1), ib = ob.step(3e-3, 0.1);
    ASSERT_EQ(ia.grad_norm, ib.grad_norm);
    const NamedTensorList sa = oa.state_tensors(), sb = ob.state_tensors();
    for (const char* name : {"w.master", "norm.master"}) {
      const Tensor ma = state_of(sa, name), mb = state_of(sb, name);
      ASSERT_EQ(mb.dtype(), DType::F32);
      ASSERT_EQ(std::memcmp(ma.raw(), mb.raw(), ma.nbytes()), 0) << name << " after step " << s + 1;
    }
  }
  // The weights moved, and each is its master rounded to nearest (ties away from zero).
  const Tensor master = state_of(oa.state_tensors(), "w.master");
  const auto* wb = static_cast<const uint16_t*>(b.value.raw());
  int64_t moved = 0, differs_from_plain = 0;
  const std::vector<float> now = b.value.to_float_vector();
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t mbits = bits_of(master.data<float>()[i]);
    moved += now[i] != initial[i];
    const uint16_t nearest_even = fp32_to_bf16_bits(master.data<float>()[i]);
    if ((mbits & 0xFFFFu) != 0x8000u) EXPECT_EQ(wb[i], nearest_even) << i;
    differs_from_plain += wb[i] != static_cast<const uint16_t*>(a.value.raw())[i];
  }
  EXPECT_GT(moved, n / 2);
  EXPECT_LE(differs_from_plain, 2);  // ties only
  // 2 bytes per parameter for the master instead of 4.
  EXPECT_EQ(oa.state_tensors().size(), ob.state_tensors().size());
}

TEST(AdamW, Bf16MomentsAreTheFp32UpdateWithRoundedMoments) {
  // Reference: the AdamW formula in fp32, in the kernels' order of operations, where the new
  // moments update the weight as computed and are then stored rounded to bf16 (nearest even),
  // which is what the next step reads (exp_avg_dtype / exp_avg_sq_dtype bf16).
  auto ctx = ops::Context::cpu();
  NamedTensor w = param("w", {0.5f, -1.25f, 3.f, 1e-3f, -7.f}, false);
  AdamWConfig cfg;
  cfg.beta1 = 0.9f;
  cfg.beta2 = 0.95f;
  cfg.clip_grad = 0.f;
  cfg.exp_avg_dtype = DType::BF16;
  cfg.exp_avg_sq_dtype = DType::BF16;
  AdamW opt(ctx, {&w}, cfg);
  std::vector<float> p = {0.5f, -1.25f, 3.f, 1e-3f, -7.f}, m(5, 0.f), v(5, 0.f);
  auto bf16 = [](float x) { return bf16_bits_to_fp32(fp32_to_bf16_bits(x)); };
  const double lr = 1e-2, wd = 0.1;
  int64_t rounded = 0;  // moments whose bf16 differs from their fp32 value: the test is not vacuous
  for (int s = 1; s <= 6; ++s) {
    set_step_grads(w, s);
    // The hyper-parameters as the optimizer holds them: fp32, bias corrections in double.
    const double lr32 = static_cast<float>(lr), b1 = 0.9f, b2 = 0.95f;
    const float step_size = static_cast<float>(lr32 / (1.0 - std::pow(b1, s)));
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(b2, s)));
    const float decay = 1.f - static_cast<float>(lr) * static_cast<float>(wd);
    for (int i = 0; i < 5; ++i) {
      const float g = w.grad.data<float>()[i];
      const float mi = 0.9f * m[i] + (1.f - 0.9f) * g, vi = 0.95f * v[i] + (1.f - 0.95f) * g * g;
      p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + 1e-8f);
      rounded += bf16(mi) != mi;
      m[i] = bf16(mi);
      v[i] = bf16(vi);
    }
    opt.step(lr, wd);
  }
  const NamedTensorList st = opt.state_tensors();
  EXPECT_EQ(state_of(st, "w.exp_avg").dtype(), DType::BF16);
  EXPECT_EQ(state_of(st, "w.exp_avg_sq").dtype(), DType::BF16);
  // The CPU kernels may contract into FMAs (last fp32 bits); an update from the rounded moment
  // instead of the computed one, or an unrounded moment, would be 2^-9 of the update away.
  const std::vector<float> got = w.value.to_float_vector(), gm = state_of(st, "w.exp_avg").to_float_vector(),
                           gv = state_of(st, "w.exp_avg_sq").to_float_vector();
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(got[i], p[i], 2e-7 * std::max(1.f, std::abs(p[i]))) << i;
    EXPECT_EQ(bf16(gm[i]), gm[i]) << i;  // stored as bf16
    EXPECT_NEAR(gm[i], m[i], std::abs(m[i]) / 128) << i;
    EXPECT_NEAR(gv[i], v[i], std::abs(v[i]) / 128) << i;
  }
  EXPECT_GT(rounded, 10);
}

TEST(AdamW, StateMovesBetweenPrecisionAwareAndPlainRuns) {
  // A checkpoint of a precision-aware run (bf16 moments, remainders) loads into a plain one
  // (fp32 moments and masters) and back: the masters are fp32 in the file either way, and a
  // precision-aware run resumed from its own state repeats the next steps bit for bit.
  auto ctx = ops::Context::cpu();
  AdamWConfig aware;
  aware.store_param_remainders = true;
  aware.exp_avg_dtype = DType::BF16;
  aware.exp_avg_sq_dtype = DType::BF16;
  NamedTensor a = bf16_param("w", 257, false);
  AdamW oa(ctx, {&a}, aware);
  for (int s = 0; s < 4; ++s) {
    set_step_grads(a, s);
    oa.step(1e-2, 0.1);
  }
  const NamedTensorList saved = oa.state_tensors();
  ASSERT_EQ(state_of(saved, "w.master").dtype(), DType::F32);
  NamedTensorList file;  // state_tensors() is live state: the checkpoint is a copy
  for (const auto& [name, t] : saved) file.emplace_back(name, t.clone());

  NamedTensor p = bf16_param("w", 257, false), r = bf16_param("w", 257, false);
  p.value.copy_from(a.value);
  r.value.copy_from(a.value);
  AdamW plain(ctx, {&p}, AdamWConfig{}), resumed(ctx, {&r}, aware);
  plain.load_state_tensors(file);
  resumed.load_state_tensors(file);
  const NamedTensorList ps = plain.state_tensors();
  EXPECT_EQ(std::memcmp(state_of(ps, "w.master").raw(), state_of(file, "w.master").raw(), 257 * 4), 0);
  EXPECT_EQ(state_of(ps, "w.exp_avg").dtype(), DType::F32);
  EXPECT_EQ(state_of(ps, "w.exp_avg").to_float_vector(), state_of(file, "w.exp_avg").to_float_vector());
  EXPECT_EQ(std::memcmp(r.value.raw(), a.value.raw(), r.value.nbytes()), 0);
  for (int s = 4; s < 7; ++s) {
    for (NamedTensor* x : {&a, &r}) set_step_grads(*x, s);
    oa.step(1e-2, 0.1);
    resumed.step(1e-2, 0.1);
  }
  EXPECT_EQ(std::memcmp(r.value.raw(), a.value.raw(), r.value.nbytes()), 0);
  EXPECT_EQ(std::memcmp(state_of(resumed.state_tensors(), "w.master").raw(),
                        state_of(oa.state_tensors(), "w.master").raw(), 257 * 4), 0);

  // And back: a plain run's state into a precision-aware one.
  AdamW back(ctx, {&r}, aware);
  back.load_state_tensors(ps);
  EXPECT_EQ(std::memcmp(state_of(back.state_tensors(), "w.master").raw(), state_of(ps, "w.master").raw(), 257 * 4), 0);
}

TEST(AdamW, RefusesMomentDtypesItDoesNotHold) {
  auto ctx = ops::Context::cpu();
  NamedTensor w = param("w", {1.f}, false);
  AdamWConfig cfg;
  cfg.exp_avg_sq_dtype = DType::F16;
  try {
    AdamW opt(ctx, {&w}, cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exp_avg_sq_dtype"), std::string::npos) << e.what();
  }
}

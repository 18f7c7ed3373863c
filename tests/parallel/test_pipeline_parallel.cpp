// Pipeline parallelism of the Llama model (train/pipelined_model.h), with real MPI ranks
// (ctest runs it as `mpirun -np 2` and `-np 4`, tests/parallel/tests.cmake).
//
// Parallel invariance: every rank also builds the single-rank DecoderModel from the same
// seed and runs the same micro-batches through its plain forward_backward; the pipelined
// model (PP2 1F1B, PP2 interleaved, and at 4 ranks PP4, PP2 x TP2 (+SP), PP2 x DP2,
// interleaved PP2 x TP2) must give the same init (bit for bit), the same summed loss and
// token count on every pp rank, the same forward_only loss, and the same gradient for
// every parameter (within 1e-5 relative to the tensor's largest entry), gathered by name
// onto rank 0 (so a stage that holds the wrong layers, or a parameter nobody holds, fails).
// Tied embeddings: both copies end with the full gradient. A few AdamW steps (clipping
// active) keep losses, weights and the tied copies equal to the single-rank run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "../test_util.h"
#include "core/rng.h"
#include "model/decoder.h"
#include "optim/adamw.h"
#include "parallel/gather_to_root.h"
#include "parallel/mpi_communicator.h"
#include "mpi_test_main.h"
#include "parallel/parallel_dims.h"
#include "parallel/process_groups.h"
#include "parallel/tensor_parallel.h"
#include "pipeline/pipelined_model.h"

using namespace primus;
using namespace primus::parallel;
using primus::pipeline::PipelinedModel;
using primus::pipeline::PipelineOptions;

namespace {

using mpi_test::world;

constexpr int64_t kVocab = 100, kPaddedVocab = 128, kSeq = 16;
constexpr double kTol = 1e-5;

ModelConfig tiny_config(bool untied = true) {
  ModelConfig c = test::tiny_llama(
      {.name = "llama_pp_tiny", .layers = 4, .hidden = 32, .ffn = 64, .vocab = kVocab, .padded_vocab = kPaddedVocab});
  c.untie_embeddings_and_output_weights = untied;
  c.init_method_std = 0.1;  // large enough that every layer shapes the loss of a tiny model
  return c;
}

// B sequences of kSeq tokens; a few masked positions and one ignored (negative) label.
data::Batch make_batch(int64_t B, uint64_t seed) {
  data::Batch b{Tensor::empty({B, kSeq}, DType::I32), Tensor::empty({B, kSeq}, DType::I32),
                Tensor::empty({B, kSeq}, DType::F32)};
  CounterRng rng(seed, 91);
  for (int64_t i = 0; i < B * kSeq; ++i) {
    b.tokens.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(2 * i) % kVocab);
    b.labels.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(2 * i + 1) % kVocab);
    b.loss_mask.data<float>()[i] = (i % 7 == 5) ? 0.f : 1.f;
  }
  b.labels.data<int32_t>()[3] = -1;
  return b;
}

std::vector<data::Batch> make_micro_batches(int M, uint64_t seed) {
  std::vector<data::Batch> v;
  for (int m = 0; m < M; ++m) v.push_back(make_batch(2, seed * 1000 + static_cast<uint64_t>(m)));
  return v;
}

double mask_sum(const std::vector<data::Batch>& mbs) {
  double s = 0;
  for (const auto& b : mbs)
    for (int64_t i = 0; i < b.tokens.numel(); ++i)
      if (b.labels.data<int32_t>()[i] >= 0) s += b.loss_mask.data<float>()[i];
  return s;
}

using mpi_test::rel;
using mpi_test::rel_err;

struct Layout {
  int tp = 1, pp = 1, dp = 0, v = 1;
  bool sp = false, untied = true;
  Recompute recompute = Recompute::None;
  std::string name() const {
    return "PP" + std::to_string(pp) + (v > 1 ? " v" + std::to_string(v) : "") +
           (tp > 1 ? " TP" + std::to_string(tp) : "") + (sp ? "+SP" : "") +
           (dp > 1 ? " DP" + std::to_string(dp) : "") + (untied ? "" : " tied") +
           (recompute != Recompute::None ? " recompute" + std::to_string(static_cast<int>(recompute)) : "");
  }
};

std::unique_ptr<ProcessGroups> make_groups(const Layout& l) {
  ParallelSizes s;
  s.tp = l.tp;
  s.pp = l.pp;
  s.dp = l.dp;
  return std::make_unique<ProcessGroups>(world(), ParallelDims::create(world().size(), s));
}

DecoderOptions model_options(const Layout& l, ProcessGroups& g) {
  DecoderOptions o;
  if (l.tp > 1) o.tensor_parallel = {&g.tp(), l.sp};
  o.recompute = l.recompute;
  o.logits_chunk_rows = 20;  // chunks that do not divide the rows
  return o;
}

// This rank's micro-batches under data parallel: dp rank d takes the d-th slice.
std::vector<data::Batch> dp_slice(const std::vector<data::Batch>& all, const ProcessGroups& g) {
  const int D = g.dims().dp(), d = g.coords().dp;
  const size_t per = all.size() / static_cast<size_t>(D);
  return {all.begin() + static_cast<std::ptrdiff_t>(per * d), all.begin() + static_cast<std::ptrdiff_t>(per * (d + 1))};
}

// Every parameter's full tensor (gathered over tp), then over pp onto rank 0 of pp. Only
// ranks with pp rank 0 get a list; the dp replicas hold the same tensors.
std::map<std::string, Tensor> gather_model(PipelinedModel& m, ProcessGroups& g, ParamField field) {
  const NamedTensorList full = gather_full_tensors(m.parameters(), g.dims().tp() > 1 ? &g.tp() : nullptr, field);
  const NamedTensorList all = gather_named_tensors_to_root(full, g.pp(), 0);
  std::map<std::string, Tensor> out;
  for (const auto& [n, t] : all) {
    EXPECT_EQ(out.count(n), 0u) << n << " gathered twice";
    out[n] = t;
  }
  return out;
}

void expect_same_tensors(const std::map<std::string, Tensor>& got, DecoderModel& ref, ParamField field, double tol,
                         const std::string& what) {
  std::set<std::string> names;
  for (NamedTensor* p : ref.parameters()) {
    names.insert(p->name);
    auto it = got.find(p->name);
    if (it == got.end()) {
      ADD_FAILURE() << what << ": no pipeline rank holds " << p->name;
      continue;
    }
    const Tensor& want = field == ParamField::Grad ? p->grad : p->value;
    if (field == ParamField::Grad) {
      double norm = 0;
      for (float x : want.to_float_vector()) norm += x * x;
      EXPECT_GT(norm, 0) << p->name;  // the comparison would be empty otherwise
    }
    if (tol == 0)
      EXPECT_EQ(it->second.to_float_vector(), want.to_float_vector()) << what << " " << p->name;
    else
      EXPECT_LE(rel_err(it->second.to_float_vector(), want.to_float_vector()), tol) << what << " " << p->name;
  }
  for (const auto& [n, t] : got) EXPECT_TRUE(names.count(n)) << what << ": unexpected tensor " << n;
}

// One step's loss and grads (and forward_only) of `l` vs the single-rank model.
void check_layout(const Layout& l, int M) {
  const std::string what = l.name();
  SCOPED_TRACE(what);
  auto g = make_groups(l);
  auto ctx = ops::Context::cpu();
  const ModelConfig cfg = tiny_config(l.untied);
  DecoderOptions ro;
  ro.logits_chunk_rows = 20;
  DecoderModel ref(cfg, ctx, ro);
  const std::vector<data::Batch> all = make_micro_batches(M, 7);
  const float w = static_cast<float>(1.0 / mask_sum(all));
  DecoderModel::StepResult want;
  ref.zero_grads();
  for (const auto& b : all) {
    const auto r = ref.forward_backward(b.tokens, b.labels, b.loss_mask, w);
    want.loss_sum += r.loss_sum;
    want.num_tokens += r.num_tokens;
  }
  double want_eval = 0;
  for (const auto& b : all) want_eval += ref.forward_only(b.tokens, b.labels, b.loss_mask).loss_sum;

  DecoderOptions o = model_options(l, *g);
  std::map<std::string, int> ready;  // grad_ready calls per parameter
  o.grad_ready = [&](NamedTensor& p) { ++ready[p.name]; };
  PipelinedModel pm(cfg, ctx, o, PipelineOptions{&g->pp(), l.v});
  ASSERT_EQ(static_cast<int>(pm.chunks().size()), l.v);

  // Init: bit for bit the single-rank init, every name held once over pp.
  const auto init = gather_model(pm, *g, ParamField::Value);
  if (g->pp().rank() == 0) expect_same_tensors(init, ref, ParamField::Value, 0, what + " init");

  const std::vector<data::Batch> mine = dp_slice(all, *g);
  pm.zero_grads();
  DecoderModel::StepResult got = pm.forward_backward(mine, w);
  pm.reduce_sequence_parallel_grads();
  pm.finish_grads();
  if (g->dims().dp() > 1) {
    for (NamedTensor* p : pm.parameters()) g->dp().all_reduce(p->grad, ReduceOp::Sum);
    got.loss_sum = g->dp().all_reduce_value(got.loss_sum);
    got.num_tokens = g->dp().all_reduce_value(got.num_tokens);
  }
  EXPECT_EQ(got.num_tokens, want.num_tokens);
  EXPECT_LE(rel(got.loss_sum, want.loss_sum), kTol) << got.loss_sum << " vs " << want.loss_sum;
  // grad_ready: once per parameter per micro-batch this rank ran backward for.
  const auto params = pm.parameters();
  EXPECT_EQ(ready.size(), params.size());
  for (NamedTensor* p : params) EXPECT_EQ(ready[p->name], static_cast<int>(mine.size())) << p->name;

  const auto grads = gather_model(pm, *g, ParamField::Grad);
  if (g->pp().rank() == 0) expect_same_tensors(grads, ref, ParamField::Grad, kTol, what + " grad");
  // The tied copy on the last stage holds the full embedding gradient too.
  for (NamedTensor* copy : pm.tied_embedding_copies()) {
    const NamedTensorList full = gather_full_tensors({copy}, l.tp > 1 ? &g->tp() : nullptr, ParamField::Grad);
    EXPECT_LE(rel_err(full[0].second.to_float_vector(), ref.parameter(copy->name).grad.to_float_vector()), kTol)
        << "tied copy";
  }
  EXPECT_EQ(pm.tied_embedding_copies().size(),
            (!l.untied && l.pp > 1 && g->coords().pp == l.pp - 1) ? 1u : 0u);

  double eval = pm.forward_only(mine).loss_sum;
  if (g->dims().dp() > 1) eval = g->dp().all_reduce_value(eval);
  EXPECT_LE(rel(eval, want_eval), kTol) << eval << " vs " << want_eval;
  EXPECT_GT(pm.activation_bytes_high_water(), 0u);
  // Memory: the micro-batch chunks alive at once. 1F1B: at most P - r on pp rank r, however
  // many micro-batches; interleaved: the warm-up forwards + 1 (all when M == P).
  const int P = l.pp, r = g->coords().pp, Ml = static_cast<int>(mine.size());
  const int bound = l.v == 1 ? std::min(P - r, Ml)
                             : (Ml == P ? Ml * l.v : std::min((P - r - 1) * 2 + (l.v - 1) * P + 1, Ml * l.v));
  EXPECT_LE(pm.num_stage_states(), static_cast<size_t>(bound)) << "pp rank " << r;
}

}  // namespace

// ---- single process -----------------------------------------------------------------------

// The whole model through the stage API is the model: forward_backward is implemented on
// it; here a manual split into two stages on ONE process, passing the hidden state by hand,
// must give the same loss and grads, and a wrong hand-over must not.
TEST(PipelineLocal, TwoStagesByHandEqualTheWholeModel) {
  auto ctx = ops::Context::cpu();
  const ModelConfig cfg = tiny_config(false);  // tied: the last stage's copy
  DecoderModel whole(cfg, ctx);
  DecoderOptions a, b;
  a.stage = {0, 3, true, false};
  b.stage = {3, 1, false, true};
  std::map<std::string, int> ready;
  a.grad_ready = b.grad_ready = [&](NamedTensor& p) { ++ready[p.name]; };
  DecoderModel first(cfg, ctx, a), last(cfg, ctx, b);
  EXPECT_EQ(first.parameters().size(), 1u + 3 * 6);
  EXPECT_EQ(last.parameters().size(), 6u + 2);  // layer 3, final norm, the tied copy
  EXPECT_EQ(last.parameters().back()->name, "embedding.word_embeddings.weight");
  EXPECT_EQ(last.parameters().front()->name, "decoder.layers.3.input_layernorm.weight");
  EXPECT_EQ(last.parameter("embedding.word_embeddings.weight").value.to_float_vector(),
            whole.parameter("embedding.word_embeddings.weight").value.to_float_vector());
  EXPECT_THROW(first.forward_backward(make_batch(1, 1).tokens, make_batch(1, 1).labels, make_batch(1, 1).loss_mask, 1.f),
               Error);

  const data::Batch batch = make_batch(2, 3);
  whole.zero_grads();
  const auto want = whole.forward_backward(batch.tokens, batch.labels, batch.loss_mask, 0.01f);
  DecoderModel::StageState s1(Device::CPU), s2(Device::CPU);
  first.zero_grads();
  last.zero_grads();
  const Tensor h = first.stage_forward(s1, batch.tokens, nullptr, nullptr, nullptr, 0.01f);
  EXPECT_EQ(h.shape(), first.stage_hidden_shape(batch.tokens));
  EXPECT_FALSE(last.stage_forward(s2, batch.tokens, &batch.labels, &batch.loss_mask, &h, 0.01f).defined());
  EXPECT_EQ(s2.result().loss_sum, want.loss_sum);  // same ops in the same order: bit for bit
  const Tensor dh = last.stage_backward(s2, nullptr);
  EXPECT_FALSE(first.stage_backward(s1, &dh).defined());
  EXPECT_THROW(first.stage_backward(s1, &dh), Error);  // backward ran already
  for (DecoderModel* m : {&first, &last})
    for (NamedTensor* p : m->parameters()) {
      EXPECT_EQ(ready[p->name], p->name.starts_with("embedding") ? 2 : 1) << p->name;  // both copies
      if (p->name.starts_with("embedding")) continue;  // the two copies' grads sum to the whole one
      EXPECT_EQ(p->grad.to_float_vector(), whole.parameter(p->name).grad.to_float_vector()) << p->name;
    }
  std::vector<float> emb = first.parameter("embedding.word_embeddings.weight").grad.to_float_vector();
  const std::vector<float> emb2 = last.parameter("embedding.word_embeddings.weight").grad.to_float_vector();
  for (size_t i = 0; i < emb.size(); ++i) emb[i] += emb2[i];
  EXPECT_LE(rel_err(emb, whole.parameter("embedding.word_embeddings.weight").grad.to_float_vector()), 1e-6);

  // Handing over a different hidden state changes the loss (the hand-over is what counts).
  DecoderModel::StageState s3(Device::CPU);
  Tensor wrong = h.clone();
  wrong.data<float>()[0] += 1.f;
  last.stage_forward(s3, batch.tokens, &batch.labels, &batch.loss_mask, &wrong, 0.01f, false);
  EXPECT_NE(s3.result().loss_sum, want.loss_sum);
}

// grad_ready on the whole model: exactly once per parameter and backward, after its grad
// is final for the micro-batch (the value seen in the callback is the value at the end).
TEST(PipelineLocal, GradReadyFiresOncePerParameterWithTheFinishedGrad) {
  auto ctx = ops::Context::cpu();
  for (bool untied : {true, false}) {
    DecoderOptions o;
    std::map<std::string, std::vector<float>> seen;
    o.grad_ready = [&](NamedTensor& p) {
      EXPECT_EQ(seen.count(p.name), 0u) << p.name << " twice";
      seen[p.name] = p.grad.to_float_vector();
    };
    DecoderModel m(tiny_config(untied), ctx, o);
    const data::Batch b = make_batch(2, 5);
    m.zero_grads();
    m.forward_backward(b.tokens, b.labels, b.loss_mask, 0.1f);
    EXPECT_EQ(seen.size(), m.parameters().size());
    for (NamedTensor* p : m.parameters()) EXPECT_EQ(seen[p->name], p->grad.to_float_vector()) << p->name;
    seen.clear();
    m.forward_only(b.tokens, b.labels, b.loss_mask);
    EXPECT_TRUE(seen.empty());
  }
}

TEST(PipelineLocal, PipelineOfOneIsThePlainLoopBitForBit) {
  auto ctx = ops::Context::cpu();
  DecoderModel ref(tiny_config(), ctx);
  PipelinedModel pm(tiny_config(), ctx, DecoderOptions{}, PipelineOptions{});
  const auto mbs = make_micro_batches(3, 2);
  double want = 0;
  ref.zero_grads();
  for (const auto& b : mbs) want += ref.forward_backward(b.tokens, b.labels, b.loss_mask, 0.02f).loss_sum;
  pm.zero_grads();
  EXPECT_EQ(pm.forward_backward(mbs, 0.02f).loss_sum, want);
  pm.finish_grads();
  for (NamedTensor* p : ref.parameters())
    EXPECT_EQ(pm.chunks()[0]->parameter(p->name).grad.to_float_vector(), p->grad.to_float_vector()) << p->name;
  EXPECT_THROW((void)PipelinedModel(tiny_config(), ctx, DecoderOptions{}, PipelineOptions{nullptr, 2}), Error);
}

// ---- multi-rank ---------------------------------------------------------------------------

TEST(PipelineParallel, GatherNamedTensorsToRoot) {
  Communicator& w = world();
  const int r = w.rank();
  NamedTensorList mine;
  Tensor a = Tensor::from_floats({1.f * r, 2.f * r, 3.f}, {3});
  Tensor b = Tensor::empty({2, 2}, DType::I32);
  for (int i = 0; i < 4; ++i) b.data<int32_t>()[i] = 10 * r + i;
  mine.emplace_back("rank" + std::to_string(r) + ".a", a);
  mine.emplace_back("rank" + std::to_string(r) + ".b", b);
  mine.emplace_back("bf16." + std::to_string(r), Tensor::from_floats({0.5f, -1.f}, {1, 2}, DType::BF16));
  mine.emplace_back("shared", Tensor::from_floats({static_cast<float>(r)}, {1}));  // the root's copy wins
  if (r == 1) mine.clear();  // a rank with nothing
  const int root = w.size() - 1;
  const NamedTensorList got = gather_named_tensors_to_root(mine, w, root);
  if (r != root) {
    EXPECT_TRUE(got.empty());
  } else {
    std::map<std::string, Tensor> m(got.begin(), got.end());
    EXPECT_EQ(got.size(), static_cast<size_t>(3 * (w.size() - 1) + 1));
    EXPECT_EQ(got.front().first, "rank0.a");  // rank order
    EXPECT_EQ(m.at("shared").to_float_vector(), std::vector<float>{0.f});  // lowest rank holding it
    for (int q = 0; q < w.size(); ++q) {
      if (q == 1) continue;
      const std::string p = "rank" + std::to_string(q);
      EXPECT_EQ(m.at(p + ".a").to_float_vector(), (std::vector<float>{1.f * q, 2.f * q, 3.f}));
      ASSERT_EQ(m.at(p + ".b").dtype(), DType::I32);
      EXPECT_EQ(m.at(p + ".b").shape(), (Shape{2, 2}));
      EXPECT_EQ(m.at(p + ".b").data<int32_t>()[3], 10 * q + 3);
      EXPECT_EQ(m.at("bf16." + std::to_string(q)).dtype(), DType::BF16);
      EXPECT_EQ(m.at("bf16." + std::to_string(q)).to_float_vector(), (std::vector<float>{0.5f, -1.f}));
    }
  }
  // The same name with another shape on two ranks is refused on the root (on a group of its
  // own: the root stops receiving early, and what it leaves unread must not reach later tests).
  auto sub = w.split(0, r, "clash");
  NamedTensorList clash{{"x", Tensor::zeros({static_cast<int64_t>(r + 1)}, DType::F32)}};
  if (r == 0)
    EXPECT_THROW(gather_named_tensors_to_root(clash, *sub, 0), Error);
  else
    gather_named_tensors_to_root(clash, *sub, 0);
  w.barrier();
}

TEST(PipelineParallel, BadLayoutsAreRefusedNamingTheKey) {
  Layout l;
  l.pp = 2;
  auto g = make_groups(l);
  auto ctx = ops::Context::cpu();
  ModelConfig c = tiny_config();
  c.num_layers = 3;
  try {
    PipelinedModel m(c, ctx, DecoderOptions{}, PipelineOptions{&g->pp(), 1});
    ADD_FAILURE() << "expected a layout error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_layers = 3"), std::string::npos) << e.what();
  }
  PipelinedModel m(tiny_config(), ctx, DecoderOptions{}, PipelineOptions{&g->pp(), 2});
  try {  // interleaved: 3 micro-batches do not fill groups of 2
    m.forward_backward(make_micro_batches(3, 1), 1.f);
    ADD_FAILURE() << "expected a schedule error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("divisible by pipeline_model_parallel_size"), std::string::npos) << e.what();
  }
}

TEST(PipelineParallel, LossesAndGradientsMatchSingleRank) {
  const int n = world().size();
  std::vector<Layout> layouts;
  if (n == 2) {
    layouts = {{.pp = 2}, {.pp = 2, .v = 2}, {.pp = 2, .untied = false},
               {.pp = 2, .v = 2, .untied = false, .recompute = Recompute::Selective},
               {.pp = 2, .recompute = Recompute::Full}};
  } else if (n == 4) {
    layouts = {{.pp = 4}, {.pp = 4, .untied = false}, {.tp = 2, .pp = 2}, {.tp = 2, .pp = 2, .sp = true},
               {.tp = 2, .pp = 2, .v = 2, .sp = true, .untied = false}, {.pp = 2, .dp = 2},
               {.pp = 2, .dp = 2, .v = 2}};
  } else {
    GTEST_SKIP() << "runs at 2 or 4 ranks";
  }
  for (const Layout& l : layouts)
    for (int M : {4, 8}) check_layout(l, M);
}

namespace {

// `steps` AdamW steps with clipping active; returns the losses, the weights are compared by
// the caller.
AdamWConfig adam_config() {
  AdamWConfig c;
  c.eps = 1e-5f;      // see test_tensor_parallel.cpp: damps elements whose grads are fp32 noise
  c.clip_grad = 0.3f;
  return c;
}

}  // namespace

TEST(PipelineParallel, AdamWStepsMatchSingleRankAndKeepTiedCopiesEqual) {
  if (world().size() != 2) GTEST_SKIP() << "runs at 2 ranks";
  for (int v : {1, 2}) {
    Layout l{.pp = 2, .v = v, .untied = false};
    SCOPED_TRACE(l.name());
    auto g = make_groups(l);
    auto ctx = ops::Context::cpu();
    const ModelConfig cfg = tiny_config(false);
    DecoderModel ref(cfg, ctx);
    AdamW ref_opt(ctx, ref.parameters(), adam_config());
    PipelinedModel pm(cfg, ctx, DecoderOptions{}, PipelineOptions{&g->pp(), v});
    AdamW opt(ctx, pm.parameters(), adam_config());
    // The global grad norm: every parameter once (the tied copy left out), summed over pp.
    const std::vector<NamedTensor*> copies = pm.tied_embedding_copies();
    opt.set_grad_sum_of_squares([&](ops::Context& c, const std::vector<NamedTensor*>& ps) {
      std::vector<NamedTensor*> own;
      for (NamedTensor* p : ps)
        if (std::find(copies.begin(), copies.end(), p) == copies.end()) own.push_back(p);
      return grad_sum_of_squares(c, own, 0, &g->pp());
    });
    std::vector<double> want, got;
    for (int step = 0; step < 4; ++step) {
      const auto mbs = make_micro_batches(4, 50 + static_cast<uint64_t>(step));
      const float w = static_cast<float>(1.0 / mask_sum(mbs));
      ref.zero_grads();
      double loss = 0;
      for (const auto& b : mbs) loss += ref.forward_backward(b.tokens, b.labels, b.loss_mask, w).loss_sum;
      want.push_back(loss);
      const AdamW::StepInfo ri = ref_opt.step(3e-3, 0.1);
      pm.zero_grads();
      got.push_back(pm.forward_backward(mbs, w).loss_sum);
      pm.finish_grads();
      const AdamW::StepInfo pi = opt.step(3e-3, 0.1);
      if (step == 0) EXPECT_LT(ri.clip_coeff, 1.0);
      EXPECT_LE(rel(pi.grad_norm, ri.grad_norm), kTol) << "step " << step;
      EXPECT_LE(rel(got.back(), want.back()), kTol) << "step " << step;
    }
    EXPECT_NE(want.front(), want.back());
    const auto weights = gather_model(pm, *g, ParamField::Value);
    if (g->pp().rank() == 0) expect_same_tensors(weights, ref, ParamField::Value, kTol, "weights after 4 steps");
    // Both copies of the tied embedding moved identically.
    if (g->pp().rank() == 1) {
      Tensor copy = pm.tied_embedding_copies().at(0)->value;
      g->pp().send(copy, 0);
    } else {
      Tensor other = Tensor::empty(ref.parameter("embedding.word_embeddings.weight").value.shape(), DType::F32);
      g->pp().recv(other, 1);
      EXPECT_EQ(other.to_float_vector(), pm.chunks()[0]->parameter("embedding.word_embeddings.weight").value.to_float_vector());
    }
  }
}

int main(int argc, char** argv) { return mpi_test::run_all(argc, argv); }

// GRPO's round end to end on a tiny model (rl/grpo_objective.h), checked from the outside:
//   * every training row is a prompt of the round followed by a completion, and the weight its
//     tokens get from the step's hook is the advantage of THAT completion's reward (rewards
//     recomputed here from the row's own tokens, grouped by prompt), also when continuous
//     batching finishes the completions out of order and stop strings cut them;
//   * one gradient step on the objective raises the probability of what the reward prefers
//     (the sign of the whole path: advantages -> hook weights -> model gradient).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <span>

#include "../generate/checkpoint_fixture.h"
#include "data/tokenizer/tokenizer.h"
#include "infer/cached_decoder.h"
#include "model/decoder.h"
#include "parallel/single_process_communicator.h"
#include "rl/grpo_objective.h"
#include "rl/rewards.h"
#include "rl/stop_strings.h"

using namespace primus;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<data::Tokenizer> chatml() {
  const fs::path dir = fs::path(PRIMUS_SOURCE_DIR) / "tests/data/posttrain/chatml_bytes";
  return data::make_tokenizer("HuggingFaceTokenizer", (dir / "tokenizer.json").string(), 259);
}

ModelConfig tiny_for(const data::Tokenizer& tok) {
  ModelConfig c = test_generate::tiny_gqa();
  c.vocab_size = tok.vocab_size();
  c.padded_vocab_size = (c.vocab_size + 63) / 64 * 64;
  return c;
}

std::vector<rl::RlPrompt> make_prompts(data::Tokenizer& tok, const std::vector<std::string>& texts) {
  std::vector<rl::RlPrompt> out;
  for (const std::string& t : texts) {
    rl::RlPrompt p;
    p.text = t;
    p.ids = tok.encode(t, data::SpecialTokens::kNone);
    p.record = {{"answer", "x"}};
    p.where = "test:" + std::to_string(out.size() + 1);
    out.push_back(p);
  }
  return out;
}

// One row of a micro-batch as the model is trained on it.
struct TrainedRow {
  std::vector<int32_t> prompt, completion;
  std::vector<float> weights;  // hook weight of each completion token
  int64_t prompt_index = -1;   // data::Batch::samples
};

// The rows of the round's micro-batches with the hook weights for token log-probs of 0 (ratio
// 1): the weight of a completion token is then advantage * n_t * scale.
std::vector<TrainedRow> trained_rows(rl::GrpoObjective& obj, const std::vector<data::Batch>& batches, double scale) {
  const std::vector<LossWeightsHook>& hooks = obj.hooks(scale);
  EXPECT_EQ(hooks.size(), batches.size());
  std::vector<TrainedRow> rows;
  for (size_t m = 0; m < batches.size(); ++m) {
    const data::Batch& b = batches[m];
    const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
    const std::vector<float> w = hooks[m](std::vector<float>(static_cast<size_t>(B * T), 0.f));
    for (int64_t r = 0; r < B; ++r) {
      TrainedRow row;
      row.prompt_index = b.samples.at(static_cast<size_t>(r));
      const int32_t* tok = b.tokens.data<int32_t>() + r * T;
      const int32_t* lab = b.labels.data<int32_t>() + r * T;
      const float* mask = b.loss_mask.data<float>() + r * T;
      int64_t first = -1, last = -1;  // the masked positions: [first, last]
      for (int64_t j = 0; j < T; ++j) {
        if (mask[j] == 0.f) {
          EXPECT_EQ(w[static_cast<size_t>(r * T + j)], 0.f) << "an unmasked token got a weight";
          continue;
        }
        if (first < 0) first = j;
        EXPECT_EQ(j, last < 0 ? first : last + 1) << "the loss mask of a row is not one span";
        last = j;
        EXPECT_EQ(lab[j], tok[j + 1]) << "the label of position " << j << " is not the next token";
        row.completion.push_back(lab[j]);
        row.weights.push_back(w[static_cast<size_t>(r * T + j)]);
      }
      EXPECT_GE(first, 0) << "a row without completion tokens";
      // The loss starts at the prompt's last token (it predicts the first completion token).
      row.prompt.assign(tok, tok + first + 1);
      for (int64_t j = last + 2; j < T; ++j) EXPECT_EQ(lab[j], -1) << "a label past the completion";
      rows.push_back(row);
    }
  }
  return rows;
}

}  // namespace

// Rewards that differ between the completions of a prompt (a regex on the text and the
// length), completions that finish out of order (2 cache slots for 16 completions: a finished
// one frees its slot for the next), a stop string: each trained row's weight must be the
// advantage of the reward of the row's own tokens, in its own prompt's group.
TEST(GrpoRollouts, EveryRowCarriesTheAdvantageOfItsOwnCompletion) {
  std::unique_ptr<data::Tokenizer> tok = chatml();
  const ModelConfig c = tiny_for(*tok);
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions dopt;
  dopt.seed = 5;
  DecoderModel model(c, ctx, dopt);
  const std::vector<rl::RlPrompt> prompts =
      make_prompts(*tok, {"Shift abcd", "a", "Reverse something rather longer", "xyz", "Shift q", "Copy hello there"});
  rl::GrpoOptions o;
  o.num_generations = 4;
  o.max_prompt_length = 40;
  o.max_completion_length = 8;
  o.sampling.temperature = 1.0f;
  o.stop_strings = {"a", "e", "i", "o", "u", "y"};
  o.rewards.funcs = {"format", "overlong"};
  o.rewards.weights = {1.0, 0.5};
  o.rewards.format_regex = "[a-m]";
  o.rewards.overlong_buffer_length = 5;
  rl::GrpoLayout layout;
  layout.global_batch = 16;  // 4 prompts x 4 completions per round
  layout.micro_batch = 4;
  layout.seq_length = 48;
  layout.seed = 21;
  // The rewards, recomputed from the tokens (and the scale the advantages use), as the reader
  // of docs/RL.md expects them.
  rl::RewardOptions ro = o.rewards;
  ro.max_completion_length = o.max_completion_length;
  rl::RewardFunctions rewards(ro);
  // Stop tokens: the template's, and enough others (digits, capitals) that the untrained model
  // draws them often: the completions end at different steps and leave their slots out of order.
  std::vector<int32_t> stops = {tok->token_to_id("<|im_end|>"), tok->eod()};
  for (const char* s : {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "Q", "X", "Z", "K", "J", "W", "V", "B"})
    stops.push_back(tok->encode(s, data::SpecialTokens::kNone).at(0));
  auto dp = parallel::make_single_process_communicator(Device::CPU, "dp");
  const rl::GrpoObjective::WeightsSource weights = [&] { return infer::weights_of(model); };

  infer::CachedDecoder probe(c, ctx, infer::weights_of(model));
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.ids.size()));
  const int64_t slot_bytes = (longest + o.max_completion_length - 1) * probe.cache_values_per_token() * 4;
  for (const int64_t memory : {int64_t{0}, 2 * slot_bytes}) {  // one slot per completion; 2 slots
    o.generation_kv_cache_memory = memory;
    rl::GrpoObjective obj(o, prompts, *tok, stops, layout);
    int64_t varied_groups = 0, cut_rows = 0, stopped_rows = 0;
    for (int64_t it = 0; it < 3; ++it) {  // three rounds
      const std::vector<data::Batch>& batches = obj.batches(it, c, weights, nullptr, ctx, *dp);
      const double scale = 3.0;
      const std::vector<TrainedRow> rows = trained_rows(obj, batches, scale);
      ASSERT_EQ(rows.size(), 16u);
      double tokens = 0;
      for (const TrainedRow& r : rows) tokens += static_cast<double>(r.completion.size());
      std::vector<rl::Completion> scored;
      for (const TrainedRow& r : rows) {
        ASSERT_GE(r.prompt_index, 0);
        ASSERT_LT(r.prompt_index, static_cast<int64_t>(prompts.size()));
        const rl::RlPrompt& p = prompts[static_cast<size_t>(r.prompt_index)];
        EXPECT_EQ(r.prompt, p.ids) << "a row's prompt tokens are not those of its prompt";
        // The completion's text as the reward sees it: cut before a stop string (the cut
        // keeps the token that completes it), or without its stop token.
        std::vector<int32_t> ids = r.completion;
        const bool ends_with_stop = std::find(stops.begin(), stops.end(), ids.back()) != stops.end();
        const rl::StopCut cut = rl::cut_at_stop_string(*tok, ids, o.stop_strings);
        std::string text;
        if (cut.tokens != std::string::npos) {
          EXPECT_EQ(cut.tokens, ids.size()) << "tokens past a stop string are trained";
          text = cut.text;
          ++cut_rows;
        } else {
          text = tok->decode(std::span<const int32_t>(ids.data(), ids.size() - (ends_with_stop ? 1 : 0)));
        }
        if (ends_with_stop) {
          ++stopped_rows;
          EXPECT_EQ(std::count_if(ids.begin(), ids.end(),
                                  [&](int32_t t) { return std::find(stops.begin(), stops.end(), t) != stops.end(); }),
                    1)
              << "a token after the stop token is trained";
        }
        const bool truncated = !ends_with_stop && cut.tokens == std::string::npos;
        if (truncated) EXPECT_EQ(static_cast<int64_t>(ids.size()), o.max_completion_length);
        scored.push_back({&p, text, static_cast<int64_t>(ids.size()), truncated});
      }
      const std::vector<double> r = rewards.combine(rewards.score(scored));
      // The rows come as the round's groups: G consecutive rows of one prompt.
      for (size_t g0 = 0; g0 < rows.size(); g0 += 4) {
        bool varied = false;
        for (size_t i = g0; i < g0 + 4; ++i) {
          EXPECT_EQ(rows[i].prompt_index, rows[g0].prompt_index) << "a group mixes prompts";
          varied = varied || r[i] != r[g0];
        }
        varied_groups += varied ? 1 : 0;
      }
      const std::vector<double> adv = rl::grpo_advantages(r, 4, rl::RewardScaling::Group);
      for (size_t i = 0; i < rows.size(); ++i)
        for (float w : rows[i].weights)  // dapo: n_t = 1 / (completion tokens of the batch)
          EXPECT_NEAR(w, adv[i] / tokens * scale, 1e-6 * (1 + std::fabs(adv[i])))
              << "memory " << memory << " round " << it << " row " << i << ": reward " << r[i];
    }
    EXPECT_GE(varied_groups, 6) << "the rewards hardly differ within groups: the test checks little";
    EXPECT_GE(cut_rows, 3) << "few completions were cut by the stop string";
    EXPECT_GE(stopped_rows, 8) << "few completions drew a stop token: they finish in order";
    std::printf("memory %lld: %lld groups with varied rewards, %lld rows cut by a stop string, %lld by a stop token\n",
                static_cast<long long>(memory), static_cast<long long>(varied_groups), static_cast<long long>(cut_rows),
                static_cast<long long>(stopped_rows));
  }
}

namespace {

// Probability mass of the ids whose text matches `first` at the first completion position of
// each prompt (softmax over the tokenizer's ids of the logits after the prompt).
std::vector<double> first_token_mass(DecoderModel& model, const std::vector<rl::RlPrompt>& prompts,
                                     const std::vector<bool>& preferred) {
  std::vector<double> out;
  for (const rl::RlPrompt& p : prompts) {
    const auto T = static_cast<int64_t>(p.ids.size());
    Tensor tokens = Tensor::empty({1, T}, DType::I32);
    std::copy(p.ids.begin(), p.ids.end(), tokens.data<int32_t>());
    const Tensor logits = model.logits(tokens);  // (1, T, V)
    const int64_t V = logits.size(2);
    const float* z = logits.data<float>() + (T - 1) * V;
    const auto n = static_cast<int64_t>(preferred.size());
    double zmax = -INFINITY, total = 0, mass = 0;
    for (int64_t v = 0; v < n; ++v) zmax = std::max(zmax, static_cast<double>(z[v]));
    for (int64_t v = 0; v < n; ++v) {
      const double e = std::exp(static_cast<double>(z[v]) - zmax);
      total += e;
      if (preferred[static_cast<size_t>(v)]) mass += e;
    }
    out.push_back(mass / total);
  }
  return out;
}

}  // namespace

// One round, one plain gradient step on the objective (the trainer's path: the hooks of
// GrpoObjective through DecoderModel::forward_backward): the reward prefers completions that
// start with a lower-case letter, so the step must raise the probability of such a first token
// for the prompts (and the step against the gradient must lower it: the change is the step's,
// not noise).
TEST(GrpoRollouts, OneStepRaisesTheProbabilityOfWhatTheRewardPrefers) {
  std::unique_ptr<data::Tokenizer> tok = chatml();
  const ModelConfig c = tiny_for(*tok);
  const std::vector<rl::RlPrompt> prompts = make_prompts(*tok, {"Shift abcd", "Copy hello", "xyz", "Reverse it"});
  std::vector<bool> preferred(static_cast<size_t>(tok->vocab_size()), false);
  for (char ch = 'a'; ch <= 'z'; ++ch) preferred[static_cast<size_t>(tok->encode(std::string(1, ch)).at(0))] = true;
  rl::GrpoOptions o;
  o.num_generations = 32;
  o.max_prompt_length = 16;
  o.max_completion_length = 3;
  o.sampling.temperature = 1.0f;
  o.rewards.funcs = {"format"};
  o.rewards.format_regex = "^[a-z]";
  rl::GrpoLayout layout;
  layout.global_batch = 128;  // the 4 prompts x 32 completions
  layout.micro_batch = 32;
  layout.seq_length = 24;
  layout.seed = 8;
  const std::vector<int32_t> stops = {tok->token_to_id("<|im_end|>")};
  auto dp = parallel::make_single_process_communicator(Device::CPU, "dp");
  for (const rl::GrpoLossType type : {rl::GrpoLossType::Dapo, rl::GrpoLossType::Grpo, rl::GrpoLossType::DrGrpo}) {
    std::vector<double> change;  // Σ over prompts of the preferred mass's change, per step sign
    for (const double sign : {1.0, -1.0}) {
      ops::Context ctx = ops::Context::cpu();
      DecoderOptions dopt;
      dopt.seed = 4;
      DecoderModel model(c, ctx, dopt);
      o.loss.loss_type = type;
      rl::GrpoObjective obj(o, prompts, *tok, stops, layout);
      const std::vector<double> before = first_token_mass(model, prompts, preferred);
      const std::vector<data::Batch>& batches =
          obj.batches(0, c, [&] { return infer::weights_of(model); }, nullptr, ctx, *dp);
      const std::vector<LossWeightsHook>& hooks = obj.hooks(1.0);
      model.zero_grads();
      for (size_t m = 0; m < batches.size(); ++m) {
        MicroBatchExtras extras;
        extras.loss_weights = &hooks[m];
        model.forward_backward(batches[m].tokens, batches[m].labels, batches[m].loss_mask, 1.f, 0.f, extras);
      }
      const double lr = 0.5;
      for (NamedTensor* p : model.parameters()) {
        float* v = p->value.data<float>();
        const float* g = p->grad.data<float>();
        for (int64_t i = 0; i < p->value.numel(); ++i) v[i] -= static_cast<float>(sign * lr * g[i]);
      }
      const std::vector<double> after = first_token_mass(model, prompts, preferred);
      double d = 0;
      for (size_t i = 0; i < prompts.size(); ++i) d += after[i] - before[i];
      change.push_back(d);
      if (sign > 0)
        for (size_t i = 0; i < prompts.size(); ++i)
          EXPECT_GT(after[i], before[i]) << rl::grpo_loss_type_name(type) << ": prompt '" << prompts[i].text
                                         << "': the preferred first tokens' mass fell from " << before[i] << " to "
                                         << after[i];
    }
    EXPECT_GT(change[0], 0.0) << rl::grpo_loss_type_name(type);
    EXPECT_LT(change[1], 0.0) << rl::grpo_loss_type_name(type) << ": the step against the gradient raised it too";
    std::printf("%s: preferred mass summed over the prompts: %+.4f along the gradient step, %+.4f against it\n",
                rl::grpo_loss_type_name(type), change[0], change[1]);
  }
}

#include "rl/grpo_objective.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "core/strings.h"
#include "infer/cached_decoder.h"
#include "infer/generate.h"
#include "rl/stop_strings.h"
#include "pipeline/pipelined_model.h"

namespace primus::rl {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GrpoObjective::GrpoObjective(GrpoOptions options, std::vector<RlPrompt> prompts, data::Tokenizer& tokenizer,
                             std::vector<int32_t> stop_ids, GrpoLayout layout)
    : o_(std::move(options)), prompts_(std::move(prompts)), tok_(tokenizer), stop_ids_(std::move(stop_ids)),
      layout_(layout) {
  const int64_t G = o_.num_generations;
  PRIMUS_CHECK(G >= 2, "num_generations = {}: GRPO compares completions of one prompt, at least 2 are needed", G);
  PRIMUS_CHECK(layout_.global_batch % G == 0,
               "global_batch_size = {} (completions per step) is not a multiple of num_generations = {}",
               layout_.global_batch, G);
  const int64_t P = layout_.global_batch / G;
  PRIMUS_CHECK(P % layout_.dp_size == 0,
               "GRPO: the {} prompts of a step (global_batch_size {} / num_generations {}) do not split over {} "
               "data-parallel ranks (each rank samples whole groups): use a global_batch_size that is a multiple of "
               "num_generations x {}",
               P, layout_.global_batch, G, layout_.dp_size, layout_.dp_size);
  PRIMUS_CHECK(o_.num_iterations >= 1, "num_iterations must be >= 1, got {}", o_.num_iterations);
  PRIMUS_CHECK(o_.max_completion_length >= 1, "max_completion_length must be >= 1, got {}", o_.max_completion_length);
  PRIMUS_CHECK(o_.max_prompt_length + o_.max_completion_length <= layout_.seq_length,
               "max_prompt_length {} + max_completion_length {} = {} does not fit seq_length {}: each training row "
               "holds a prompt and its completion; raise seq_length or lower the lengths",
               o_.max_prompt_length, o_.max_completion_length, o_.max_prompt_length + o_.max_completion_length,
               layout_.seq_length);
  PRIMUS_CHECK(!prompts_.empty(), "GRPO: the prompt set is empty");
  infer::validate(o_.sampling);
  PRIMUS_CHECK(!o_.sampling.greedy(), "GRPO samples: temperature must be > 0 (the completions of a group must differ)");
  o_.loss.max_completion_length = o_.max_completion_length;
  o_.rewards.max_completion_length = o_.max_completion_length;
  rewards_ = std::make_unique<RewardFunctions>(o_.rewards);
}

GrpoObjective::~GrpoObjective() = default;

std::vector<int64_t> GrpoObjective::round_prompts(int64_t round) const {
  const auto n = static_cast<int64_t>(prompts_.size());
  const int64_t P = prompts_per_round();
  std::vector<int64_t> out;
  std::vector<int64_t> order;
  int64_t order_epoch = -1;
  const CounterRng rng(layout_.seed, stream_id("grpo.prompts"));
  for (int64_t k = round * P; k < (round + 1) * P; ++k) {
    const int64_t epoch = k / n;
    if (epoch != order_epoch) {  // Fisher-Yates shuffle of epoch `epoch`
      order.resize(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), 0);
      for (int64_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<int64_t>(rng.bits64(static_cast<uint64_t>(epoch * n + i)) % static_cast<uint64_t>(i + 1));
        std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
      }
      order_epoch = epoch;
    }
    out.push_back(order[static_cast<size_t>(k % n)]);
  }
  return out;
}

void GrpoObjective::new_round(int64_t round, const ModelConfig& config, const WeightsSource& weights,
                              pipeline::PipelinedModel* reference, ops::Context& ctx, parallel::Communicator& dp) {
  const int64_t G = o_.num_generations, P = prompts_per_round(), Pl = P / layout_.dp_size;
  const int64_t first_prompt = layout_.dp_rank * Pl;  // this rank's first prompt slot in the round
  const std::vector<int64_t> chosen = round_prompts(round);

  // ---- 1. sample G completions of each of this rank's prompts ----
  std::vector<std::vector<int32_t>> gen_prompts;
  std::vector<const RlPrompt*> owner;
  infer::GenerateOptions go;
  go.max_new_tokens = o_.max_completion_length;
  go.sampling = o_.sampling;
  go.sampling.seed = CounterRng(layout_.seed, stream_id("grpo.round")).bits64(static_cast<uint64_t>(round));
  go.stop_ids = stop_ids_;
  go.vocab_limit = tok_.vocab_size();
  go.keep_entropy = true;
  for (int64_t p = 0; p < Pl; ++p) {
    const RlPrompt& pr = prompts_[static_cast<size_t>(chosen[static_cast<size_t>(first_prompt + p)])];
    for (int64_t g = 0; g < G; ++g) {
      gen_prompts.push_back(pr.ids);
      owner.push_back(&pr);
      go.sample_ids.push_back(static_cast<uint64_t>((first_prompt + p) * G + g));
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  infer::GenerateResult gen;
  {
    infer::CachedDecoder decoder(config, ctx, weights());
    if (rollout_cache_ == nullptr) {
      // Once per run, for the longest prompt of the set: every round's rollouts fit and reuse it.
      int64_t longest = 1;
      for (const RlPrompt& pr : prompts_) longest = std::max<int64_t>(longest, static_cast<int64_t>(pr.ids.size()));
      infer::KvCacheBudget budget;
      budget.memory_bytes = o_.generation_kv_cache_memory;
      budget.memory_key = "generation_kv_cache_memory";
      const infer::KvCachePlan plan =
          infer::plan_kv_cache(decoder.cache_values_per_token(), decoder.dtype(), longest + o_.max_completion_length - 1,
                               static_cast<int64_t>(gen_prompts.size()), budget);
      rollout_cache_ = std::make_unique<infer::KvCache>(decoder.new_cache(plan.slots, plan.max_len));
    }
    gen = infer::generate(decoder, gen_prompts, go, *rollout_cache_);
  }
  last_generation_s_ = seconds_since(t0);

  // ---- 2. rewards, advantages, rows ----
  const size_t B = gen_prompts.size();
  std::vector<std::vector<int32_t>> completion(B);
  std::vector<Completion> scored(B);
  double truncated = 0, entropy_sum = 0, gen_tokens = 0;
  for (size_t i = 0; i < B; ++i) {
    std::vector<int32_t> ids = gen.tokens[i];
    bool stopped = gen.finish_reasons[i] == "stop";
    std::string text;
    const StopCut cut = cut_at_stop_string(tok_, ids, o_.stop_strings);
    if (cut.tokens != std::string::npos) {
      ids.resize(cut.tokens);
      text = cut.text;
      stopped = true;
    } else {
      const bool ends_with_stop = stopped && !ids.empty();
      text = tok_.decode(std::span<const int32_t>(ids.data(), ids.size() - (ends_with_stop ? 1 : 0)));
    }
    scored[i] = Completion{owner[i], text, static_cast<int64_t>(ids.size()), !stopped};
    truncated += stopped ? 0 : 1;
    entropy_sum += gen.entropy_sums[i];
    gen_tokens += static_cast<double>(gen.tokens[i].size());
    completion[i] = std::move(ids);
  }
  const size_t F = rewards_->names().size();
  const std::vector<double> local_scores = rewards_->score(scored);
  // The global batch's scores and lengths on every rank (zeros elsewhere, summed over dp).
  const size_t Bg = static_cast<size_t>(P * G), off = static_cast<size_t>(first_prompt * G);
  std::vector<double> all(Bg * (F + 1), 0.0);
  for (size_t i = 0; i < B; ++i) {
    for (size_t f = 0; f < F; ++f) all[(off + i) * F + f] = local_scores[i * F + f];
    all[Bg * F + off + i] = static_cast<double>(completion[i].size());
  }
  all = dp.all_reduce_values(std::move(all));
  const std::vector<double> scores(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(Bg * F));
  const std::vector<double> rewards = rewards_->combine(scores);
  const std::vector<double> adv = grpo_advantages(rewards, G, o_.scale_rewards);
  global_sequences_ = static_cast<double>(Bg);
  global_tokens_ = 0;
  double max_len = 0;
  for (size_t i = 0; i < Bg; ++i) {
    global_tokens_ += all[Bg * F + i];
    max_len = std::max(max_len, all[Bg * F + i]);
  }

  // Round statistics (global).
  {
    double mean = 0, zero_std_groups = 0;
    for (double r : rewards) mean += r;
    mean /= static_cast<double>(Bg);
    double var = 0;
    for (double r : rewards) var += (r - mean) * (r - mean);
    for (size_t g0 = 0; g0 < Bg; g0 += static_cast<size_t>(G)) {
      bool same = true;
      for (size_t i = 1; i < static_cast<size_t>(G); ++i) same = same && rewards[g0 + i] == rewards[g0];
      zero_std_groups += same ? 1 : 0;
    }
    const std::vector<double> local = dp.all_reduce_values({truncated, entropy_sum, gen_tokens, last_generation_s_},
                                                           parallel::ReduceOp::Sum);
    round_stats_.clear();
    round_stats_.emplace_back("reward", mean);
    round_stats_.emplace_back("reward_std", Bg > 1 ? std::sqrt(var / static_cast<double>(Bg - 1)) : 0.0);
    for (size_t f = 0; f < F; ++f) {
      double s = 0;
      for (size_t i = 0; i < Bg; ++i) s += scores[i * F + f];
      round_stats_.emplace_back("rewards/" + rewards_->names()[f], s / static_cast<double>(Bg));
    }
    round_stats_.emplace_back("frac_reward_zero_std", zero_std_groups / static_cast<double>(P));
    round_stats_.emplace_back("completions/mean_length", global_tokens_ / static_cast<double>(Bg));
    round_stats_.emplace_back("completions/max_length", max_len);
    round_stats_.emplace_back("completions/clipped_ratio", local[0] / static_cast<double>(Bg));
    round_stats_.emplace_back("entropy", local[1] / std::max(1.0, local[2]));
    const double gen_s = local[3] / static_cast<double>(layout_.dp_size);  // mean over ranks
    round_stats_.emplace_back("time/generation_s", gen_s);
    round_stats_.emplace_back("tokens_per_s/generation", local[2] / std::max(gen_s, 1e-9));
  }

  // Rows: prompt + completion, padded to the micro-batch's longest row (rounded up to 16).
  rows_.assign(B, {});
  batches_.clear();
  const int64_t mbs = layout_.micro_batch;
  PRIMUS_CHECK(static_cast<int64_t>(B) % mbs == 0, "GRPO: {} completions on this rank do not split into micro-batches "
               "of {}", B, mbs);
  for (size_t m0 = 0; m0 < B; m0 += static_cast<size_t>(mbs)) {
    int64_t T = 0;
    for (size_t i = m0; i < m0 + static_cast<size_t>(mbs); ++i)
      T = std::max<int64_t>(T, static_cast<int64_t>(gen_prompts[i].size() + completion[i].size()));
    T = std::min(layout_.seq_length, (T + 15) / 16 * 16);
    data::Batch b;
    b.tokens = Tensor::zeros({mbs, T}, DType::I32);
    b.labels = Tensor::empty({mbs, T}, DType::I32);
    std::fill_n(b.labels.data<int32_t>(), mbs * T, -1);
    b.loss_mask = Tensor::zeros({mbs, T}, DType::F32);
    for (int64_t r = 0; r < mbs; ++r) {
      const size_t i = m0 + static_cast<size_t>(r);
      const std::vector<int32_t>& p = gen_prompts[i];
      const std::vector<int32_t>& c = completion[i];
      const auto lp = static_cast<int64_t>(p.size()), lc = static_cast<int64_t>(c.size());
      int32_t* tok = b.tokens.data<int32_t>() + r * T;
      int32_t* lab = b.labels.data<int32_t>() + r * T;
      float* mask = b.loss_mask.data<float>() + r * T;
      for (int64_t j = 0; j < lp + lc; ++j) tok[j] = j < lp ? p[static_cast<size_t>(j)] : c[static_cast<size_t>(j - lp)];
      for (int64_t j = 0; j + 1 < lp + lc; ++j) {
        lab[j] = tok[j + 1];
        mask[j] = j + 1 >= lp ? 1.f : 0.f;
      }
      rows_[i] = Row{lc, adv[off + i]};
      b.samples.push_back(chosen[static_cast<size_t>(first_prompt) + i / static_cast<size_t>(G)]);
    }
    batches_.push_back(std::move(b));
  }
  old_logps_.assign(batches_.size(), {});
  old_recorded_ = false;

  // ---- 3. the reference model's log-probs ----
  ref_logps_.assign(batches_.size(), {});
  if (o_.loss.beta != 0.0) {
    PRIMUS_CHECK(reference != nullptr, "GRPO with beta > 0 needs the reference model");
    const auto t_ref = std::chrono::steady_clock::now();
    const DecoderModel::StepResult r = reference->forward_only(batches_, /*keep_token_losses=*/true);
    last_reference_s_ = seconds_since(t_ref);
    size_t at = 0;
    for (size_t m = 0; m < batches_.size(); ++m) {
      const size_t n = static_cast<size_t>(batches_[m].tokens.numel());
      ref_logps_[m].resize(n);
      for (size_t k = 0; k < n; ++k) ref_logps_[m][k] = -r.token_losses[at + k];
      at += n;
    }
  }
}

const std::vector<data::Batch>& GrpoObjective::batches(int64_t iteration, const ModelConfig& config,
                                                       const WeightsSource& weights, pipeline::PipelinedModel* reference,
                                                       ops::Context& ctx, parallel::Communicator& dp) {
  last_generation_s_ = last_reference_s_ = 0;
  if (round_starts_at(iteration) || batches_.empty())
    new_round(iteration / o_.num_iterations, config, weights, reference, ctx, dp);
  else
    old_recorded_ = true;  // later steps of the round use the first step's log-probs
  return batches_;
}

const std::vector<LossWeightsHook>& GrpoObjective::hooks(double scale) {
  step_ = {};
  hooks_.clear();
  const bool record_old = !old_recorded_;
  const auto mbs = static_cast<size_t>(layout_.micro_batch);
  for (size_t m = 0; m < batches_.size(); ++m) {
    hooks_.push_back([this, m, mbs, scale, record_old](const std::vector<float>& token_losses) {
      const data::Batch& b = batches_[m];
      const auto T = static_cast<size_t>(b.tokens.size(1));
      PRIMUS_CHECK(token_losses.size() == mbs * T, "GRPO: {} token losses for a {} x {} micro-batch",
                   token_losses.size(), mbs, T);
      if (record_old) old_logps_[m].assign(token_losses.size(), 0.f);
      std::vector<float> w(token_losses.size(), 0.f);
      const float* mask = b.loss_mask.data<float>();
      for (size_t r = 0; r < mbs; ++r) {
        const Row& row = rows_[m * mbs + r];
        const double n_t = grpo_token_norm(o_.loss, row.completion_len, global_sequences_, global_tokens_);
        for (size_t t = 0; t < T; ++t) {
          const size_t k = r * T + t;
          if (mask[k] == 0.f) continue;
          const double logp = -static_cast<double>(token_losses[k]);
          if (record_old) old_logps_[m][k] = static_cast<float>(logp);
          const double old = record_old ? logp : static_cast<double>(old_logps_[m][k]);
          const double ref = ref_logps_[m].empty() ? logp : static_cast<double>(ref_logps_[m][k]);
          const GrpoTokenLoss l = grpo_token_loss(logp, old, ref, row.advantage, o_.loss);
          step_.objective += n_t * l.loss;
          step_.tokens += 1;
          step_.kl_sum += l.kl;
          step_.clipped_low += l.clipped_low ? 1 : 0;
          step_.clipped_high += l.clipped_high ? 1 : 0;
          w[k] = static_cast<float>(-l.dlogp * n_t * scale);  // token loss = -logp
        }
      }
      return w;
    });
  }
  return hooks_;
}

std::vector<std::pair<std::string, double>> GrpoObjective::report(parallel::Communicator& dp) const {
  const std::vector<double> v =
      dp.all_reduce_values({step_.objective, step_.tokens, step_.kl_sum, step_.clipped_low, step_.clipped_high});
  const double n = std::max(1.0, v[1]);
  std::vector<std::pair<std::string, double>> out;
  out.emplace_back("grpo loss", v[0]);
  out.insert(out.end(), round_stats_.begin(), round_stats_.end());
  if (last_generation_s_ == 0)  // a step that reuses its round's rollouts generated nothing
    for (auto& [name, value] : out)
      if (name == "time/generation_s" || name == "tokens_per_s/generation") value = 0;
  if (o_.loss.beta != 0.0) {
    out.emplace_back("kl", v[2] / n);
    out.emplace_back("time/reference_s", last_reference_s_);
  }
  out.emplace_back("clip_ratio/low_mean", v[3] / n);
  out.emplace_back("clip_ratio/high_mean", v[4] / n);
  out.emplace_back("clip_ratio/region_mean", (v[3] + v[4]) / n);
  return out;
}

}  // namespace primus::rl

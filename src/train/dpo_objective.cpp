#include "train/dpo_objective.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/safetensors.h"

namespace primus::train {

namespace {

constexpr const char* kReferenceFile = "dpo_reference_logps.safetensors";

// Completion tokens of row r (the loss mask where the label is not ignored).
double completion_tokens(const data::Batch& b, int64_t row) {
  const int64_t T = b.tokens.size(1);
  const float* mask = b.loss_mask.data<float>() + row * T;
  const int32_t* labels = b.labels.data<int32_t>() + row * T;
  double n = 0;
  for (int64_t t = 0; t < T; ++t) n += labels[t] >= 0 ? mask[t] : 0.f;
  return n;
}

// This dp rank's share of `dataset` (pairs i with (i / mb) % dp_size == dp_rank), forward only,
// summed over dp: -row_loss_sum of every pair's two rows.
std::vector<double> compute_reference(pipeline::PipelinedModel& model, const data::Dataset& dataset, int64_t mb,
                                      parallel::Communicator& dp, int dp_rank, int dp_size) {
  const int64_t n = dataset.size();
  std::vector<double> ref(static_cast<size_t>(2 * n), 0.0);
  // Every rank runs the same number of forwards (tensor-parallel peers must match); the ranks
  // past the end repeat their last batch and drop its result.
  const int64_t batches = (n + mb - 1) / mb;
  const int64_t rounds = (batches + dp_size - 1) / dp_size;
  for (int64_t k = 0; k < rounds; ++k) {
    const int64_t batch = k * dp_size + dp_rank;
    const bool real = batch < batches;
    const int64_t first = std::min(batch, batches - 1) * mb;
    std::vector<int64_t> samples;
    for (int64_t i = first; i < std::min(first + mb, n); ++i) samples.push_back(i);
    const data::Batch b = data::make_batch(dataset, samples);
    const DecoderModel::StepResult r = model.forward_only({b});
    if (!real) continue;
    const auto P = static_cast<int64_t>(samples.size());
    for (int64_t j = 0; j < P; ++j) {
      const auto i = static_cast<size_t>(samples[static_cast<size_t>(j)]);
      ref[2 * i] = -r.row_loss_sums[static_cast<size_t>(j)];
      ref[2 * i + 1] = -r.row_loss_sums[static_cast<size_t>(P + j)];
    }
  }
  return dp.all_reduce_values(std::move(ref));
}

}  // namespace

std::string DpoObjective::prepare(pipeline::PipelinedModel& model, const data::Dataset& train, const data::Dataset* valid,
                                  int64_t micro_batch, parallel::Communicator& dp, int dp_rank, int dp_size,
                                  const std::string& save_dir, bool writer, bool resumed) {
  PRIMUS_CHECK(train.rows_per_sample() == 2,
               "dpo: true needs preference data (prompt / chosen / rejected records); {} has one sequence per sample",
               train.name());
  const std::string path = save_dir.empty() ? "" : (std::filesystem::path(save_dir) / kReferenceFile).string();
  const std::string valid_name = valid != nullptr ? valid->name() : "";
  const int64_t valid_size = valid != nullptr ? valid->size() : 0;
  if (!path.empty() && std::filesystem::exists(path)) {
    SafetensorsFile f(path);
    const auto& meta = f.metadata();
    auto get = [&](const char* k) { return meta.count(k) ? meta.at(k) : std::string(); };
    if (get("train") == train.name() && get("valid") == valid_name &&
        get("train_pairs") == std::to_string(train.size()) && get("valid_pairs") == std::to_string(valid_size)) {
      auto read = [&](const char* name) {
        const std::vector<float> v = f.load(name).to_float_vector();
        return std::vector<double>(v.begin(), v.end());
      };
      ref_train_ = read("train");
      if (valid_size > 0) ref_valid_ = read("valid");
      return fmt::format("dpo: reference log-probs of {} train + {} valid pairs loaded from {}", train.size(),
                         valid_size, path);
    }
    PRIMUS_CHECK(!resumed,
                 "dpo: {} was computed for other data (train '{}', {} pairs) than this run's ({} , {} pairs); the "
                 "resumed weights are no longer the reference model, so it cannot be recomputed: restore the "
                 "file or start the run again",
                 path, get("train"), get("train_pairs"), train.name(), train.size());
  } else {
    PRIMUS_CHECK(!resumed,
                 "dpo: this run resumes from a checkpoint but {} is missing: the reference log-probs come from the "
                 "initial weights and cannot be recomputed now; restore the file (it is written to `save` before "
                 "the first step) or start the run again",
                 path.empty() ? std::string("<save>/") + kReferenceFile : path);
  }
  // Rounded to fp32, as the file keeps them: a run resumed from the file continues bit for bit.
  auto as_stored = [](std::vector<double> v) {
    for (double& x : v) x = static_cast<double>(static_cast<float>(x));
    return v;
  };
  ref_train_ = as_stored(compute_reference(model, train, micro_batch, dp, dp_rank, dp_size));
  if (valid != nullptr && valid_size > 0)
    ref_valid_ = as_stored(compute_reference(model, *valid, micro_batch, dp, dp_rank, dp_size));
  if (writer && !path.empty()) {
    std::filesystem::create_directories(save_dir);
    std::vector<float> t(ref_train_.begin(), ref_train_.end()), v(ref_valid_.begin(), ref_valid_.end());
    NamedTensorList tensors{{"train", Tensor::from_floats(t, {static_cast<int64_t>(t.size())})}};
    if (!v.empty()) tensors.emplace_back("valid", Tensor::from_floats(v, {static_cast<int64_t>(v.size())}));
    save_safetensors(path, tensors,
                     {{"train", train.name()},
                      {"valid", valid_name},
                      {"train_pairs", std::to_string(train.size())},
                      {"valid_pairs", std::to_string(valid_size)},
                      {"format", "[2 i]: log pi_ref(chosen | prompt), [2 i + 1]: log pi_ref(rejected | prompt)"}});
  }
  return fmt::format("dpo: reference log-probs of {} train + {} valid pairs computed with the initial weights{}",
                     train.size(), valid_size, path.empty() ? " (no `save`: not kept)" : " and saved to " + path);
}

DpoPairs DpoObjective::pairs_of(const data::Batch& b, const std::vector<double>& rows, size_t offset,
                                const std::vector<double>& reference) const {
  const auto P = static_cast<int64_t>(b.samples.size());
  PRIMUS_CHECK(b.tokens.size(0) == 2 * P && rows.size() >= offset + static_cast<size_t>(2 * P),
               "dpo: a micro-batch of {} pairs has {} rows", P, b.tokens.size(0));
  DpoPairs p;
  for (int64_t j = 0; j < P; ++j) {
    const auto i = static_cast<size_t>(b.samples[static_cast<size_t>(j)]);
    PRIMUS_CHECK(2 * i + 1 < reference.size(), "dpo: sample {} has no reference log-probs", i);
    p.policy_chosen.push_back(-rows[offset + static_cast<size_t>(j)]);
    p.policy_rejected.push_back(-rows[offset + static_cast<size_t>(P + j)]);
    p.ref_chosen.push_back(reference[2 * i]);
    p.ref_rejected.push_back(reference[2 * i + 1]);
    p.len_chosen.push_back(completion_tokens(b, j));
    p.len_rejected.push_back(completion_tokens(b, P + j));
  }
  return p;
}

const std::vector<LossWeightsHook>& DpoObjective::hooks(const std::vector<data::Batch>& batches, double scale) {
  step_ = {};
  hooks_.clear();
  const double weight = scale / static_cast<double>(global_pairs_);
  for (const data::Batch& b : batches) {
    hooks_.push_back(row_loss_weights(b.tokens.size(0), [this, &b, weight](const std::vector<double>& rows) {
      const DpoPairs p = pairs_of(b, rows, 0, ref_train_);
      std::vector<double> dc, dr;
      step_ += dpo_loss(p, o_, &dc, &dr);
      const size_t P = p.size();
      std::vector<float> w(2 * P);
      for (size_t j = 0; j < P; ++j) {  // row_loss_sum = -logp
        w[j] = static_cast<float>(-dc[j] * weight);
        w[P + j] = static_cast<float>(-dr[j] * weight);
      }
      return w;
    }));
  }
  return hooks_;
}

DpoStats DpoObjective::evaluate(const std::vector<data::Batch>& batches, const std::vector<double>& rows) const {
  DpoStats s;
  size_t offset = 0;
  for (const data::Batch& b : batches) {
    s += dpo_loss(pairs_of(b, rows, offset, ref_valid_), o_);
    offset += static_cast<size_t>(b.tokens.size(0));
  }
  return s;
}

DpoStats DpoObjective::sum_over(const DpoStats& local, parallel::Communicator& group) {
  const std::vector<double> v = group.all_reduce_values(
      {local.loss_sum, local.chosen_reward_sum, local.rejected_reward_sum, local.accuracy_sum, local.pairs});
  DpoStats out;
  out.loss_sum = v[0];
  out.chosen_reward_sum = v[1];
  out.rejected_reward_sum = v[2];
  out.accuracy_sum = v[3];
  out.pairs = v[4];
  return out;
}

std::vector<std::pair<std::string, double>> DpoObjective::report(const DpoStats& local, parallel::Communicator& dp) {
  const DpoStats all = sum_over(local, dp);
  const double n = std::max(1.0, all.pairs);
  return {{"dpo loss", all.loss_sum / n},
          {"rewards/chosen", all.chosen_reward_sum / n},
          {"rewards/rejected", all.rejected_reward_sum / n},
          {"rewards/margins", (all.chosen_reward_sum - all.rejected_reward_sum) / n},
          {"rewards/accuracies", all.accuracy_sum / n}};
}

}  // namespace primus::train

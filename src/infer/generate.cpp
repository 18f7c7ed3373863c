#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <utility>

#include "core/error.h"
#include "infer/device_sampler.h"

namespace primus::infer {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Entropy (nats) of softmax(z / T) over a row of logits z.
double entropy_of(std::span<const float> z, double temperature) {
  const double inv_t = 1.0 / temperature;
  double zmax = -INFINITY;
  for (float v : z)
    if (!std::isnan(v)) zmax = std::max(zmax, static_cast<double>(v) * inv_t);
  if (!std::isfinite(zmax)) return 0.0;
  double total = 0, weighted = 0;
  for (float v : z) {
    if (std::isnan(v)) continue;
    const double a = static_cast<double>(v) * inv_t - zmax, e = std::exp(a);
    total += e;
    weighted += e * a;
  }
  return std::log(total) - weighted / total;  // -sum p log p with p = e / total
}
}  // namespace

KvCachePlan plan_generation_cache(const CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                                  const GenerateOptions& o) {
  PRIMUS_CHECK(!prompts.empty(), "generate: no prompts");
  PRIMUS_CHECK(o.max_new_tokens >= 1, "generate: max_new_tokens must be >= 1, got {}", o.max_new_tokens);
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  PRIMUS_CHECK(longest >= 1, "generate: the prompts are empty (at least one token is needed)");
  // The last new token is sampled, never fed back: positions up to longest + max_new - 2.
  return plan_kv_cache(decoder.cache_values_per_token(), decoder.dtype(), longest + o.max_new_tokens - 1,
                       static_cast<int64_t>(prompts.size()), o.kv_budget);
}

GenerateResult generate(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& o) {
  const KvCachePlan plan = plan_generation_cache(decoder, prompts, o);
  KvCache cache = decoder.new_cache(plan.slots, plan.max_len);
  return generate(decoder, prompts, o, cache);
}

namespace {

// The scheduler's state: which prompt sits in which slot, what each prompt has produced.
class SlotLoop {
 public:
  SlotLoop(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o,
           KvCache& cache, GenerateResult& r)
      : d_(decoder), prompts_(prompts), o_(o), cache_(cache), r_(r), B_(static_cast<int64_t>(prompts.size())),
        S_(cache.batch), occupant_(static_cast<size_t>(cache.batch), -1), done_(prompts.size(), false),
        last_(prompts.size(), 0) {
    const int64_t V = d_.config().padded_vocab_size;
    vocab_ = o.vocab_limit > 0 ? std::min(o.vocab_limit, V) : V;
    entropy_temperature_ = o.sampling.greedy() ? 1.0 : static_cast<double>(o.sampling.temperature);
    r_.tokens.assign(prompts.size(), {});
    r_.finish_reasons.assign(prompts.size(), "length");
    if (o.keep_entropy) r_.entropy_sums.assign(prompts.size(), 0.0);
    if (o.keep_prompt_logits) {
      int64_t longest = 0;
      for (const auto& p : prompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
      r_.prompt_logits = Tensor::zeros({B_, longest, V}, DType::F32);
    }
  }

  void run() {
    const auto t_start = std::chrono::steady_clock::now();
    if (d_.context().device() != Device::CPU && o_.sample_on_device)
      run_device();
    else
      run_host();
    r_.decode_seconds = std::max(0.0, seconds_since(t_start) - r_.prefill_seconds);
  }

 private:
  uint64_t stream(int64_t p) const {
    return o_.sample_ids.empty() ? static_cast<uint64_t>(p) : o_.sample_ids[static_cast<size_t>(p)];
  }
  int64_t produced(int64_t p) const { return static_cast<int64_t>(r_.tokens[static_cast<size_t>(p)].size()); }
  bool busy(int64_t s) const { return occupant_[static_cast<size_t>(s)] >= 0; }

  // Token t of prompt p: streaming, stop ids, max_new_tokens.
  void record(int64_t p, int32_t t) {
    auto& out = r_.tokens[static_cast<size_t>(p)];
    out.push_back(t);
    last_[static_cast<size_t>(p)] = t;
    ++r_.generated_tokens;
    if (o_.on_token) o_.on_token(p, t);
    if (std::find(o_.stop_ids.begin(), o_.stop_ids.end(), t) != o_.stop_ids.end()) {
      done_[static_cast<size_t>(p)] = true;
      r_.finish_reasons[static_cast<size_t>(p)] = "stop";
    } else if (static_cast<int64_t>(out.size()) >= o_.max_new_tokens) {
      done_[static_cast<size_t>(p)] = true;
    }
  }
  // Frees the slots whose sequence has finished.
  void release_finished() {
    for (int64_t& p : occupant_)
      if (p >= 0 && done_[static_cast<size_t>(p)]) p = -1;
  }
  bool any_busy() const {
    return std::any_of(occupant_.begin(), occupant_.end(), [](int64_t p) { return p >= 0; });
  }

  // The next joiners: free slots (lowest first) and waiting prompts (in order). Empty when none.
  std::pair<std::vector<int64_t>, std::vector<int64_t>> joiners() const {
    std::vector<int64_t> slots, ps;
    for (int64_t s = 0; s < S_ && next_ + static_cast<int64_t>(ps.size()) < B_; ++s)
      if (!busy(s)) {
        slots.push_back(s);
        ps.push_back(next_ + static_cast<int64_t>(ps.size()));
      }
    return {slots, ps};
  }
  std::vector<std::vector<int32_t>> prompts_of(const std::vector<int64_t>& ps) const {
    std::vector<std::vector<int32_t>> out;
    for (int64_t p : ps) out.push_back(prompts_[static_cast<size_t>(p)]);
    return out;
  }
  void keep_prompt_logits(const std::vector<int64_t>& ps, const Tensor& all) {  // all (J, Tj, V) host
    const int64_t Tj = all.size(1), V = all.size(2), Tmax = r_.prompt_logits.size(1);
    for (size_t j = 0; j < ps.size(); ++j)
      std::copy_n(all.data<float>() + static_cast<int64_t>(j) * Tj * V, Tj * V,
                  r_.prompt_logits.data<float>() + ps[j] * Tmax * V);
  }

  // A slot whose position would leave [1, max_len) at the next step holds no sequence that
  // needs that step (an active one stays below max_len by the cache's sizing): park it at 1
  // (it rides along, reading its own stale position 0). Returns whether any moved.
  bool park() {
    bool moved = false;
    for (int64_t s = 0; s < S_; ++s) {
      int64_t& len = cache_.lengths[static_cast<size_t>(s)];
      if (len < 1 || len >= cache_.max_len) {
        PRIMUS_CHECK(!busy(s) || done_[static_cast<size_t>(occupant_[static_cast<size_t>(s)])] ||
                         produced(occupant_[static_cast<size_t>(s)]) + 1 >= o_.max_new_tokens,
                     "generate: slot {} (prompt {}) ran out of its {} cache positions", s, occupant_[static_cast<size_t>(s)],
                     cache_.max_len);
        len = 1;
        moved = true;
      }
    }
    return moved;
  }

  // ---- the host path: CPU decoders, or sample_on_device = false ----
  void choose_host(const Tensor& logits, int64_t row, int64_t p) {
    const int64_t V = logits.size(1);
    const std::span<const float> z(logits.data<float>() + row * V, static_cast<size_t>(vocab_));
    const int32_t t = sample_token(z, o_.sampling, stream(p), static_cast<uint64_t>(produced(p)));
    if (o_.keep_entropy) r_.entropy_sums[static_cast<size_t>(p)] += entropy_of(z, entropy_temperature_);
    record(p, t);
  }

  void join_host() {
    while (true) {
      const auto [slots, ps] = joiners();
      if (slots.empty()) break;
      const auto t0 = std::chrono::steady_clock::now();
      Tensor all;
      const Tensor logits = d_.prefill_slots(cache_, slots, prompts_of(ps), o_.keep_prompt_logits ? &all : nullptr);
      ++r_.prefills;
      if (o_.keep_prompt_logits) keep_prompt_logits(ps, all);
      next_ += static_cast<int64_t>(ps.size());
      for (size_t j = 0; j < ps.size(); ++j) {
        occupant_[static_cast<size_t>(slots[j])] = ps[j];
        choose_host(logits, static_cast<int64_t>(j), ps[j]);
      }
      release_finished();
      r_.prefill_seconds += seconds_since(t0);
    }
  }

  void run_host() {
    std::vector<int32_t> tokens(static_cast<size_t>(S_), 0);
    while (true) {
      join_host();
      if (!any_busy()) break;  // every slot free after a join: no prompt waits
      park();                  // decode() uploads the lengths as positions
      for (int64_t s = 0; s < S_; ++s)
        tokens[static_cast<size_t>(s)] = busy(s) ? last_[static_cast<size_t>(occupant_[static_cast<size_t>(s)])] : 0;
      const Tensor logits = d_.decode(cache_, tokens);
      ++r_.decode_steps;
      for (int64_t s = 0; s < S_; ++s)
        if (busy(s)) choose_host(logits, s, occupant_[static_cast<size_t>(s)]);
      release_finished();
    }
  }

  // ---- the device path ----
  void join_device(DeviceSampler& dec, DeviceSampler& join) {
    while (true) {
      const auto [slots, ps] = joiners();
      if (slots.empty()) break;
      const auto t0 = std::chrono::steady_clock::now();
      Tensor logits;
      if (o_.keep_prompt_logits) {
        Tensor all;
        const Tensor host = d_.prefill_slots(cache_, slots, prompts_of(ps), &all);
        keep_prompt_logits(ps, all);
        logits = Tensor::empty(host.shape(), DType::F32, d_.context().device());
        logits.copy_from(host);
      } else {
        logits = d_.prefill_slots_to_device(cache_, slots, prompts_of(ps));
      }
      ++r_.prefills;
      next_ += static_cast<int64_t>(ps.size());
      std::vector<DeviceSampler::Draw> draws;
      for (int64_t p : ps) draws.push_back({stream(p), 0});
      join.choose(logits, join_calls_++, draws);
      dec.copy_tokens_from(join, slots);  // the joiners' first tokens: the next step's input
      for (size_t j = 0; j < ps.size(); ++j) {
        occupant_[static_cast<size_t>(slots[j])] = ps[j];
        if (o_.keep_entropy) r_.entropy_sums[static_cast<size_t>(ps[j])] += join.entropy(static_cast<int64_t>(j));
        record(ps[j], join.token(static_cast<int64_t>(j)));
      }
      release_finished();
      r_.prefill_seconds += seconds_since(t0);
    }
  }

  struct Flight {  // a queued decode step whose tokens the host has not read yet
    int64_t call = 0;
    std::vector<int64_t> occupant;  // the slots' prompts when it was queued
    bool graphed = false;
  };

  // Queues one decode step over all slots and its sampling; the draws of each busy slot are
  // its prompt's stream at the index of the token this step gives it (pending: one more
  // token of that prompt is still in flight).
  Flight queue_step(DeviceSampler& dec, const Flight* in_flight) {
    if (park()) d_.upload_positions(cache_);
    Flight f;
    f.call = calls_++;
    f.occupant = occupant_;
    const Tensor logits = d_.decode_step(cache_, dec.device_tokens(), o_.cuda_graphs);
    f.graphed = d_.last_step_from_graph();
    std::vector<DeviceSampler::Draw> draws(static_cast<size_t>(S_));
    for (int64_t s = 0; s < S_; ++s) {
      const int64_t p = occupant_[static_cast<size_t>(s)];
      if (p < 0) continue;
      const int64_t pending = in_flight != nullptr && in_flight->occupant[static_cast<size_t>(s)] == p ? 1 : 0;
      draws[static_cast<size_t>(s)] = {stream(p), static_cast<uint64_t>(produced(p) + pending)};
    }
    if (o_.sampling.greedy()) {
      dec.enqueue(logits, f.call, draws);
    } else {
      std::vector<bool> skip(static_cast<size_t>(S_));
      for (int64_t s = 0; s < S_; ++s) skip[static_cast<size_t>(s)] = !busy(s);
      dec.choose(logits, f.call, draws, skip);
    }
    return f;
  }

  // Reads a step's tokens (greedy: waits for its copy) and gives them to the prompts that sat
  // in the slots when it was queued, unless they have finished since.
  void take(DeviceSampler& dec, const Flight& f) {
    std::vector<bool> skip(static_cast<size_t>(S_));
    for (int64_t s = 0; s < S_; ++s) {
      const int64_t p = f.occupant[static_cast<size_t>(s)];
      skip[static_cast<size_t>(s)] = p < 0 || done_[static_cast<size_t>(p)];
    }
    if (o_.sampling.greedy()) dec.collect(f.call, skip);
    bool used = false;
    for (int64_t s = 0; s < S_; ++s) {
      if (skip[static_cast<size_t>(s)]) continue;
      const int64_t p = f.occupant[static_cast<size_t>(s)];
      if (o_.keep_entropy) r_.entropy_sums[static_cast<size_t>(p)] += dec.entropy(s);
      record(p, dec.token(s));
      used = true;
    }
    if (used) {
      ++r_.decode_steps;
      if (f.graphed) ++r_.graph_steps;
    }
    release_finished();
  }

  // Whether some busy slot needs a token beyond the one in flight for it.
  bool need_step(const Flight* in_flight) const {
    for (int64_t s = 0; s < S_; ++s) {
      const int64_t p = occupant_[static_cast<size_t>(s)];
      if (p < 0 || done_[static_cast<size_t>(p)]) continue;
      const int64_t pending = in_flight != nullptr && in_flight->occupant[static_cast<size_t>(s)] == p ? 1 : 0;
      if (produced(p) + pending < o_.max_new_tokens) return true;
    }
    return false;
  }

  void run_device() {
    DeviceSampler dec(d_.context(), o_.sampling, vocab_, o_.keep_entropy, S_);
    DeviceSampler join(d_.context(), o_.sampling, vocab_, o_.keep_entropy, S_);
    if (o_.sampling.greedy()) {
      // Step c + 1 is queued before the host reads step c (its input ids are already on the
      // device): the GPU does not wait for the host between steps. A slot freed by step c is
      // joined after c + 1 was queued; c + 1's result for it is dropped.
      std::optional<Flight> flight;
      while (true) {
        join_device(dec, join);
        std::optional<Flight> queued;
        if (need_step(flight ? &*flight : nullptr)) queued = queue_step(dec, flight ? &*flight : nullptr);
        if (flight) {
          take(dec, *flight);
        } else if (!queued) {
          break;
        }
        flight = std::move(queued);
      }
    } else {
      // Sampled: each step is read before the next is queued (a row may need the host).
      while (true) {
        join_device(dec, join);
        if (!need_step(nullptr)) break;
        const Flight f = queue_step(dec, nullptr);
        take(dec, f);
      }
    }
  }

  CachedDecoder& d_;
  const std::vector<std::vector<int32_t>>& prompts_;
  const GenerateOptions& o_;
  KvCache& cache_;
  GenerateResult& r_;
  const int64_t B_, S_;
  int64_t vocab_ = 0, next_ = 0, calls_ = 0, join_calls_ = 0;
  double entropy_temperature_ = 1.0;
  std::vector<int64_t> occupant_;  // per slot: the prompt decoding there, -1 = free
  std::vector<bool> done_;         // per prompt
  std::vector<int32_t> last_;      // per prompt: its last token
};

}  // namespace

GenerateResult generate(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& o, KvCache& cache) {
  PRIMUS_CHECK(!prompts.empty(), "generate: no prompts");
  PRIMUS_CHECK(o.max_new_tokens >= 1, "generate: max_new_tokens must be >= 1, got {}", o.max_new_tokens);
  validate(o.sampling);
  PRIMUS_CHECK(o.sample_ids.empty() || o.sample_ids.size() == prompts.size(),
               "generate: {} sample_ids for {} prompts (one per prompt, or none)", o.sample_ids.size(), prompts.size());
  GenerateResult r;
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    PRIMUS_CHECK(!prompts[i].empty(), "generate: prompt {} is empty (at least one token is needed)", i);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
    r.prompt_tokens += static_cast<int64_t>(prompts[i].size());
  }
  PRIMUS_CHECK(longest + o.max_new_tokens - 1 <= cache.max_len,
               "generate: the KV cache holds {} positions per slot, but the longest prompt ({} tokens) + "
               "max_new_tokens ({}) - 1 = {}: allocate the cache for the longest prompt",
               cache.max_len, longest, o.max_new_tokens, longest + o.max_new_tokens - 1);
  r.slots = cache.batch;
  r.cache_max_len = cache.max_len;
  r.cache_bytes = static_cast<int64_t>(cache.bytes());
  decoder.reset_graph();  // a graph of an earlier call addresses other buffers
  for (int64_t& len : cache.lengths) len = 0;  // every slot free
  SlotLoop loop(decoder, prompts, o, cache, r);
  loop.run();
  r.graph_failure = decoder.graph_failure();
  return r;
}

}  // namespace primus::infer

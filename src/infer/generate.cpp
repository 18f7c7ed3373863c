#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>

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

GenerateResult generate(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& o) {
  PRIMUS_CHECK(!prompts.empty(), "generate: no prompts");
  PRIMUS_CHECK(o.max_new_tokens >= 1, "generate: max_new_tokens must be >= 1, got {}", o.max_new_tokens);
  validate(o.sampling);
  PRIMUS_CHECK(o.sample_ids.empty() || o.sample_ids.size() == prompts.size(),
               "generate: {} sample_ids for {} prompts (one per prompt, or none)", o.sample_ids.size(), prompts.size());
  const int64_t V = decoder.config().padded_vocab_size;
  const int64_t vocab = o.vocab_limit > 0 ? std::min(o.vocab_limit, V) : V;
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t longest = 0;
  GenerateResult r;
  for (const auto& p : prompts) {
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
    r.prompt_tokens += static_cast<int64_t>(p.size());
  }
  // The last new token is sampled, never fed back: positions up to longest + max_new - 2.
  const int64_t max_len = longest + o.max_new_tokens - 1;
  KvCache cache = decoder.new_cache(B, max_len);
  r.tokens.assign(static_cast<size_t>(B), {});
  r.finish_reasons.assign(static_cast<size_t>(B), "length");
  if (o.keep_entropy) r.entropy_sums.assign(static_cast<size_t>(B), 0.0);
  const double entropy_temperature = o.sampling.greedy() ? 1.0 : static_cast<double>(o.sampling.temperature);
  std::vector<bool> done(static_cast<size_t>(B), false);
  std::vector<int32_t> last(static_cast<size_t>(B), 0);
  int64_t active = B;

  // Records token t of sequence b: streaming, stop ids, max_new_tokens.
  auto record = [&](int64_t b, int32_t t) {
    auto& out = r.tokens[static_cast<size_t>(b)];
    out.push_back(t);
    last[static_cast<size_t>(b)] = t;
    ++r.generated_tokens;
    if (o.on_token) o.on_token(b, t);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), t) != o.stop_ids.end()) {
      done[static_cast<size_t>(b)] = true;
      r.finish_reasons[static_cast<size_t>(b)] = "stop";
      --active;
    } else if (static_cast<int64_t>(out.size()) >= o.max_new_tokens) {
      done[static_cast<size_t>(b)] = true;
      --active;
    }
  };
  auto choose = [&](const Tensor& logits, int64_t step) {
    for (int64_t b = 0; b < B; ++b) {
      if (done[static_cast<size_t>(b)]) continue;
      const std::span<const float> row(logits.data<float>() + b * V, static_cast<size_t>(vocab));
      const uint64_t stream = o.sample_ids.empty() ? static_cast<uint64_t>(b) : o.sample_ids[static_cast<size_t>(b)];
      const int32_t t = sample_token(row, o.sampling, stream, static_cast<uint64_t>(step));
      if (o.keep_entropy) r.entropy_sums[static_cast<size_t>(b)] += entropy_of(row, entropy_temperature);
      record(b, t);
    }
  };

  auto t0 = std::chrono::steady_clock::now();
  if (decoder.context().device() != Device::CPU && o.sample_on_device) {
    // The device path: logits stay on the GPU, the device chooses (DeviceSampler), the ids it
    // writes are the next step's input; per step only B ids (+ entropies) come back.
    std::vector<uint64_t> streams(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b)
      streams[static_cast<size_t>(b)] = o.sample_ids.empty() ? static_cast<uint64_t>(b) : o.sample_ids[static_cast<size_t>(b)];
    DeviceSampler sampler(decoder.context(), o.sampling, vocab, o.keep_entropy, streams, o.max_new_tokens);
    t0 = std::chrono::steady_clock::now();  // its buffers and uniforms are set-up, as the cache is
    auto take = [&](int64_t step) {
      for (int64_t b = 0; b < B; ++b) {
        if (done[static_cast<size_t>(b)]) continue;
        if (o.keep_entropy) r.entropy_sums[static_cast<size_t>(b)] += sampler.entropy(b);
        record(b, sampler.token(b));
      }
    };
    Tensor first_dev;
    if (o.keep_prompt_logits) {
      const Tensor first = decoder.prefill(cache, prompts, &r.prompt_logits);
      first_dev = Tensor::empty(first.shape(), DType::F32, decoder.context().device());
      first_dev.copy_from(first);
    } else {
      first_dev = decoder.prefill_to_device(cache, prompts);
    }
    if (o.sampling.greedy()) {
      // Greedy never needs the host's logits: step s + 1 is queued (its input ids are already on
      // the device) before the host reads step s's ids, so the GPU does not wait for the host.
      // Sequences that finish at step s ride along in step s + 1, as in every step; when the
      // last one finishes, the queued step's result is dropped.
      sampler.enqueue(first_dev, 0);
      bool graphed = false;
      for (int64_t step = 0;; ++step) {
        const bool more = step + 1 < o.max_new_tokens;  // the cache has room for step + 1
        bool next_graphed = false;
        if (more) {
          const Tensor logits = decoder.decode_step(cache, sampler.device_tokens(), o.cuda_graphs);
          next_graphed = decoder.last_step_from_graph();
          sampler.enqueue(logits, step + 1);
        }
        sampler.collect(step, done);
        take(step);
        if (step == 0) {
          r.prefill_seconds = seconds_since(t0);
          t0 = std::chrono::steady_clock::now();
        } else {
          ++r.decode_steps;
          if (graphed) ++r.graph_steps;
        }
        graphed = next_graphed;
        if (active == 0 || !more) break;
      }
    } else {
      sampler.choose(first_dev, 0);
      take(0);
      r.prefill_seconds = seconds_since(t0);
      t0 = std::chrono::steady_clock::now();
      for (int64_t step = 1; active > 0; ++step) {
        sampler.choose(decoder.decode_step(cache, sampler.device_tokens(), o.cuda_graphs), step, done);
        ++r.decode_steps;
        if (decoder.last_step_from_graph()) ++r.graph_steps;
        take(step);
      }
    }
    r.decode_seconds = seconds_since(t0);
    r.graph_failure = decoder.graph_failure();
    return r;
  }
  const Tensor first = decoder.prefill(cache, prompts, o.keep_prompt_logits ? &r.prompt_logits : nullptr);
  choose(first, 0);
  r.prefill_seconds = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  for (int64_t step = 1; active > 0; ++step) {
    const Tensor logits = decoder.decode(cache, last);
    ++r.decode_steps;
    choose(logits, step);
  }
  r.decode_seconds = seconds_since(t0);
  return r;
}

}  // namespace primus::infer

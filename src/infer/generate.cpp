#include "infer/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace primus::infer {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerateResult generate(CachedDecoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& o) {
  PRIMUS_CHECK(!prompts.empty(), "generate: no prompts");
  PRIMUS_CHECK(o.max_new_tokens >= 1, "generate: max_new_tokens must be >= 1, got {}", o.max_new_tokens);
  validate(o.sampling);
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
  std::vector<bool> done(static_cast<size_t>(B), false);
  std::vector<int32_t> last(static_cast<size_t>(B), 0);
  int64_t active = B;

  auto choose = [&](const Tensor& logits, int64_t step) {
    for (int64_t b = 0; b < B; ++b) {
      if (done[static_cast<size_t>(b)]) continue;
      const std::span<const float> row(logits.data<float>() + b * V, static_cast<size_t>(vocab));
      const int32_t t = sample_token(row, o.sampling, static_cast<uint64_t>(b), static_cast<uint64_t>(step));
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
    }
  };

  auto t0 = std::chrono::steady_clock::now();
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

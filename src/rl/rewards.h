// GRPO's reward functions: each maps (prompt, completion) to a number; the reward of a
// completion is their weighted sum (reward_weights, default 1 each). Built in:
//
//   accuracy   1 if the answer extracted from the completion equals the prompt line's answer
//              column (reward_answer_key, default "answer"; a number is compared as its JSON
//              text), else 0. Extraction: reward_answer_regex searched in the completion, its
//              first capture group (or the whole match when it has none); without the regex,
//              the whole completion. Both sides are trimmed of white space.
//   format     1 if reward_format_regex is found in the completion (ECMAScript syntax; anchor
//              it with ^...$ to ask for the whole completion), else 0.
//   overlong   DAPO's soft overlong punishment, with L the completion's tokens, L_max =
//              max_completion_length, L_c = overlong_buffer_length:
//              0 for L <= L_max - L_c, (L_max - L_c - L) / L_c above (down to -1 at L_max).
//   command    an external process (rl/reward_process.h: JSON lines over stdin/stdout).
#pragma once

#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "rl/grpo_options.h"
#include "rl/prompt_set.h"
#include "rl/reward_process.h"

namespace primus::rl {

// One completion to score.
struct Completion {
  const RlPrompt* prompt = nullptr;
  std::string text;  // decoded, without the stop token
  int64_t tokens = 0;
  bool truncated = false;  // stopped by max_completion_length
};

class RewardFunctions {
 public:
  // Checks the options (names the key of an unknown function, a weight count that does not
  // match, a bad regex, a function without the key it needs) and starts the command.
  explicit RewardFunctions(const RewardOptions& o);
  ~RewardFunctions();

  const std::vector<std::string>& names() const { return o_.funcs; }
  const std::vector<double>& weights() const { return weights_; }
  // scores[i * F + f]: function f on completion i (F = names().size()).
  std::vector<double> score(const std::vector<Completion>& completions);
  // Σ_f weight_f * scores[i * F + f] for each completion.
  std::vector<double> combine(const std::vector<double>& scores) const;

  // The accuracy function's extraction (exposed for tests): "" when the regex does not match.
  std::string extract_answer(const std::string& completion) const;

 private:
  std::optional<std::string> find_answer(const std::string& completion) const;  // none: no match
  double one(size_t f, const Completion& c);
  RewardOptions o_;
  std::vector<double> weights_;
  std::regex answer_re_, format_re_;
  std::unique_ptr<RewardProcess> process_;
};

}  // namespace primus::rl

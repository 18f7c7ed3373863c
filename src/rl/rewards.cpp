#include "rl/rewards.h"

#include "core/error.h"
#include "core/strings.h"

namespace primus::rl {

namespace {
const std::vector<std::string> kFuncs = {"accuracy", "format", "overlong", "command"};

std::regex compile(const std::string& pattern, const char* key) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw Error(fmt::format("{} '{}' is not a valid regular expression (ECMAScript syntax): {}", key, pattern, e.what()));
  }
}

std::string trimmed(const std::string& s) { return trim(s); }

std::string names_list() {
  std::string out;
  for (const std::string& f : kFuncs) out += (out.empty() ? "" : ", ") + f;
  return out;
}
}  // namespace

RewardFunctions::RewardFunctions(const RewardOptions& o) : o_(o) {
  PRIMUS_CHECK(!o_.funcs.empty(), "reward_funcs is empty: name at least one of {}", names_list());
  for (const std::string& f : o_.funcs)
    PRIMUS_CHECK(std::find(kFuncs.begin(), kFuncs.end(), f) != kFuncs.end(),
                 "reward_funcs: '{}' is not a reward function (one of {}){}", f, names_list(),
                 did_you_mean(f, kFuncs));
  weights_ = o_.weights.empty() ? std::vector<double>(o_.funcs.size(), 1.0) : o_.weights;
  PRIMUS_CHECK(weights_.size() == o_.funcs.size(), "reward_weights has {} values for {} reward_funcs (one each)",
               weights_.size(), o_.funcs.size());
  auto uses = [&](const char* name) { return std::find(o_.funcs.begin(), o_.funcs.end(), name) != o_.funcs.end(); };
  if (!o_.answer_regex.empty()) answer_re_ = compile(o_.answer_regex, "reward_answer_regex");
  if (uses("format")) {
    PRIMUS_CHECK(!o_.format_regex.empty(), "reward_funcs has format but reward_format_regex is not set");
    format_re_ = compile(o_.format_regex, "reward_format_regex");
  }
  if (uses("overlong"))
    PRIMUS_CHECK(o_.overlong_buffer_length > 0 && o_.overlong_buffer_length <= o_.max_completion_length,
                 "reward_funcs has overlong, which needs overlong_buffer_length in [1, max_completion_length = {}], "
                 "got {}",
                 o_.max_completion_length, o_.overlong_buffer_length);
  if (uses("command")) {
    PRIMUS_CHECK(!o_.command.empty(), "reward_funcs has command but reward_command is not set");
    process_ = std::make_unique<RewardProcess>(o_.command);
  }
}

RewardFunctions::~RewardFunctions() = default;

std::optional<std::string> RewardFunctions::find_answer(const std::string& completion) const {
  if (o_.answer_regex.empty()) return trimmed(completion);
  std::smatch m;
  if (!std::regex_search(completion, m, answer_re_)) return std::nullopt;
  return trimmed(m.size() > 1 && m[1].matched ? m[1].str() : m[0].str());
}

std::string RewardFunctions::extract_answer(const std::string& completion) const {
  return find_answer(completion).value_or("");
}

double RewardFunctions::one(size_t f, const Completion& c) {
  const std::string& name = o_.funcs[f];
  if (name == "accuracy") {
    const nlohmann::json& rec = c.prompt->record;
    PRIMUS_CHECK(rec.contains(o_.answer_key), "{}: the accuracy reward needs the key \"{}\" (reward_answer_key) in "
                 "every prompt line",
                 c.prompt->where, o_.answer_key);
    const nlohmann::json& a = rec[o_.answer_key];
    const std::string want = trimmed(a.is_string() ? a.get<std::string>() : a.dump());
    const std::optional<std::string> got = find_answer(c.text);  // none: the regex did not match
    return got && *got == want ? 1.0 : 0.0;
  }
  if (name == "format") return std::regex_search(c.text, format_re_) ? 1.0 : 0.0;
  if (name == "overlong") {
    const int64_t free_len = o_.max_completion_length - o_.overlong_buffer_length;
    if (c.tokens <= free_len) return 0.0;
    return std::max(-1.0, static_cast<double>(free_len - c.tokens) / static_cast<double>(o_.overlong_buffer_length));
  }
  // command
  nlohmann::json req = {{"prompt", c.prompt->text},
                        {"completion", c.text},
                        {"completion_tokens", c.tokens},
                        {"finish_reason", c.truncated ? "length" : "stop"},
                        {"record", c.prompt->record}};
  return process_->score(req);
}

std::vector<double> RewardFunctions::score(const std::vector<Completion>& completions) {
  const size_t F = o_.funcs.size();
  std::vector<double> s(completions.size() * F);
  for (size_t i = 0; i < completions.size(); ++i)
    for (size_t f = 0; f < F; ++f) s[i * F + f] = one(f, completions[i]);
  return s;
}

std::vector<double> RewardFunctions::combine(const std::vector<double>& scores) const {
  const size_t F = o_.funcs.size();
  std::vector<double> r(scores.size() / F, 0.0);
  for (size_t i = 0; i < r.size(); ++i)
    for (size_t f = 0; f < F; ++f) r[i] += weights_[f] * scores[i * F + f];
  return r;
}

}  // namespace primus::rl

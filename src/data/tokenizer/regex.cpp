#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"

namespace primus::data {

namespace {

// Oniguruma's Unicode \s: White_Space minus nothing, spelled out so it does not depend on
// the Unicode version of PCRE2's tables.
constexpr std::string_view kOnigSpaceMembers =
    "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return std::string(reinterpret_cast<const char*>(buf));
}

}  // namespace

std::string onig_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        if (in_class)
          out.append(kOnigSpaceMembers);
        else
          out.append("[").append(kOnigSpaceMembers).append("]");
      } else if (n == 'S' && !in_class) {
        out.append("[^").append(kOnigSpaceMembers).append("]");
      } else {
        out.push_back(c);
        out.push_back(n);
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

std::shared_ptr<const RegexPattern> RegexPattern::compile(std::string_view pattern, std::string_view where) {
  std::shared_ptr<RegexPattern> r(new RegexPattern());
  r->source_ = onig_to_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  r->code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(r->source_.data()), r->source_.size(),
                           PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
  if (!r->code_)
    fail("{}: the split regex {:?} does not compile with PCRE2 ({} at offset {}); it may use Oniguruma-only "
         "syntax",
         where, std::string(pattern), pcre2_message(err), offset);
  r->jit_ = pcre2_jit_compile(r->code_, PCRE2_JIT_COMPLETE) == 0;
  return r;
}

std::shared_ptr<const RegexPattern> RegexPattern::literal(std::string_view literal, std::string_view where) {
  std::string quoted = "\\Q";
  for (size_t i = 0; i < literal.size(); ++i) {
    if (literal.compare(i, 2, "\\E") == 0) {
      quoted.append("\\E\\\\E\\Q");
      ++i;
    } else {
      quoted.push_back(literal[i]);
    }
  }
  quoted.append("\\E");
  return compile(quoted, where);
}

RegexPattern::~RegexPattern() {
  if (code_) pcre2_code_free(code_);
}

RegexMatcher::RegexMatcher(std::shared_ptr<const RegexPattern> pattern) : pattern_(std::move(pattern)) {
  match_data_ = pcre2_match_data_create_from_pattern(pattern_->code(), nullptr);
  context_ = pcre2_match_context_create(nullptr);
  // Long whitespace runs backtrack through \s+(?!\S): give the JIT more than its 32 KiB.
  jit_stack_ = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
}

RegexMatcher::~RegexMatcher() {
  if (jit_stack_) pcre2_jit_stack_free(jit_stack_);
  if (context_) pcre2_match_context_free(context_);
  if (match_data_) pcre2_match_data_free(match_data_);
}

bool RegexMatcher::find(std::string_view text, size_t from, size_t& begin, size_t& end) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc;
  if (pattern_->jit())
    rc = pcre2_jit_match(pattern_->code(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, match_data_, context_);
  else
    rc = pcre2_match(pattern_->code(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, match_data_, context_);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0)
    fail("regex {:?} failed on a text of {} bytes: {}", pattern_->source(), text.size(), pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_data_);
  begin = ov[0];
  end = ov[1];
  return true;
}

}  // namespace primus::data

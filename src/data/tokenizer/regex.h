// PCRE2 (UTF + UCP, JIT) for the pre-tokenizer split patterns of tokenizer.json files.
//
// HuggingFace compiles these patterns with Oniguruma, whose Unicode \s also matches U+0085
// (NEL), which PCRE2's \s does not. compile() therefore rewrites \s to Oniguruma's exact set
// (U+0009..U+000D, U+0020, U+0085, and the Zs/Zl/Zp separators), so the split points are
// the same. \p{L}, \p{N} and the other classes are left to PCRE2's Unicode tables.
#pragma once

#include <memory>
#include <string>
#include <string_view>

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;
struct pcre2_real_jit_stack_8;
struct pcre2_real_match_context_8;

namespace primus::data {

// A compiled pattern: immutable, shared by the threads.
class RegexPattern {
 public:
  // `pattern` in HuggingFace (Oniguruma) syntax. Throws primus::Error naming `where` on a
  // pattern PCRE2 rejects.
  static std::shared_ptr<const RegexPattern> compile(std::string_view pattern, std::string_view where);
  // A pattern matching `literal` exactly.
  static std::shared_ptr<const RegexPattern> literal(std::string_view literal, std::string_view where);
  ~RegexPattern();
  RegexPattern(const RegexPattern&) = delete;
  RegexPattern& operator=(const RegexPattern&) = delete;

  const std::string& source() const { return source_; }
  pcre2_real_code_8* code() const { return code_; }
  bool jit() const { return jit_; }

 private:
  RegexPattern() = default;
  std::string source_;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

// Oniguruma -> PCRE2 rewrite of \s (exposed for tests).
std::string onig_to_pcre2(std::string_view pattern);

// Per-thread match state for one pattern.
class RegexMatcher {
 public:
  explicit RegexMatcher(std::shared_ptr<const RegexPattern> pattern);
  ~RegexMatcher();
  RegexMatcher(const RegexMatcher&) = delete;
  RegexMatcher& operator=(const RegexMatcher&) = delete;

  // Finds the next match in `text` (valid UTF-8) at or after byte `from`. Returns false
  // when there is none; else sets [begin, end).
  bool find(std::string_view text, size_t from, size_t& begin, size_t& end);

 private:
  std::shared_ptr<const RegexPattern> pattern_;
  pcre2_real_match_data_8* match_data_ = nullptr;
  pcre2_real_match_context_8* context_ = nullptr;
  pcre2_real_jit_stack_8* jit_stack_ = nullptr;
};

}  // namespace primus::data

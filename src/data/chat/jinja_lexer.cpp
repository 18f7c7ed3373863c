// Jinja lexer: see jinja_lexer.h. Mirrors jinja2 3.1's lexer rules for the options
// transformers uses; every rule below names the jinja2 behaviour it reproduces.
#include "data/chat/jinja_lexer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "data/chat/jinja_value.h"

namespace primus::data::chat::jinja {

std::string where(const std::string& origin, int line, int col) {
  return fmt::format("{}:{}:{}: ", origin, line, col);
}

namespace {

class Lexer {
 public:
  Lexer(std::string src, const std::string& origin) : src_(std::move(src)), origin_(origin) {
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      if (!root_step()) break;
    }
    push(Tok::Eof, "", src_.size());
    return std::move(out_);
  }

 private:
  std::string src_;
  const std::string& origin_;
  std::vector<size_t> newlines_;
  std::vector<Token> out_;
  size_t pos_ = 0;
  bool line_starting_ = true;  // jinja2: the previous match ended with "\n" (or none yet)

  void line_col(size_t off, int& line, int& col) const {
    const auto it = std::lower_bound(newlines_.begin(), newlines_.end(), off);
    line = static_cast<int>(it - newlines_.begin()) + 1;
    const size_t start = it == newlines_.begin() ? 0 : *(it - 1) + 1;
    col = static_cast<int>(utf8_chars(std::string_view(src_).substr(start, off - start)).size()) + 1;
  }

  [[noreturn]] void fail(size_t off, const std::string& msg) const {
    int line, col;
    line_col(off, line, col);
    throw Error(where(origin_, line, col) + msg);
  }

  Token& push(Tok type, std::string text, size_t off) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    line_col(off, t.line, t.col);
    out_.push_back(std::move(t));
    return out_.back();
  }

  // Length of the Python-whitespace character at `p` (0 if none).
  size_t space_at(size_t p) const {
    if (p >= src_.size()) return 0;
    const auto c = static_cast<unsigned char>(src_[p]);
    if (c < 0x80) return is_py_space(c) ? 1 : 0;
    size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (p + n > src_.size()) return 0;
    const auto chars = utf8_chars(std::string_view(src_).substr(p, n));
    if (chars.size() != 1) return 0;
    return is_py_space(decode_char(chars[0])) ? n : 0;
  }
  size_t skip_spaces(size_t p) const {
    while (size_t n = space_at(p)) p += n;
    return p;
  }
  bool at(size_t p, const char* s) const { return src_.compare(p, std::char_traits<char>::length(s), s) == 0; }

  static std::string rstrip(const std::string& s) {
    auto chars = utf8_chars(s);
    size_t n = chars.size();
    while (n > 0 && is_py_space(decode_char(chars[n - 1]))) --n;
    size_t bytes = 0;
    for (size_t i = 0; i < n; ++i) bytes += chars[i].size();
    return s.substr(0, bytes);
  }

  // The data before a tag, stripped as jinja2 strips it: `-` removes all trailing whitespace;
  // otherwise, for `{%` and `{#` (lstrip_blocks) without `+`, the whitespace between the last
  // newline (or the start of a line) and the tag.
  std::string strip_before(std::string text, char sign, bool lstrip) const {
    if (sign == '-') return rstrip(text);
    if (sign == '+' || !lstrip) return text;
    const size_t nl = text.rfind('\n');
    const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting_) return text;
    if (l_pos == text.size()) return text;
    for (std::string_view ch : utf8_chars(std::string_view(text).substr(l_pos)))
      if (!is_py_space(decode_char(ch))) return text;
    return text.substr(0, l_pos);
  }

  void emit_data(std::string text, size_t off) {
    if (!text.empty()) push(Tok::Data, std::move(text), off);
  }

  // One step in the root state: data up to the next tag, then the tag. False at the end.
  bool root_step() {
    size_t best = std::string::npos;
    for (const char* d : {"{{", "{%", "{#"}) best = std::min(best, src_.find(d, pos_));
    if (best == std::string::npos) {
      emit_data(src_.substr(pos_), pos_);
      pos_ = src_.size();
      return false;
    }
    const std::string text = src_.substr(pos_, best - pos_);
    const char kind = src_[best + 1];
    size_t p = best + 2;
    char sign = 0;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
    if (kind == '%') {  // {% raw %}?
      size_t q = skip_spaces(p);
      if (at(q, "raw")) {
        q = skip_spaces(q + 3);
        if (at(q, "-%}") || at(q, "%}")) {
          emit_data(strip_before(text, sign, true), pos_);
          raw(best, q);
          return true;
        }
      }
    }
    emit_data(strip_before(text, sign, kind != '{'), pos_);
    if (kind == '#') {
      comment(best, p);
    } else {
      push(kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "", best);
      tag(kind, p, best);
    }
    return true;
  }

  // After a `%}`/`#}`: `-` skips all whitespace, `+` nothing, else trim_blocks' one newline.
  size_t after_block_end(size_t p, char sign) const {
    if (sign == '-') return skip_spaces(p);
    if (sign == '+') return p;
    return p < src_.size() && src_[p] == '\n' ? p + 1 : p;
  }

  void comment(size_t begin, size_t p) {
    const size_t end = src_.find("#}", p);
    if (end == std::string::npos) fail(begin, "the comment opened here is never closed with '#}'");
    char sign = 0;
    if (end > p && (src_[end - 1] == '-' || src_[end - 1] == '+')) sign = src_[end - 1];
    pos_ = after_block_end(end + 2, sign);
    line_starting_ = src_[pos_ - 1] == '\n';
  }

  void raw(size_t begin, size_t q) {
    // {% raw %}: no trim_blocks after it; `-%}` strips the whitespace that follows.
    size_t p = at(q, "-%}") ? skip_spaces(q + 3) : q + 2;
    line_starting_ = src_[p - 1] == '\n';
    size_t search = p;
    while (true) {
      const size_t t = src_.find("{%", search);
      if (t == std::string::npos) fail(begin, "the {% raw %} block opened here has no {% endraw %}");
      size_t r = t + 2;
      char sign = 0;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) sign = src_[r++];
      r = skip_spaces(r);
      if (at(r, "endraw")) {
        r = skip_spaces(r + 6);
        char esign = 0;
        if (at(r, "-%}") || at(r, "+%}")) esign = src_[r++];
        if (at(r, "%}")) {
          emit_data(strip_before(src_.substr(p, t - p), sign, true), p);
          pos_ = after_block_end(r + 2, esign);
          line_starting_ = src_[pos_ - 1] == '\n';
          return;
        }
      }
      search = t + 2;
    }
  }

  // The tokens of a {{ ... }} (kind '{') or {% ... %} (kind '%') tag.
  void tag(char kind, size_t p, size_t begin) {
    int depth = 0;  // open ( [ {: an end delimiter inside them is operators (jinja2's balancing)
    while (true) {
      p = skip_spaces(p);
      if (p >= src_.size())
        fail(begin, kind == '{' ? "the '{{' opened here is never closed with '}}'"
                                : "the '{%' opened here is never closed with '%}'");
      if (depth == 0) {
        if (kind == '{') {
          if (at(p, "-}}")) {
            push(Tok::VarEnd, "", p);
            pos_ = skip_spaces(p + 3);
            break;
          }
          if (at(p, "}}")) {
            push(Tok::VarEnd, "", p);
            pos_ = p + 2;
            break;
          }
        } else {
          char sign = 0;
          size_t q = p;
          if (at(q, "-%}") || at(q, "+%}")) sign = src_[q++];
          if (at(q, "%}")) {
            push(Tok::BlockEnd, "", p);
            pos_ = after_block_end(q + 2, sign);
            break;
          }
        }
      }
      p = expr_token(p, depth);
    }
    line_starting_ = src_[pos_ - 1] == '\n';
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }

  // Digits with single underscores between them ((\d+_)*\d+); returns the end, or p if none.
  size_t digits(size_t p) const {
    if (p >= src_.size() || !is_digit(src_[p])) return p;
    while (p < src_.size()) {
      while (p < src_.size() && is_digit(src_[p])) ++p;
      if (p + 1 < src_.size() && src_[p] == '_' && is_digit(src_[p + 1])) {
        ++p;
        continue;
      }
      break;
    }
    return p;
  }

  static std::string no_underscores(const std::string& s) {
    std::string r;
    for (char c : s)
      if (c != '_') r += c;
    return r;
  }

  size_t expr_token(size_t p, int& depth) {
    const char c = src_[p];
    if (is_digit(c)) return number(p);
    if (is_name_start(c)) {
      size_t e = p + 1;
      while (e < src_.size() && (is_name_start(src_[e]) || is_digit(src_[e]))) ++e;
      push(Tok::Name, src_.substr(p, e - p), p);
      return e;
    }
    if (c == '\'' || c == '"') return string_literal(p);
    static const char* const ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                      "]",  "(",  ")",  "{",  "}",  "==", ">", "<", "=", ".", ":", "|", ",", ";"};
    for (const char* op : ops) {
      if (!at(p, op)) continue;
      const char o = op[0];
      if (op[1] == 0 && (o == '(' || o == '[' || o == '{')) ++depth;
      if (op[1] == 0 && (o == ')' || o == ']' || o == '}')) {
        if (depth == 0) fail(p, fmt::format("unexpected '{}'", o));
        --depth;
      }
      push(Tok::Op, op, p);
      return p + std::char_traits<char>::length(op);
    }
    const auto ch = utf8_chars(std::string_view(src_).substr(p, 4));
    fail(p, fmt::format("unexpected character '{}'", ch.empty() ? std::string(1, c) : std::string(ch[0])));
  }

  size_t number(size_t p) {
    // 0x / 0o / 0b integers
    if (src_[p] == '0' && p + 1 < src_.size() && std::string("xXoObB").find(src_[p + 1]) != std::string::npos) {
      const char b = static_cast<char>(std::tolower(src_[p + 1]));
      const int base = b == 'x' ? 16 : b == 'o' ? 8 : 2;
      size_t e = p + 2;
      std::string ds;
      while (e < src_.size() && (std::isxdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) {
        if (src_[e] != '_') ds += src_[e];
        ++e;
      }
      if (!ds.empty()) {
        errno = 0;
        char* endp = nullptr;
        const unsigned long long v = std::strtoull(ds.c_str(), &endp, base);
        if (*endp == 0) {
          if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
            fail(p, "integer literal does not fit 64 bits");
          push(Tok::Int, src_.substr(p, e - p), p).ival = static_cast<int64_t>(v);
          return e;
        }
      }
    }
    const size_t int_end = digits(p);
    size_t e = int_end;
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' && is_digit(src_[e + 1])) {
      e = digits(e + 1);
      is_float = true;
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t q = e + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      const size_t qe = digits(q);
      if (qe > q) {
        e = qe;
        is_float = true;
      }
    }
    const std::string text = no_underscores(src_.substr(p, e - p));
    if (is_float) {
      push(Tok::Float, text, p).fval = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      const long long v = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(p, "integer literal does not fit 64 bits");
      push(Tok::Int, text, p).ival = v;
    }
    return e;
  }

  // A quoted string, decoded as jinja2 does (Python's unicode-escape after backslashreplace).
  size_t string_literal(size_t p) {
    const char q = src_[p];
    size_t e = p + 1;
    while (e < src_.size() && src_[e] != q) e += src_[e] == '\\' ? 2 : 1;
    if (e >= src_.size()) fail(p, fmt::format("unexpected character '{}' (a string that is never closed)", q));
    const std::string body = src_.substr(p + 1, e - p - 1);
    std::string out;
    const auto chars = utf8_chars(body);
    for (size_t i = 0; i < chars.size(); ++i) {
      if (chars[i] != "\\") {
        out += chars[i];
        continue;
      }
      if (i + 1 >= chars.size()) {
        out += '\\';
        break;
      }
      const std::string_view n = chars[++i];
      const char32_t nc = decode_char(n);
      auto hex = [&](size_t count, const char* what) {
        char32_t v = 0;
        for (size_t k = 0; k < count; ++k) {
          if (i + 1 >= chars.size() || chars[i + 1].size() != 1 || !std::isxdigit(static_cast<unsigned char>(chars[i + 1][0])))
            fail(p, fmt::format("truncated {} escape in a string literal", what));
          v = v * 16 + static_cast<char32_t>(std::stoi(std::string(chars[++i]), nullptr, 16));
        }
        if (v > 0x10FFFF) fail(p, "illegal Unicode character escape in a string literal");
        append_utf8(out, v);
      };
      if (nc >= 0x80) {  // backslashreplace turned it into an escape the backslash then quotes
        out += '\\';
        out += nc < 0x100 ? fmt::format("x{:02x}", static_cast<unsigned>(nc))
                          : nc < 0x10000 ? fmt::format("u{:04x}", static_cast<unsigned>(nc))
                                         : fmt::format("U{:08x}", static_cast<unsigned>(nc));
        continue;
      }
      switch (nc) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': hex(2, "\\xXX"); break;
        case 'u': hex(4, "\\uXXXX"); break;
        case 'U': hex(8, "\\UXXXXXXXX"); break;
        case 'N': fail(p, "\\N{...} escapes are not supported in string literals");
        default:
          if (nc >= '0' && nc <= '7') {
            char32_t v = nc - '0';
            for (int k = 0; k < 2 && i + 1 < chars.size() && chars[i + 1].size() == 1 && chars[i + 1][0] >= '0' &&
                            chars[i + 1][0] <= '7';
                 ++k)
              v = v * 8 + (chars[++i][0] - '0');
            append_utf8(out, v);
          } else {
            out += '\\';
            out += n;
          }
      }
    }
    push(Tok::String, std::move(out), p);
    return e + 1;
  }
};

// jinja2: newlines (\r\n, \r, \n) become "\n"; keep_trailing_newline=False drops one at the end.
std::string normalize(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::vector<Token> tokenize(const std::string& source, const std::string& origin) {
  return Lexer(normalize(source), origin).run();
}

}  // namespace primus::data::chat::jinja

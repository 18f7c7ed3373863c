// Filters, tests, methods, operators and lookups with jinja2's (and Python's) semantics: see
// jinja_builtins.h. Each filter follows jinja2 3.1's filters.py (tojson: transformers' override).
#include "data/chat/jinja_builtins.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <unordered_set>

#include "core/error.h"

namespace primus::data::chat::jinja {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("chat template: " + msg); }

std::string type_of(const Value& v) { return v.type_name(); }

thread_local uint64_t g_work = 0;

// A string of `bytes` about to exist: within kMaxStringBytes (check_len), and counted
// against the render's work budget (check_size: call once per string built).
void check_len(size_t bytes) {
  if (bytes > kMaxStringBytes)
    fail(fmt::format("a string would exceed {} MiB (a hostile or runaway template?)", kMaxStringBytes >> 20));
}

void check_size(size_t bytes) {
  g_work += bytes;
  if (g_work > kMaxWorkBytes)
    fail(fmt::format("the template built more than {} GiB of strings (a hostile or runaway template?)", kMaxWorkBytes >> 30));
  if (bytes > kMaxStringBytes)
    fail(fmt::format("a string would exceed {} MiB (a hostile or runaway template?)", kMaxStringBytes >> 20));
}
void check_items(size_t n) {
  if (n > kMaxListItems) fail(fmt::format("a list would exceed {} items (a hostile or runaway template?)", kMaxListItems));
}

// Binds a call's arguments to a Python-style signature (names in order).
class Bind {
 public:
  Bind(const Args& a, std::vector<std::string> names, std::string what) : names_(std::move(names)), what_(std::move(what)) {
    vals_.resize(names_.size(), nullptr);
    if (a.pos.size() > names_.size())
      fail(fmt::format("{} takes at most {} argument(s) ({} given)", what_, names_.size(), a.pos.size()));
    for (size_t i = 0; i < a.pos.size(); ++i) vals_[i] = &a.pos[i];
    for (const auto& [k, v] : a.kw) {
      const auto it = std::find(names_.begin(), names_.end(), k);
      if (it == names_.end()) fail(fmt::format("{} got an unexpected keyword argument '{}'", what_, k));
      const size_t i = it - names_.begin();
      if (vals_[i]) fail(fmt::format("{} got multiple values for argument '{}'", what_, k));
      vals_[i] = &v;
    }
  }
  const Value* get(size_t i) const { return vals_[i]; }
  bool has(size_t i) const { return vals_[i] && !vals_[i]->is_none(); }
  const Value& req(size_t i) const {
    if (!vals_[i]) fail(fmt::format("{} missing required argument '{}'", what_, names_[i]));
    return *vals_[i];
  }
  bool flag(size_t i, bool def) const { return vals_[i] ? vals_[i]->truthy() : def; }
  std::string str(size_t i, const std::string& def) const {
    if (!vals_[i]) return def;
    if (!vals_[i]->is_string()) fail(fmt::format("{}: argument '{}' must be a string, not {}", what_, names_[i], type_of(*vals_[i])));
    return vals_[i]->str();
  }
  int64_t integer(size_t i, int64_t def) const {
    if (!vals_[i] || vals_[i]->is_none()) return def;
    if (!vals_[i]->is_int()) fail(fmt::format("{}: argument '{}' must be an integer, not {}", what_, names_[i], type_of(*vals_[i])));
    return vals_[i]->as_int();
  }

 private:
  std::vector<std::string> names_;
  std::string what_;
  std::vector<const Value*> vals_;
};

// ---- string helpers (code points, Python semantics) --------------------------------------

using Chars = std::vector<std::string_view>;

std::string join_chars(const Chars& c, size_t from = 0, size_t to = std::string::npos) {
  std::string out;
  to = std::min(to, c.size());
  for (size_t i = from; i < to; ++i) out += c[i];
  return out;
}

std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  const Chars c = utf8_chars(s);
  std::set<std::string_view> set;
  const bool ws = !chars || chars->is_none();
  std::string keep;
  if (!ws) {
    if (!chars->is_string()) fail(fmt::format("strip arg must be None or str, not {}", type_of(*chars)));
    keep = chars->str();
    for (auto ch : utf8_chars(keep)) set.insert(ch);
  }
  auto strip_it = [&](std::string_view ch) { return ws ? is_py_space(decode_char(ch)) : set.count(ch) > 0; };
  size_t b = 0, e = c.size();
  if (left)
    while (b < e && strip_it(c[b])) ++b;
  if (right)
    while (e > b && strip_it(c[e - 1])) --e;
  return join_chars(c, b, e);
}

std::string py_upper(const std::string& s) { return upper_string(s); }
std::string py_lower(const std::string& s) { return lower_string(s); }

std::string py_capitalize(const std::string& s) {
  const Chars c = utf8_chars(s);
  if (c.empty()) return s;
  std::string out = title_char(c[0]);
  for (size_t i = 1; i < c.size(); ++i) out += lower_char_at(c, i);
  return out;
}

// str.title(): a cased character after an uncased one starts a word.
std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  const Chars c = utf8_chars(s);
  for (size_t i = 0; i < c.size(); ++i) {
    out += prev_cased ? lower_char_at(c, i) : title_char(c[i]);
    prev_cased = is_cased(c[i]);
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
  std::string out;
  if (count < 0) count = INT64_MAX;
  if (old.empty()) {  // inserted before every character and at the end
    const Chars c = utf8_chars(s);
    int64_t n = 0;
    for (size_t i = 0; i <= c.size(); ++i) {
      if (n < count) {
        out += rep;
        ++n;
      }
      if (i < c.size()) out += c[i];
      check_len(out.size());
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (n < count) {
    const size_t f = s.find(old, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += rep;
    check_len(out.size());
    pos = f + old.size();
    ++n;
  }
  out.append(s, pos);
  check_size(out.size());
  return out;
}

List py_split(const std::string& s, const Value* sep, int64_t maxsplit) {
  List out;
  if (maxsplit < 0) maxsplit = INT64_MAX;
  if (!sep || sep->is_none()) {
    const Chars c = utf8_chars(s);
    size_t i = 0;
    int64_t n = 0;
    while (true) {
      while (i < c.size() && is_py_space(decode_char(c[i]))) ++i;
      if (i >= c.size()) break;
      if (n >= maxsplit) {  // the rest as it is (its trailing whitespace kept, as Python does)
        out.push_back(Value::string(join_chars(c, i)));
        break;
      }
      size_t j = i;
      while (j < c.size() && !is_py_space(decode_char(c[j]))) ++j;
      out.push_back(Value::string(join_chars(c, i, j)));
      ++n;
      i = j;
    }
    return out;
  }
  if (!sep->is_string()) fail(fmt::format("split: must be str or None, not {}", type_of(*sep)));
  const std::string& d = sep->str();
  if (d.empty()) fail("split: empty separator");
  size_t pos = 0;
  int64_t n = 0;
  while (n < maxsplit) {
    const size_t f = s.find(d, pos);
    if (f == std::string::npos) break;
    out.push_back(Value::string(s.substr(pos, f - pos)));
    pos = f + d.size();
    ++n;
    check_items(out.size());
  }
  out.push_back(Value::string(s.substr(pos)));
  return out;
}

// str.splitlines() boundaries.
bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> out;
  const Chars c = utf8_chars(s);
  size_t i = 0, start = 0;
  while (i < c.size()) {
    const char32_t cp = decode_char(c[i]);
    if (!is_line_break(cp)) {
      ++i;
      continue;
    }
    size_t e = i + 1;
    if (cp == '\r' && e < c.size() && c[e] == "\n") ++e;
    out.push_back(join_chars(c, start, keepends ? e : i));
    start = i = e;
  }
  if (start < c.size()) out.push_back(join_chars(c, start));
  return out;
}

int64_t char_index(const std::string& s, size_t byte_pos) {
  return static_cast<int64_t>(utf8_chars(std::string_view(s).substr(0, byte_pos)).size());
}

// a OP b on int64, or a primus::Error naming the operator when Python's result would not fit.
int64_t checked(char op, int64_t a, int64_t b) {
  int64_t r = 0;
  const bool overflow = op == '+' ? __builtin_add_overflow(a, b, &r)
                        : op == '-' ? __builtin_sub_overflow(a, b, &r)
                                    : __builtin_mul_overflow(a, b, &r);
  if (overflow) fail(fmt::format("integer overflow in '{}' (beyond 64 bits)", op == '*' ? "*" : op == '+' ? "+" : "-"));
  return r;
}

int64_t floordiv_int(int64_t a, int64_t b) {
  if (b == -1 && a == INT64_MIN) fail("integer overflow in '//' (beyond 64 bits)");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t mod_int(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t m = a % b;
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}
// Python's float divmod.
void divmod_float(double a, double b, double& div, double& mod) {
  mod = std::fmod(a, b);
  div = (a - mod) / b;
  if (mod != 0) {
    if ((b < 0) != (mod < 0)) {
      mod += b;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, b);
  }
  if (div != 0) {
    double fl = std::floor(div);
    if (div - fl > 0.5) fl += 1.0;
    div = fl;
  } else {
    div = std::copysign(0.0, a / b);
  }
}

Value repeat(const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    if (n > 0 && seq.str().size() > kMaxStringBytes / static_cast<uint64_t>(n)) check_size(kMaxStringBytes + 1);
    check_size(seq.str().size() * static_cast<uint64_t>(n));
    std::string out;
    out.reserve(seq.str().size() * n);
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value::string(std::move(out));
  }
  if (n > 0 && seq.items().size() > kMaxListItems / static_cast<uint64_t>(n)) check_items(kMaxListItems + 1);
  List out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return seq.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_of(a), type_of(b)));
}

// jinja2's make_attrgetter: "a.b.0" looked up part by part with getitem.
Value attr_path(const Value& item, const std::string& path) {
  Value v = item;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = get_item(v, digits && part.size() < 18 ? Value::integer(std::stoll(part)) : Value::string(part));
    if (dot == std::string::npos) return v;
    pos = dot + 1;
  }
}

// A hashable key for unique(): equal Python values (1, 1.0, True) give equal keys.
std::string hash_key(const Value& v) {
  auto tagged = [](char tag, std::string s) {  // (not "i" + s: GCC 12's -Wrestrict false positive)
    s.insert(s.begin(), tag);
    return s;
  };
  switch (v.kind()) {
    case Value::Kind::None: return "n";
    case Value::Kind::Bool: case Value::Kind::Int: return tagged('i', std::to_string(v.as_int()));
    case Value::Kind::Float: {
      const double f = v.as_double();
      if (std::floor(f) == f && std::fabs(f) < 9e18) return tagged('i', std::to_string(static_cast<int64_t>(f)));
      return tagged('f', float_repr(f));
    }
    case Value::Kind::String: return "s" + v.str();
    case Value::Kind::Tuple: {
      std::string k = "t(";
      for (const auto& x : v.items()) k += hash_key(x) + "\x1f";
      return k + ")";
    }
    default: fail(fmt::format("unhashable type: '{}'", type_of(v)));
  }
}

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(py_lower(v.str()));
  return v;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python float(str): decimal literals, inf/nan, surrounding whitespace, underscores between digits.
bool parse_py_float(const std::string& raw, double& out) {
  std::string s = py_strip(raw, nullptr, true, true);
  std::string t;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(s[i + 1])))
        return false;
      continue;
    }
    t += s[i];
  }
  if (t.empty() || t.find_first_of("xXpP") != std::string::npos) return false;
  std::string lower = py_lower(t);
  const std::string body = (lower[0] == '+' || lower[0] == '-') ? lower.substr(1) : lower;
  if (body == "inf" || body == "infinity" || body == "nan") {
    out = body == "nan" ? NAN : (lower[0] == '-' ? -INFINITY : INFINITY);
    return true;
  }
  if (body.find_first_not_of("0123456789.e+-") != std::string::npos) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(t.c_str(), &end);
  return end && *end == 0;
}

// Python int(str, base): sign, a 0x/0o/0b prefix where the base allows it (base 0: the
// prefix picks the base, and a decimal may not start with 0), single underscores between digits.
bool parse_py_int(const std::string& raw, int64_t base, int64_t& out) {
  if (base < 0 || base == 1 || base > 36) fail("int() base must be >= 2 and <= 36, or 0");
  const std::string t = py_strip(raw, nullptr, true, true);
  size_t p = 0;
  bool neg = false;
  if (p < t.size() && (t[p] == '+' || t[p] == '-')) neg = t[p++] == '-';
  int b = static_cast<int>(base);
  bool prefixed = false;
  if (p + 1 < t.size() && t[p] == '0') {
    const char x = static_cast<char>(std::tolower(static_cast<unsigned char>(t[p + 1])));
    const int pb = x == 'x' ? 16 : x == 'o' ? 8 : x == 'b' ? 2 : 0;
    if (pb && (b == 0 || b == pb)) {
      b = pb;
      p += 2;
      prefixed = true;
    }
  }
  if (b == 0) {
    b = 10;
    if (p < t.size() && t[p] == '0' && t.find_first_not_of("0_", p) != std::string::npos) return false;
  }
  unsigned __int128 v = 0;
  bool any = false, last_underscore = prefixed;  // an underscore may follow the prefix
  for (; p < t.size(); ++p) {
    const char c = t[p];
    if (c == '_') {
      if (!any && !prefixed) return false;
      if (last_underscore && any) return false;
      last_underscore = true;
      continue;
    }
    const int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                  : std::isalpha(static_cast<unsigned char>(c)) ? std::tolower(static_cast<unsigned char>(c)) - 'a' + 10
                                                                : 99;
    if (d >= b) return false;
    v = v * b + d;
    if (v > static_cast<unsigned __int128>(INT64_MAX) + 1) fail("int(): the number does not fit 64 bits");
    any = true;
    last_underscore = false;
  }
  if (!any || last_underscore) return false;
  if (!neg && v > static_cast<unsigned __int128>(INT64_MAX)) fail("int(): the number does not fit 64 bits");
  out = neg ? static_cast<int64_t>(-static_cast<__int128>(v)) : static_cast<int64_t>(v);
  return true;
}

Value round_value(const Value& v, int64_t precision, const std::string& method) {
  if (method != "common" && method != "ceil" && method != "floor")
    fail("round: method must be common, ceil or floor");
  if (!v.is_number()) fail(fmt::format("round: must be a number, not {}", type_of(v)));
  if (method != "common") {
    const double scale = std::pow(10.0, static_cast<double>(precision));
    const double x = v.as_double() * scale;
    return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
  }
  if (v.kind() != Value::Kind::Float) {
    if (precision >= 0) return Value::integer(v.as_int());
    const double scale = std::pow(10.0, static_cast<double>(-precision));
    return Value::integer(static_cast<int64_t>(std::nearbyint(static_cast<double>(v.as_int()) / scale) * scale));
  }
  const double f = v.as_double();
  if (!std::isfinite(f)) return v;
  if (precision == 0) return Value::number(std::nearbyint(f));
  if (precision > 0) {
    if (precision > 300) return v;
    const std::string s = fmt::format("{:.{}f}", f, static_cast<int>(precision));  // correctly rounded, half-even
    return Value::number(std::strtod(s.c_str(), nullptr));
  }
  const double scale = std::pow(10.0, static_cast<double>(-precision));
  return Value::number(std::nearbyint(f / scale) * scale);
}

Value to_int_filter(const Value& v, const Value* def, int64_t base) {
  const Value fallback = def ? *def : Value::integer(0);
  switch (v.kind()) {
    case Value::Kind::Bool: case Value::Kind::Int: return Value::integer(v.as_int());
    case Value::Kind::Float: {
      const double f = v.as_double();
      if (std::isnan(f)) fail("int(): cannot convert float NaN to integer");
      if (!(std::fabs(f) < 9.2e18)) fail("int(): the number does not fit 64 bits");
      return Value::integer(static_cast<int64_t>(f));
    }
    case Value::Kind::String: {
      int64_t i;
      if (parse_py_int(v.str(), base, i)) return Value::integer(i);
      double f;
      if (parse_py_float(v.str(), f)) {
        if (std::isnan(f) || std::isinf(f)) fail("int(): cannot convert an infinite or NaN float to integer");
        if (!(std::fabs(f) < 9.2e18)) fail("int(): the number does not fit 64 bits");
        return Value::integer(static_cast<int64_t>(f));
      }
      return fallback;
    }
    default: return fallback;
  }
}

JsonOptions json_options(const Bind& b) {
  JsonOptions o;
  o.ensure_ascii = b.flag(0, false);
  if (b.has(1)) {
    const Value& ind = *b.get(1);
    o.has_indent = true;
    if (ind.is_string()) o.indent = ind.str();
    else if (ind.is_int()) o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(ind.as_int(), 0, 1024)), ' ');
    else fail(fmt::format("tojson: indent must be an int or a str, not {}", type_of(ind)));
  }
  if (b.has(2)) {
    const Value& sep = *b.get(2);
    if (!sep.is_list_like() || sep.items().size() != 2 || !sep.items()[0].is_string() || !sep.items()[1].is_string())
      fail("tojson: separators must be a pair of strings, e.g. (',', ': ')");
    o.has_separators = true;
    o.item_sep = sep.items()[0].str();
    o.key_sep = sep.items()[1].str();
  }
  o.sort_keys = b.flag(3, false);
  return o;
}

int64_t length_of(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(utf8_chars(v.str()).size());
    case Value::Kind::List: case Value::Kind::Tuple: return static_cast<int64_t>(v.items().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict().entries.size());
    case Value::Kind::Loop: return static_cast<int64_t>(v.loop_info().items->size());
    default: fail(fmt::format("object of type '{}' has no len()", type_of(v)));
  }
}

List select_or_reject(const Value& seq, const Args& a, bool by_attr, bool select, const char* name) {
  List out;
  size_t first_test = by_attr ? 1 : 0;
  std::string attr;
  if (by_attr) {
    if (a.pos.empty() || !a.pos[0].is_string()) fail(fmt::format("{}: the first argument must be an attribute name", name));
    attr = a.pos[0].str();
  }
  std::string test;
  Args targs;
  if (a.pos.size() > first_test) {
    if (!a.pos[first_test].is_string()) fail(fmt::format("{}: the test name must be a string", name));
    test = a.pos[first_test].str();
    if (!is_test(test)) fail(fmt::format("{}: no test named '{}'", name, test));
    targs.pos.assign(a.pos.begin() + first_test + 1, a.pos.end());
    targs.kw = a.kw;
  }
  for (const Value& item : iterate(seq)) {
    const Value v = by_attr ? attr_path(item, attr) : item;
    const bool ok = test.empty() ? v.truthy() : apply_test(test, v, targs);
    if (ok == select) out.push_back(item);
  }
  return out;
}

const std::set<std::string>& filters() {
  static const std::set<std::string> f = {
      "abs", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "indent", "int",
      "items", "join", "last", "length", "list", "lower", "map", "reject", "rejectattr", "replace", "reverse",
      "round", "safe", "select", "selectattr", "sort", "string", "title", "tojson", "trim", "unique", "upper",
      "wordcount"};
  return f;
}

const std::set<std::string>& tests() {
  static const std::set<std::string> t = {
      "!=", "<", "<=", "==", ">", ">=", "boolean", "callable", "defined", "divisibleby", "eq", "equalto",
      "even", "false", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan",
      "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "true",
      "undefined", "upper"};
  return t;
}

std::string joined(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

const std::set<std::string>& str_methods() {
  static const std::set<std::string> m = {"strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper",
                                          "lower", "replace", "title", "capitalize", "find", "rfind", "count",
                                          "join", "splitlines", "isdigit", "isspace", "isalpha", "isalnum"};
  return m;
}
// Python methods templates may name that are not implemented (a call names them); the
// sandbox's mutators (append, update, ...) are refused as transformers' sandbox refuses them.
const std::set<std::string>& known_unsupported(Value::Kind k) {
  static const std::set<std::string> s = {"format", "center", "ljust", "rjust", "zfill", "partition", "rpartition",
                                          "rsplit", "expandtabs", "encode", "casefold", "swapcase", "index", "rindex",
                                          "isupper", "islower", "istitle", "isnumeric", "isdecimal", "isidentifier",
                                          "isprintable", "format_map", "translate", "maketrans", "removeprefix",
                                          "removesuffix", "isascii"};
  static const std::set<std::string> l = {"append", "extend", "insert", "pop", "remove", "sort", "reverse", "clear",
                                          "copy"};
  static const std::set<std::string> d = {"pop", "popitem", "setdefault", "update", "clear", "copy", "fromkeys"};
  static const std::set<std::string> none;
  return k == Value::Kind::String ? s : k == Value::Kind::Dict ? d : k == Value::Kind::List ? l : none;
}

Value method(const Value& self, const std::string& name) {
  auto c = std::make_shared<Callable>();
  c->type = Callable::Type::Method;
  c->name = name;
  c->self = self;
  return Value::callable(std::move(c));
}

Value no_attribute(const Value& obj, const std::string& name) {
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_of(obj), name));
}

}  // namespace

void reset_work_budget() { g_work = 0; }

[[noreturn]] void undefined_error(const Value& v) {
  fail(v.str().empty() ? std::string("an undefined value was used") : v.str());
}

bool is_filter(const std::string& name) { return filters().count(name) > 0; }
bool is_test(const std::string& name) { return tests().count(name) > 0; }
std::string filter_names() { return joined(filters()); }
std::string test_names() { return joined(tests()); }

List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: case Value::Kind::Tuple: return v.items();
    case Value::Kind::Dict: {
      List keys;
      for (const auto& e : v.dict().entries) keys.push_back(e.first);
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      for (auto ch : utf8_chars(v.str())) chars.push_back(Value::string(std::string(ch)));
      return chars;
    }
    case Value::Kind::Loop: return *v.loop_info().items;
    default: fail(fmt::format("'{}' object is not iterable", type_of(v)));
  }
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::String:
      if (!item.is_string())
        fail(fmt::format("'in <string>' requires string as left operand, not {}", type_of(item)));
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::List: case Value::Kind::Tuple:
      for (const auto& x : container.items())
        if (equals(x, item)) return true;
      return false;
    case Value::Kind::Dict: return container.dict().find(item) != nullptr;
    case Value::Kind::Undefined: return false;
    default: fail(fmt::format("argument of type '{}' is not iterable", type_of(container)));
  }
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string s = to_str(a);
    s += to_str(b);
    check_size(s.size());
    return Value::string(std::move(s));
  }
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  const bool ints = a.is_int() && b.is_int();
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) return Value::integer(checked('+', a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      check_size(a.str().size() + b.str().size());
      return Value::string(a.str() + b.str());
    }
    if (a.is_list_like() && a.kind() == b.kind()) {
      check_items(a.items().size() + b.items().size());
      List out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    bad_operands(op, a, b);
  }
  if (op == "-") {
    if (ints) return Value::integer(checked('-', a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_double() - b.as_double());
    bad_operands(op, a, b);
  }
  if (op == "*") {
    if (ints) return Value::integer(checked('*', a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_list_like()) && b.is_int()) return repeat(a, b.as_int());
    if (a.is_int() && (b.is_string() || b.is_list_like())) return repeat(b, a.as_int());
    bad_operands(op, a, b);
  }
  if (!nums) {
    if (op == "%" && a.is_string())
      fail("printf-style string formatting ('...' % args) is not supported by the chat-template renderer");
    bad_operands(op, a, b);
  }
  if (op == "/") {
    if (b.as_double() == 0) fail("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (ints) {
      if (b.as_int() == 0) fail(op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
      return Value::integer(op == "//" ? floordiv_int(a.as_int(), b.as_int()) : mod_int(a.as_int(), b.as_int()));
    }
    if (b.as_double() == 0) fail(op == "//" ? "float floor division by zero" : "float modulo");
    double div, mod;
    divmod_float(a.as_double(), b.as_double(), div, mod);
    return Value::number(op == "//" ? div : mod);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), e = b.as_int(), acc = 1;
      while (e > 0) {
        if (e & 1) acc = checked('*', acc, base);
        e >>= 1;
        if (e > 0) base = checked('*', base, base);
      }
      return Value::integer(acc);
    }
    const double x = a.as_double(), y = b.as_double();
    if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
    if (x < 0 && std::floor(y) != y) fail("a negative number raised to a fractional power is complex (not supported)");
    return Value::number(std::pow(x, y));
  }
  fail("unknown operator '" + op + "'");
}

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Dict: {
      if (name == "items" || name == "keys" || name == "values" || name == "get" ||
          known_unsupported(Value::Kind::Dict).count(name))
        return method(obj, name);
      const Value* v = obj.dict().find(Value::string(name));
      return v ? *v : no_attribute(obj, name);
    }
    case Value::Kind::Namespace: {
      const Value* v = obj.dict().find(Value::string(name));
      return v ? *v : no_attribute(obj, name);
    }
    case Value::Kind::String:
      if (str_methods().count(name) || known_unsupported(Value::Kind::String).count(name)) return method(obj, name);
      return no_attribute(obj, name);
    case Value::Kind::List: case Value::Kind::Tuple:
      if (name == "index" || name == "count" || (obj.kind() == Value::Kind::List && known_unsupported(Value::Kind::List).count(name)))
        return method(obj, name);
      return no_attribute(obj, name);
    case Value::Kind::Loop: {
      const LoopInfo& l = obj.loop_info();
      const auto n = static_cast<int64_t>(l.items->size());
      if (name == "index") return Value::integer(l.index0 + 1);
      if (name == "index0") return Value::integer(l.index0);
      if (name == "revindex") return Value::integer(n - l.index0);
      if (name == "revindex0") return Value::integer(n - l.index0 - 1);
      if (name == "first") return Value::boolean(l.index0 == 0);
      if (name == "last") return Value::boolean(l.index0 == n - 1);
      if (name == "length") return Value::integer(n);
      if (name == "depth") return Value::integer(1);
      if (name == "depth0") return Value::integer(0);
      if (name == "previtem")
        return l.index0 > 0 ? (*l.items)[l.index0 - 1] : Value::undefined("there is no previous item");
      if (name == "nextitem")
        return l.index0 + 1 < n ? (*l.items)[l.index0 + 1] : Value::undefined("there is no next item");
      if (name == "cycle" || name == "changed") return method(obj, name);
      return no_attribute(obj, name);
    }
    default: return no_attribute(obj, name);
  }
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Dict: {
      if (const Value* v = obj.dict().find(key)) return *v;
      break;
    }
    case Value::Kind::List: case Value::Kind::Tuple: case Value::Kind::String: {
      if (!key.is_int()) break;
      int64_t i = key.as_int();
      if (obj.is_string()) {
        const Chars c = utf8_chars(obj.str());
        const auto n = static_cast<int64_t>(c.size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return Value::string(std::string(c[i]));
      } else {
        const auto n = static_cast<int64_t>(obj.items().size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return obj.items()[i];
      }
      return Value::undefined(fmt::format("'{} object' has no element {}", type_of(obj), key.as_int()));
    }
    default: break;
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value::undefined(fmt::format("'{} object' has no element {}", type_of(obj), to_repr(key)));
}

Value slice(const Value& obj, const Value* start, const Value* stop, const Value* step) {
  if (obj.is_undefined()) undefined_error(obj);
  auto bound = [](const Value* v, bool& ok) -> std::optional<int64_t> {
    if (!v || v->is_none()) return std::nullopt;
    if (!v->is_int()) ok = false;
    return v->is_int() ? std::optional<int64_t>(v->as_int()) : std::nullopt;
  };
  bool ok = obj.is_string() || obj.is_list_like();
  auto b = bound(start, ok), e = bound(stop, ok), s = bound(step, ok);
  if (!ok) return Value::undefined(fmt::format("'{} object' cannot be sliced like that", type_of(obj)));
  const int64_t st = s.value_or(1);
  if (st == 0) fail("slice step cannot be zero");
  Chars chars;
  int64_t n;
  if (obj.is_string()) {
    chars = utf8_chars(obj.str());
    n = static_cast<int64_t>(chars.size());
  } else {
    n = static_cast<int64_t>(obj.items().size());
  }
  auto clamp = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t from = clamp(b, st < 0 ? n - 1 : 0), to = clamp(e, st < 0 ? -1 : n);
  std::vector<int64_t> idx;
  if (st > 0)
    for (int64_t i = from; i < to; i += st) idx.push_back(i);
  else
    for (int64_t i = from; i > to; i += st) idx.push_back(i);
  if (obj.is_string()) {
    std::string out;
    for (auto i : idx) out += chars[i];
    return Value::string(std::move(out));
  }
  List out;
  for (auto i : idx) out.push_back(obj.items()[i]);
  return obj.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

bool apply_test(const std::string& name, const Value& v, const Args& a) {
  using K = Value::Kind;
  const std::string what = "test '" + name + "'";
  auto other = [&]() -> const Value& { return Bind(a, {"other"}, what).req(0); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind() == K::Int;
  if (name == "float") return v.kind() == K::Float;
  if (name == "boolean") return v.kind() == K::Bool;
  if (name == "true") return v.kind() == K::Bool && v.as_bool();
  if (name == "false") return v.kind() == K::Bool && !v.as_bool();
  if (name == "mapping") return v.kind() == K::Dict;
  if (name == "iterable")
    return v.is_string() || v.is_list_like() || v.kind() == K::Dict || v.is_undefined() || v.kind() == K::Loop;
  if (name == "sequence") return v.is_string() || v.is_list_like() || v.kind() == K::Dict || v.is_undefined();
  if (name == "callable") return v.kind() == K::Callable;
  if (name == "lower") return v.is_string() && py_lower(v.str()) == v.str() && py_upper(v.str()) != v.str();
  if (name == "upper") return v.is_string() && py_upper(v.str()) == v.str() && py_lower(v.str()) != v.str();
  if (name == "even" || name == "odd") {
    const Value m = binary_op("%", v, Value::integer(2));
    return equals(m, Value::integer(name == "even" ? 0 : 1));
  }
  if (name == "divisibleby") return equals(binary_op("%", v, Bind(a, {"num"}, what).req(0)), Value::integer(0));
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, other());
  if (name == "ne" || name == "!=") return !equals(v, other());
  if (name == "lt" || name == "<" || name == "lessthan") {
    if (v.is_undefined()) undefined_error(v);
    return less(v, other());
  }
  if (name == "gt" || name == ">" || name == "greaterthan") {
    if (v.is_undefined()) undefined_error(v);
    return less(other(), v);
  }
  if (name == "le" || name == "<=") {
    if (v.is_undefined()) undefined_error(v);
    return !less(other(), v);
  }
  if (name == "ge" || name == ">=") {
    if (v.is_undefined()) undefined_error(v);
    return !less(v, other());
  }
  if (name == "in") return contains(Bind(a, {"seq"}, what).req(0), v);
  if (name == "sameas") {
    const Value& o = other();
    if (v.kind() != o.kind()) return false;
    switch (v.kind()) {
      case K::None: case K::Undefined: return true;
      case K::Bool: return v.as_bool() == o.as_bool();
      case K::List: case K::Tuple: return v.list_ptr() == o.list_ptr();
      case K::Dict: case K::Namespace: return v.dict_ptr() == o.dict_ptr();
      default: return false;
    }
  }
  fail("no test named '" + name + "'");
}

Value apply_filter(const std::string& name, const Value& v, const Args& a) {
  const std::string what = "filter '" + name + "'";
  if (name == "trim") {
    Bind b(a, {"chars"}, what);
    return Value::string(py_strip(to_str(v), b.get(0), true, true));
  }
  if (name == "length" || name == "count") {
    Bind b(a, {}, what);
    return Value::integer(length_of(v));
  }
  if (name == "tojson") {
    Bind b(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, what);
    std::string s = to_json(v, json_options(b));
    check_size(s.size());
    return Value::string(std::move(s));
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
    Bind b(a, {}, what);
    const std::string s = to_str(v);
    if (name == "upper") return Value::string(py_upper(s));
    if (name == "lower") return Value::string(py_lower(s));
    if (name == "capitalize") return Value::string(py_capitalize(s));
    // jinja2's title: each piece split at runs of -, whitespace, (, {, [, < gets its first
    // character upper-cased and the rest lower-cased.
    std::string out;
    const Chars c = utf8_chars(s);
    auto is_sep = [](std::string_view ch) {
      const char32_t cp = decode_char(ch);
      return is_py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    };
    size_t i = 0;
    while (i < c.size()) {
      const bool sep = is_sep(c[i]);
      size_t j = i;
      while (j < c.size() && is_sep(c[j]) == sep) ++j;
      out += upper_char(c[i]);
      out += lower_string(join_chars(c, i + 1, j));
      i = j;
    }
    return Value::string(std::move(out));
  }
  if (name == "default" || name == "d") {
    Bind b(a, {"default_value", "boolean"}, what);
    if (v.is_undefined() || (b.flag(1, false) && !v.truthy())) return b.get(0) ? *b.get(0) : Value::string("");
    return v;
  }
  if (name == "join") {
    Bind b(a, {"d", "attribute"}, what);
    const std::string sep = b.get(0) ? to_str(*b.get(0)) : "";
    std::string out;
    bool first = true;
    for (const Value& item : iterate(v)) {
      if (!first) out += sep;
      first = false;
      out += to_str(b.has(1) ? attr_path(item, to_str(*b.get(1))) : item);
      check_len(out.size());
    }
    check_size(out.size());
    return Value::string(std::move(out));
  }
  if (name == "replace") {
    Bind b(a, {"old", "new", "count"}, what);
    return Value::string(py_replace(to_str(v), to_str(b.req(0)), to_str(b.req(1)), b.integer(2, -1)));
  }
  if (name == "first" || name == "last") {
    Bind b(a, {}, what);
    if (!v.is_undefined() && !v.is_string() && !v.is_list_like() && v.kind() != Value::Kind::Dict &&
        v.kind() != Value::Kind::Loop)
      fail(fmt::format("'{}' object is not iterable", type_of(v)));
    List items = iterate(v);
    if (items.empty()) return Value::undefined(fmt::format("No {} item, sequence was empty.", name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    Bind b(a, {}, what);
    return Value::list(iterate(v));
  }
  if (name == "string") {
    Bind b(a, {}, what);
    return Value::string(to_str(v));
  }
  if (name == "int") {
    Bind b(a, {"default", "base"}, what);
    return to_int_filter(v, b.get(0), b.integer(1, 10));
  }
  if (name == "float") {
    Bind b(a, {"default"}, what);
    if (v.is_number()) return Value::number(v.as_double());
    double f;
    if (v.is_string() && parse_py_float(v.str(), f)) return Value::number(f);
    return b.get(0) ? *b.get(0) : Value::number(0.0);
  }
  if (name == "abs") {
    Bind b(a, {}, what);
    if (v.kind() == Value::Kind::Float) return Value::number(std::fabs(v.as_double()));
    if (v.is_int()) {
      if (v.as_int() == INT64_MIN) fail("integer overflow in abs (beyond 64 bits)");
      return Value::integer(std::llabs(v.as_int()));
    }
    if (v.is_undefined()) undefined_error(v);
    fail(fmt::format("bad operand type for abs(): '{}'", type_of(v)));
  }
  if (name == "round") {
    Bind b(a, {"precision", "method"}, what);
    if (v.is_undefined()) undefined_error(v);
    return round_value(v, b.integer(0, 0), b.str(1, "common"));
  }
  if (name == "items") {
    Bind b(a, {}, what);
    if (v.is_undefined()) return Value::list({});
    if (v.kind() != Value::Kind::Dict) fail("items: can only get item pairs from a mapping");
    List out;
    for (const auto& [k, x] : v.dict().entries) out.push_back(Value::tuple({k, x}));
    return Value::list(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr")
    return Value::list(select_or_reject(v, a, true, name == "selectattr", name.c_str()));
  if (name == "select" || name == "reject")
    return Value::list(select_or_reject(v, a, false, name == "select", name.c_str()));
  if (name == "map") {
    List out;
    const Value* attr = nullptr;
    const Value* def = nullptr;
    for (const auto& [k, x] : a.kw) {
      if (k == "attribute") attr = &x;
      else if (k == "default") def = &x;
      else if (a.pos.empty()) fail(fmt::format("map: unexpected keyword argument '{}'", k));
    }
    if (attr) {
      if (!a.pos.empty()) fail("map: positional arguments cannot be combined with attribute=");
      for (const Value& item : iterate(v)) {
        Value x = attr_path(item, to_str(*attr));
        out.push_back(x.is_undefined() && def ? *def : x);
      }
      return Value::list(std::move(out));
    }
    if (a.pos.empty() || !a.pos[0].is_string()) fail("map: needs a filter name or attribute=");
    const std::string f = a.pos[0].str();
    if (!is_filter(f)) fail(fmt::format("map: no filter named '{}'", f));
    Args rest;
    rest.pos.assign(a.pos.begin() + 1, a.pos.end());
    rest.kw = a.kw;
    for (const Value& item : iterate(v)) out.push_back(apply_filter(f, item, rest));
    return Value::list(std::move(out));
  }
  if (name == "unique") {
    Bind b(a, {"case_sensitive", "attribute"}, what);
    const bool cs = b.flag(0, false);
    List out;
    std::unordered_set<std::string> seen;
    for (const Value& item : iterate(v)) {
      const Value key = sort_key(b.has(1) ? attr_path(item, to_str(*b.get(1))) : item, cs);
      if (seen.insert(hash_key(key)).second) out.push_back(item);
    }
    return Value::list(std::move(out));
  }
  if (name == "reverse") {
    Bind b(a, {}, what);
    if (v.is_string()) {
      Chars c = utf8_chars(v.str());
      std::reverse(c.begin(), c.end());
      return Value::string(join_chars(c));
    }
    List items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "sort") {
    Bind b(a, {"reverse", "case_sensitive", "attribute"}, what);
    const bool rev = b.flag(0, false), cs = b.flag(1, false);
    List items = iterate(v);
    std::vector<std::pair<Value, Value>> keyed;
    for (auto& item : items) keyed.emplace_back(sort_key(b.has(2) ? attr_path(item, to_str(*b.get(2))) : item, cs), item);
    if (rev) std::reverse(keyed.begin(), keyed.end());
    std::stable_sort(keyed.begin(), keyed.end(), [](const auto& x, const auto& y) { return less(x.first, y.first); });
    if (rev) std::reverse(keyed.begin(), keyed.end());
    List out;
    for (auto& k : keyed) out.push_back(std::move(k.second));
    return Value::list(std::move(out));
  }
  if (name == "safe") {
    Bind b(a, {}, what);
    return v.is_undefined() ? Value::string("") : v;
  }
  if (name == "e" || name == "escape") {
    Bind b(a, {}, what);
    return Value::string(html_escape(to_str(v)));
  }
  if (name == "wordcount") {
    Bind b(a, {}, what);
    int64_t n = 0;
    bool in_word = false;
    const std::string text = to_str(v);
    for (auto ch : utf8_chars(text)) {
      const char32_t c = decode_char(ch);
      const bool w = is_py_alnum(c) || c == '_';
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::integer(n);
  }
  if (name == "indent") {
    Bind b(a, {"width", "first", "blank"}, what);
    if (v.is_undefined()) undefined_error(v);
    if (!v.is_string()) bad_operands("+", v, Value::string(""));
    std::string ind;
    if (b.get(0) && b.get(0)->is_string()) ind = b.get(0)->str();
    else ind = std::string(static_cast<size_t>(std::clamp<int64_t>(b.integer(0, 4), 0, 4096)), ' ');
    const std::vector<std::string> lines = py_splitlines(v.str() + "\n", false);
    std::string out;
    if (b.flag(2, false)) {
      for (size_t i = 0; i < lines.size(); ++i) out += (i ? "\n" + ind : "") + lines[i];
    } else {
      out = lines.empty() ? "" : lines[0];
      for (size_t i = 1; i < lines.size(); ++i) out += "\n" + (lines[i].empty() ? "" : ind) + lines[i];
    }
    if (b.flag(1, false)) out = ind + out;
    check_size(out.size());
    return Value::string(std::move(out));
  }
  fail("no filter named '" + name + "'");
}

Value call_method(const Value& self, const std::string& name, const Args& a) {
  using K = Value::Kind;
  const std::string what = self.type_name() + "." + name + "()";
  if (known_unsupported(self.kind()).count(name)) {
    if (self.kind() == K::List || (self.kind() == K::Dict && name != "copy"))
      fail(fmt::format("access to attribute '{}' of '{}' object is unsafe (transformers renders chat templates in an "
                       "immutable sandbox: use namespace() or list concatenation instead)",
                       name, self.type_name()));
    fail(fmt::format("{} is not supported by the chat-template renderer", what));
  }
  if (self.kind() == K::Dict) {
    if (name == "get") {
      Bind b(a, {"key", "default"}, what);
      const Value* v = self.dict().find(b.req(0));
      return v ? *v : (b.get(1) ? *b.get(1) : Value::none());
    }
    Bind b(a, {}, what);
    List out;
    for (const auto& [k, x] : self.dict().entries)
      out.push_back(name == "keys" ? k : name == "values" ? x : Value::tuple({k, x}));
    return Value::list(std::move(out));
  }
  if (self.is_list_like()) {
    Bind b(a, {"value"}, what);
    const Value& x = b.req(0);
    int64_t count = 0;
    for (size_t i = 0; i < self.items().size(); ++i) {
      if (!equals(self.items()[i], x)) continue;
      if (name == "index") return Value::integer(static_cast<int64_t>(i));
      ++count;
    }
    if (name == "index") fail(fmt::format("{}: {} is not in list", what, to_repr(x)));
    return Value::integer(count);
  }
  if (self.kind() == K::Loop) {
    if (name == "cycle") {
      if (a.pos.empty()) fail("loop.cycle() needs at least one argument");
      return a.pos[static_cast<size_t>(self.loop_info().index0) % a.pos.size()];
    }
    fail("loop.changed() is not supported by the chat-template renderer");
  }
  if (!self.is_string()) fail(fmt::format("{} is not supported", what));
  const std::string& s = self.str();
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Bind b(a, {"chars"}, what);
    return Value::string(py_strip(s, b.get(0), name != "rstrip", name != "lstrip"));
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    Bind b(a, {}, what);
    return Value::string(name == "upper" ? py_upper(s) : name == "lower" ? py_lower(s) : name == "title" ? py_title(s) : py_capitalize(s));
  }
  if (name == "startswith" || name == "endswith") {
    Bind b(a, {"prefix", "start", "end"}, what);
    const Value& p = b.req(0);
    std::string sub = s;
    if (b.has(1) || b.has(2)) sub = slice(self, b.get(1), b.get(2), nullptr).str();
    auto test = [&](const Value& x) {
      if (!x.is_string()) fail(fmt::format("{}: the argument must be str or a tuple of str, not {}", what, type_of(x)));
      const std::string& t = x.str();
      if (t.size() > sub.size()) return false;
      return name == "startswith" ? sub.compare(0, t.size(), t) == 0 : sub.compare(sub.size() - t.size(), t.size(), t) == 0;
    };
    if (p.kind() == K::Tuple) {
      for (const auto& x : p.items())
        if (test(x)) return Value::boolean(true);
      return Value::boolean(false);
    }
    return Value::boolean(test(p));
  }
  if (name == "split") {
    Bind b(a, {"sep", "maxsplit"}, what);
    return Value::list(py_split(s, b.get(0), b.integer(1, -1)));
  }
  if (name == "splitlines") {
    Bind b(a, {"keepends"}, what);
    List out;
    for (auto& l : py_splitlines(s, b.flag(0, false))) out.push_back(Value::string(std::move(l)));
    return Value::list(std::move(out));
  }
  if (name == "replace") {
    Bind b(a, {"old", "new", "count"}, what);
    const Value &o = b.req(0), &n = b.req(1);
    if (!o.is_string() || !n.is_string()) fail(fmt::format("{}: arguments must be str", what));
    return Value::string(py_replace(s, o.str(), n.str(), b.integer(2, -1)));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    Bind b(a, {"sub", "start", "end"}, what);
    const Value& sub = b.req(0);
    if (!sub.is_string()) fail(fmt::format("{}: must be str, not {}", what, type_of(sub)));
    int64_t offset = 0;
    std::string hay = s;
    if (b.has(1) || b.has(2)) {
      const int64_t n = static_cast<int64_t>(utf8_chars(s).size());
      int64_t st = b.integer(1, 0);
      if (st < 0) st = std::max<int64_t>(0, st + n);
      offset = std::min(st, n);
      hay = slice(self, b.get(1), b.get(2), nullptr).str();
      if (st > n) return Value::integer(name == "count" ? 0 : -1);
    }
    if (name == "count") {
      if (sub.str().empty()) return Value::integer(static_cast<int64_t>(utf8_chars(hay).size()) + 1);
      int64_t c = 0;
      for (size_t p = hay.find(sub.str()); p != std::string::npos; p = hay.find(sub.str(), p + sub.str().size())) ++c;
      return Value::integer(c);
    }
    const size_t p = name == "find" ? hay.find(sub.str()) : hay.rfind(sub.str());
    return Value::integer(p == std::string::npos ? -1 : offset + char_index(hay, p));
  }
  if (name == "join") {
    Bind b(a, {"iterable"}, what);
    std::string out;
    bool first = true;
    for (const Value& x : iterate(b.req(0))) {
      if (!x.is_string()) fail(fmt::format("{}: sequence item: expected str instance, {} found", what, type_of(x)));
      if (!first) out += s;
      first = false;
      out += x.str();
      check_len(out.size());
    }
    check_size(out.size());
    return Value::string(std::move(out));
  }
  if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum") {
    Bind b(a, {}, what);
    const Chars c = utf8_chars(s);
    if (c.empty()) return Value::boolean(false);
    for (auto ch : c) {
      const char32_t cp = decode_char(ch);
      bool ok;
      if (name == "isspace") ok = is_py_space(cp);
      else if (cp >= 0x80) ok = name != "isdigit" && is_py_alnum(cp);
      else if (name == "isdigit") ok = std::isdigit(static_cast<int>(cp));
      else if (name == "isalpha") ok = std::isalpha(static_cast<int>(cp));
      else ok = std::isalnum(static_cast<int>(cp));
      if (!ok) return Value::boolean(false);
    }
    return Value::boolean(true);
  }
  fail(fmt::format("{} is not supported by the chat-template renderer", what));
}

}  // namespace primus::data::chat::jinja

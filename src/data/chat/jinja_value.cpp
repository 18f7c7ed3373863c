// Jinja values with Python's semantics: see jinja_value.h.
#include "data/chat/jinja_value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace primus::data::chat::jinja {

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}
Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::String;
  v.s_ = std::move(s);
  return v;
}
Value Value::list(List items) {
  Value v;
  v.kind_ = Kind::List;
  v.list_ = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::tuple(List items) {
  Value v = list(std::move(items));
  v.kind_ = Kind::Tuple;
  return v;
}
Value Value::dict(std::shared_ptr<Dict> d) {
  Value v;
  v.kind_ = Kind::Dict;
  v.dict_ = std::move(d);
  return v;
}
Value Value::new_dict() { return dict(std::make_shared<Dict>()); }
Value Value::namespace_(std::shared_ptr<Dict> d) {
  Value v = dict(std::move(d));
  v.kind_ = Kind::Namespace;
  return v;
}
Value Value::loop(std::shared_ptr<LoopInfo> l) {
  Value v;
  v.kind_ = Kind::Loop;
  v.loop_ = std::move(l);
  return v;
}
Value Value::callable(std::shared_ptr<const Callable> c) {
  Value v;
  v.kind_ = Kind::Callable;
  v.fn_ = std::move(c);
  return v;
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined: case Kind::None: return false;
    case Kind::Bool: return b_;
    case Kind::Int: return i_ != 0;
    case Kind::Float: return f_ != 0;
    case Kind::String: return !s_.empty();
    case Kind::List: case Kind::Tuple: return !list_->empty();
    case Kind::Dict: return !dict_->entries.empty();
    default: return true;
  }
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Loop: return "LoopContext";
    case Kind::Callable: return fn_->type == Callable::Type::Macro ? "Macro" : "builtin_function_or_method";
  }
  return "object";
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : entries)
    if (equals(k, key)) return &v;
  return nullptr;
}

void Dict::set(const Value& key, Value v) {
  for (auto& [k, old] : entries)
    if (equals(k, key)) {
      old = std::move(v);
      return;
    }
  entries.emplace_back(key, std::move(v));
}

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == K::Float || b.kind() == K::Float) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.is_list_like() && b.is_list_like()) {
    if (a.kind() != b.kind() || a.items().size() != b.items().size()) return false;
    for (size_t i = 0; i < a.items().size(); ++i)
      if (!equals(a.items()[i], b.items()[i])) return false;
    return true;
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::Undefined: case K::None: return true;
    case K::String: return a.str() == b.str();
    case K::Dict: {
      if (a.dict().entries.size() != b.dict().entries.size()) return false;
      for (const auto& [k, v] : a.dict().entries) {
        const Value* o = b.dict().find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    case K::Namespace: return a.dict_ptr() == b.dict_ptr();
    case K::Loop: return &a.loop_info() == &b.loop_info();
    case K::Callable: return &a.callable() == &b.callable();
    default: return false;
  }
}

bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Value::Kind::Float || b.kind() == Value::Kind::Float) return a.as_double() < b.as_double();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 byte order = code point order
  if (a.is_list_like() && a.kind() == b.kind()) {
    const List &x = a.items(), &y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  throw Error(fmt::format("chat template: '<' not supported between instances of '{}' and '{}'",
                          a.type_name(), b.type_name()));
}

std::string float_repr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f < 0 ? "-inf" : "inf";
  if (f == 0) return std::signbit(f) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // [-]d[.ddd]e[+-]XX, shortest round-trip digits
  std::string out;
  size_t p = 0;
  if (sci[0] == '-') {
    out = "-";
    p = 1;
  }
  const size_t e_pos = sci.find('e');
  std::string digits;
  for (size_t i = p; i < e_pos; ++i)
    if (sci[i] != '.') digits += sci[i];
  const int exp = std::atoi(sci.c_str() + e_pos + 1);
  if (exp >= -5 + 1 && exp < 16) {  // Python's 'r' format: fixed for -4 <= exp < 16
    if (exp >= 0) {
      if (static_cast<int>(digits.size()) <= exp + 1) {
        out += digits + std::string(exp + 1 - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
      }
    } else {
      out += "0." + std::string(-exp - 1, '0') + digits;
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  return out;
}

// ---- UTF-8 and Python's str predicates ----------------------------------------------------

std::vector<std::string_view> utf8_chars(std::string_view s) {
  std::vector<std::string_view> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 2;
    if (!ok) n = 1;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

char32_t decode_char(std::string_view ch) {
  const auto c0 = static_cast<unsigned char>(ch[0]);
  if (ch.size() == 1) return c0 < 0x80 ? c0 : 0xDC00 + c0;
  char32_t cp = ch.size() == 2 ? (c0 & 0x1F) : ch.size() == 3 ? (c0 & 0x0F) : (c0 & 0x07);
  for (size_t k = 1; k < ch.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(ch[k]) & 0x3F);
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_py_space(char32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

namespace {

#include "data/chat/jinja_unicode_tables.inc"

const CaseEntry* case_entry(char32_t c) {
  const auto* end = std::end(kCaseTable);
  const auto* it = std::lower_bound(std::begin(kCaseTable), end, c, [](const CaseEntry& e, char32_t x) { return e.cp < x; });
  return it != end && it->cp == c ? it : nullptr;
}

template <size_t N>
bool in_ranges(const CodeRange (&r)[N], char32_t c) {
  const auto* it = std::upper_bound(std::begin(r), std::end(r), c, [](char32_t x, const CodeRange& e) { return x < e.lo; });
  return it != std::begin(r) && c <= (it - 1)->hi;
}

std::string mapped(std::string_view ch, const char* CaseEntry::*field) {
  const CaseEntry* e = case_entry(decode_char(ch));
  if (!e || !*(e->*field)) return std::string(ch);
  return e->*field;
}

// Code points Python's str.isprintable() rejects; repr() escapes them.
bool non_printable(char32_t c) { return in_ranges(kNonPrintableRanges, c); }

}  // namespace

std::string upper_char(std::string_view ch) { return mapped(ch, &CaseEntry::upper); }
std::string lower_char(std::string_view ch) { return mapped(ch, &CaseEntry::lower); }
std::string title_char(std::string_view ch) { return mapped(ch, &CaseEntry::title); }
bool is_cased(std::string_view ch) { return in_ranges(kCasedRanges, decode_char(ch)); }
bool is_py_alnum(char32_t c) { return in_ranges(kAlnumRanges, c); }

std::string lower_char_at(const std::vector<std::string_view>& chars, size_t i) {
  // Python's final sigma: a capital sigma after a cased letter and not before one is 'ς'
  if (decode_char(chars[i]) == 0x3A3 && i > 0 && is_cased(chars[i - 1]) &&
      !(i + 1 < chars.size() && is_cased(chars[i + 1])))
    return "\xcf\x82";
  return lower_char(chars[i]);
}

std::string lower_string(std::string_view s) {
  const auto chars = utf8_chars(s);
  std::string out;
  for (size_t i = 0; i < chars.size(); ++i) out += lower_char_at(chars, i);
  return out;
}

std::string upper_string(std::string_view s) {
  std::string out;
  for (auto ch : utf8_chars(s)) out += upper_char(ch);
  return out;
}

std::string string_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (std::string_view ch : utf8_chars(s)) {
    const char32_t c = decode_char(ch);
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
    } else if (c >= 0xDC80 && c <= 0xDCFF && ch.size() == 1) {
      out += fmt::format("\\udc{:02x}", static_cast<unsigned>(c & 0xFF));
    } else if (c >= 0x80 && non_printable(c) && !(c >= 0xDC80 && c <= 0xDCFF)) {
      if (c < 0x100) out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
      else if (c < 0x10000) out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
      else out += fmt::format("\\U{:08x}", static_cast<unsigned>(c));
    } else {
      out += ch;
    }
  }
  out += q;
  return out;
}

std::string to_repr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::String: return string_repr(v.str());
    case Value::Kind::Undefined: return "Undefined";
    default: return to_str(v);
  }
}

std::string to_str(const Value& v) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::Undefined: return "";
    case K::None: return "None";
    case K::Bool: return v.as_bool() ? "True" : "False";
    case K::Int: return std::to_string(v.as_int());
    case K::Float: return float_repr(v.as_double());
    case K::String: return v.str();
    case K::List: case K::Tuple: {
      const bool tuple = v.kind() == K::Tuple;
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += ", ";
        out += to_repr(v.items()[i]);
      }
      if (tuple && v.items().size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    case K::Dict: case K::Namespace: {
      std::string out = v.kind() == K::Namespace ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, x] : v.dict().entries) {
        if (!first) out += ", ";
        first = false;
        out += to_repr(k) + ": " + to_repr(x);
      }
      return out + (v.kind() == K::Namespace ? "}>" : "}");
    }
    case K::Loop:
      return fmt::format("<LoopContext {}/{}>", v.loop_info().index0 + 1, v.loop_info().items->size());
    case K::Callable:
      if (v.callable().type == Callable::Type::Macro) return "<Macro '" + v.callable().name + "'>";
      return "<built-in method " + v.callable().name + ">";
  }
  return "";
}

// ---- tojson ------------------------------------------------------------------------------

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (std::string_view ch : utf8_chars(s)) {
    const char32_t c = decode_char(ch);
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (c < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else if (ensure_ascii && c >= 0x80) {
      if (c >= 0x10000) {
        const char32_t v = c - 0x10000;
        out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      } else {
        out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
      }
    } else {
      out += ch;
    }
  }
  out += '"';
}

std::string json_float(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f < 0 ? "-Infinity" : "Infinity";
  return float_repr(f);
}

void json_value(std::string& out, const Value& v, const JsonOptions& opt, int depth) {
  using K = Value::Kind;
  if (depth > 200) throw Error("chat template: tojson: the value is nested deeper than 200 levels");
  const std::string item_sep = opt.has_separators ? opt.item_sep : opt.has_indent ? "," : ", ";
  const std::string key_sep = opt.has_separators ? opt.key_sep : ": ";
  auto newline = [&](int level) {
    if (!opt.has_indent) return;
    out += '\n';
    for (int i = 0; i < level; ++i) out += opt.indent;
  };
  switch (v.kind()) {
    case K::None: out += "null"; return;
    case K::Bool: out += v.as_bool() ? "true" : "false"; return;
    case K::Int: out += std::to_string(v.as_int()); return;
    case K::Float: out += json_float(v.as_double()); return;
    case K::String: json_string(out, v.str(), opt.ensure_ascii); return;
    case K::List: case K::Tuple: {
      if (v.items().empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += item_sep;
        newline(depth + 1);
        json_value(out, v.items()[i], opt, depth + 1);
      }
      newline(depth);
      out += ']';
      return;
    }
    case K::Dict: {
      if (v.dict().entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> entries;
      for (const auto& [k, x] : v.dict().entries) {
        std::string key;
        switch (k.kind()) {
          case K::String: key = k.str(); break;
          case K::Int: key = std::to_string(k.as_int()); break;
          case K::Bool: key = k.as_bool() ? "true" : "false"; break;
          case K::Float: key = json_float(k.as_double()); break;
          case K::None: key = "null"; break;
          default:
            throw Error(fmt::format("chat template: tojson: keys must be str, int, float, bool or None, not {}",
                                    k.type_name()));
        }
        entries.emplace_back(std::move(key), &x);
      }
      if (opt.sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += item_sep;
        newline(depth + 1);
        json_string(out, entries[i].first, opt.ensure_ascii);
        out += key_sep;
        json_value(out, *entries[i].second, opt, depth + 1);
      }
      newline(depth);
      out += '}';
      return;
    }
    default:
      throw Error(fmt::format("chat template: tojson: Object of type {} is not JSON serializable", v.type_name()));
  }
}

template <typename J>
Value from_json_impl(const J& j, int depth) {
  if (depth > 512) throw Error("chat template: the messages/variables JSON is nested deeper than 512 levels");
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& x : j) items.push_back(from_json_impl(x, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      auto d = std::make_shared<Dict>();
      d->entries.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it)
        d->entries.emplace_back(Value::string(it.key()), from_json_impl(it.value(), depth + 1));
      return Value::dict(std::move(d));
    }
    default: throw Error("chat template: binary JSON values cannot be passed to a template");
  }
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& opt) {
  std::string out;
  json_value(out, v, opt, 0);
  return out;
}

Value from_json(const nlohmann::json& j) { return from_json_impl(j, 0); }
Value from_json(const nlohmann::ordered_json& j) { return from_json_impl(j, 0); }

}  // namespace primus::data::chat::jinja

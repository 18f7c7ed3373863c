// Jinja values: what a chat template computes with, with Python's semantics where templates
// can see them (jinja2 runs on Python objects): int/float/bool arithmetic and equality,
// truthiness, str() and repr() text (`True`, `None`, `['a', 'b']`, `{'k': 1}`, `1.0`), and
// jinja2's Undefined (renders as "", falsy, iterates as empty, fails on attribute access).
//
// Lists and dicts are shared, immutable once built (transformers renders in jinja2's
// ImmutableSandboxedEnvironment, which refuses list.append and friends); a namespace() is
// the one mutable object (`{% set ns.a = ... %}`). Dicts keep insertion order, as Python's do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace primus::data::chat::jinja {

class Value;
using List = std::vector<Value>;
struct Dict;
struct Callable;  // a macro, a bound method or a global function (jinja_render.h)
struct LoopInfo;  // the `loop` variable of a for loop (jinja_render.h)

class Value {
 public:
  enum class Kind : uint8_t {
    Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Loop, Callable
  };

  // Undefined: `hint` is the message jinja2 would raise on using it ("'x' is undefined").
  Value() = default;
  static Value undefined(std::string hint);
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(List items);
  static Value tuple(List items);
  static Value dict(std::shared_ptr<Dict> d);
  static Value new_dict();
  static Value namespace_(std::shared_ptr<Dict> d);
  static Value loop(std::shared_ptr<LoopInfo> l);
  static Value callable(std::shared_ptr<const Callable> c);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_int() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }  // bool is an int in Python
  bool is_number() const { return is_int() || kind_ == Kind::Float; }
  bool is_list_like() const { return kind_ == Kind::List || kind_ == Kind::Tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }  // Int or Bool
  double as_double() const { return kind_ == Kind::Float ? f_ : static_cast<double>(as_int()); }
  const std::string& str() const { return s_; }  // String, or the hint of an Undefined
  const List& items() const { return *list_; }    // List or Tuple
  const std::shared_ptr<List>& list_ptr() const { return list_; }
  Dict& dict() const { return *dict_; }           // Dict or Namespace
  const std::shared_ptr<Dict>& dict_ptr() const { return dict_; }
  LoopInfo& loop_info() const { return *loop_; }
  const Callable& callable() const { return *fn_; }

  // Python's truth value; Undefined is false.
  bool truthy() const;
  // Python's type name, as in "'dict object' has no attribute 'x'".
  std::string type_name() const;

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<LoopInfo> loop_;
  std::shared_ptr<const Callable> fn_;
};

// An insertion-ordered dict; keys compare with Python equality (1 == 1.0 == True).
struct Dict {
  std::vector<std::pair<Value, Value>> entries;
  const Value* find(const Value& key) const;
  void set(const Value& key, Value v);
};

// Python `a == b` (lists and dicts element-wise; Undefined equals only Undefined).
bool equals(const Value& a, const Value& b);
// Python `a < b` for numbers, strings (code point order) and lists/tuples; throws primus::Error
// ("'<' not supported between instances of 'str' and 'int'") otherwise.
bool less(const Value& a, const Value& b);

// str(v) as jinja2 prints it ({{ v }}, `~`, |string): strings as they are, Undefined as "".
std::string to_str(const Value& v);
// repr(v): what str() of a list shows for its items ('a', 1.5, None, True).
std::string to_repr(const Value& v);
// Python's repr of a float: shortest round-trip digits, `1.0`, `1e+16`, `1.5e-05`, `inf`, `nan`.
std::string float_repr(double f);
// Python's repr of a str ('it''s' quoted as "it's", \n, \x7f, ...).
std::string string_repr(const std::string& s);

// transformers' tojson filter: json.dumps(v, ensure_ascii, indent, separators, sort_keys).
// indent_str empty with has_indent false is the one-line form; separators default as
// Python's (", ", ": ") without indent and (",", ": ") with one.
struct JsonOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;  // the string repeated per level (an int indent is that many spaces)
  bool has_separators = false;
  std::string item_sep, key_sep;
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonOptions& opt);

// JSON from the caller (messages, tools, ...) as values; object keys in the json's order.
Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

// ---- text helpers with Python's str semantics over UTF-8 ----------------------------------
// The characters of `s`: each a UTF-8 sequence, or one byte where the bytes are not UTF-8.
std::vector<std::string_view> utf8_chars(std::string_view s);
// Decodes one character (as utf8_chars splits them); an invalid byte decodes as 0xDC80 + byte.
char32_t decode_char(std::string_view ch);
void append_utf8(std::string& out, char32_t cp);
// str.isspace() of one code point.
bool is_py_space(char32_t cp);
// Python's str.upper()/lower()/title() of one character (upper("ß") is "SS"), from the
// Unicode tables of jinja_unicode_tables.inc (gen_unicode_tables.py).
std::string upper_char(std::string_view ch);
std::string lower_char(std::string_view ch);
std::string title_char(std::string_view ch);
// str.upper() / str.lower() of a whole string (lower handles the final sigma).
std::string upper_string(std::string_view s);
std::string lower_string(std::string_view s);
// lower() of chars[i] within its string (a final capital sigma becomes 'ς').
std::string lower_char_at(const std::vector<std::string_view>& chars, size_t i);
// A cased character (Lu, Ll, Lt and the other upper/lowercase ones): str.title()'s word rule.
bool is_cased(std::string_view ch);
// str.isalnum() of one code point (jinja2's wordcount counts runs of these and '_').
bool is_py_alnum(char32_t cp);

}  // namespace primus::data::chat::jinja

namespace primus::data::chat::jinja {

struct Node;   // jinja_ast.h
struct Scope;  // jinja_render.cpp

// The `loop` of a for loop: loop.index0 and friends are computed from these.
struct LoopInfo {
  std::shared_ptr<const List> items;
  int64_t index0 = 0;
};

// Something a template can call: a {% macro %}, a method bound to its receiver
// ('a b'.split, d.items), or one of the globals (range, namespace, raise_exception, ...).
struct Callable {
  enum class Type : uint8_t { Macro, Method, Global } type = Type::Global;
  std::string name;
  Value self;                        // Method: the receiver
  const Node* macro = nullptr;       // Macro: its definition
  std::weak_ptr<Scope> closure;      // Macro: the scope it was defined in
};

}  // namespace primus::data::chat::jinja

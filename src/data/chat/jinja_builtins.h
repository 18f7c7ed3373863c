// The filters, tests and methods a chat template can use (jinja2's builtins, transformers'
// tojson, Python's str/dict/list methods), and attribute/subscript access with jinja2's
// rules (`d.key` falls back to `d['key']`; a missing one is Undefined; anything on an
// Undefined fails). The renderer (jinja_render.cpp) owns macros and globals.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/chat/jinja_value.h"

namespace primus::data::chat::jinja {

// The largest string a template may build (output, `*`, `+`, join, ...): 64 MiB.
inline constexpr size_t kMaxStringBytes = size_t{64} << 20;
// The most items a list may have after `*` or a filter (and range()'s jinja2 sandbox bound is
// 100000 items).
inline constexpr size_t kMaxListItems = size_t{1} << 24;

// The total bytes of strings one render may build (a loop that copies a large string each
// iteration ends here): 4 GiB. reset_work_budget() starts a render's count.
inline constexpr uint64_t kMaxWorkBytes = uint64_t{4} << 30;
void reset_work_budget();

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

// True for the filters and tests implemented (the parser refuses the others).
bool is_filter(const std::string& name);
bool is_test(const std::string& name);
// The comma-separated lists of them, for error messages and docs.
std::string filter_names();
std::string test_names();

// value | name(args...). Throws primus::Error for wrong arguments or types.
Value apply_filter(const std::string& name, const Value& v, const Args& args);
// value is name(args...).
bool apply_test(const std::string& name, const Value& v, const Args& args);
// receiver.name(args...) for a Callable::Type::Method.
Value call_method(const Value& self, const std::string& name, const Args& args);

// obj.name and obj[key] with jinja2's lookup order; Undefined (naming what is missing) when
// absent; primus::Error on an Undefined obj (jinja2's UndefinedError).
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
// obj[start:stop:step] on a str, list or tuple (Python slicing; null bounds are omitted ones).
Value slice(const Value& obj, const Value* start, const Value* stop, const Value* step);

// Python binary operators: + - * / // % ** (and ~, jinja's string concatenation).
Value binary_op(const std::string& op, const Value& a, const Value& b);
// Python `a in b`.
bool contains(const Value& container, const Value& item);
// iter(v) as a list: a list/tuple's items, a dict's keys, a str's characters, nothing for
// Undefined; primus::Error for others ("'int' object is not iterable").
List iterate(const Value& v);

// Throws jinja2's UndefinedError for an Undefined (its hint), naming what was used.
[[noreturn]] void undefined_error(const Value& v);

}  // namespace primus::data::chat::jinja

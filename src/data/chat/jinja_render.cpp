// Jinja renderer: see jinja_render.h.
#include "data/chat/jinja_render.h"

#include <fmt/format.h>

#include <ctime>

#include "data/chat/jinja_builtins.h"
#include "data/chat/jinja_lexer.h"

namespace primus::data::chat::jinja {

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get())
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars)
      if (k == name) {
        old = std::move(v);
        return;
      }
    vars.emplace_back(name, std::move(v));
  }
};

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("chat template: " + msg); }

// An error that already names its place in the template (so outer nodes do not re-prefix it).
class Located : public Error {
 public:
  using Error::Error;
};

enum class Flow { Normal, Break, Continue };

const char* const kGlobals[] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};

class Renderer {
 public:
  Renderer(const Dict& vars, const std::string& origin, const RenderLimits& limits)
      : vars_(vars), origin_(origin), limits_(limits) {}

  std::string run(const Body& body) {
    reset_work_budget();
    auto root = std::make_shared<Scope>();
    std::string out;
    render_body(body, root, out);
    return out;
  }

 private:
  const Dict& vars_;
  const std::string& origin_;
  const RenderLimits& limits_;
  int64_t iterations_ = 0;
  int call_depth_ = 0;

  [[noreturn]] void relocate(const Error& e, int line, int col) const {
    if (dynamic_cast<const Located*>(&e) || dynamic_cast<const TemplateRaised*>(&e)) throw;
    throw Located(where(origin_, line, col) + e.what());
  }

  void append(std::string& out, const std::string& s) const {
    if (out.size() + s.size() > limits_.max_output_bytes)
      fail(fmt::format("the rendered text would exceed {} MiB (a hostile or runaway template?)",
                       limits_.max_output_bytes >> 20));
    out += s;
  }

  Flow render_body(const Body& body, const std::shared_ptr<Scope>& scope, std::string& out) {
    for (const auto& n : body) {
      const Flow f = render_node(*n, scope, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow render_node(const Node& n, const std::shared_ptr<Scope>& scope, std::string& out) {
    try {
      return render_node_inner(n, scope, out);
    } catch (const Error& e) {
      relocate(e, n.line, n.col);
    }
  }

  Flow render_node_inner(const Node& n, const std::shared_ptr<Scope>& scope, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text: append(out, n.text); return Flow::Normal;
      case Node::Kind::Output: append(out, to_str(eval(*n.expr, scope))); return Flow::Normal;
      case Node::Kind::If:
        for (size_t i = 0; i < n.conds.size(); ++i)
          if (eval(*n.conds[i], scope).truthy()) return render_body(n.bodies[i], scope, out);
        if (n.bodies.size() > n.conds.size()) return render_body(n.bodies.back(), scope, out);
        return Flow::Normal;
      case Node::Kind::For: render_for(n, scope, out); return Flow::Normal;
      case Node::Kind::Set: {
        Value v = eval(*n.expr, scope);
        if (!n.attr.empty()) {
          const Value* ns = scope->find(n.targets[0]);
          if (!ns || ns->kind() != Value::Kind::Namespace)
            fail(fmt::format("cannot assign attribute '{}' on '{}': it is not a namespace() object", n.attr,
                             n.targets[0]));
          ns->dict().set(Value::string(n.attr), std::move(v));
          return Flow::Normal;
        }
        assign(n, std::move(v), *scope);
        return Flow::Normal;
      }
      case Node::Kind::BlockSet: {
        std::string captured;
        render_body(n.bodies[0], scope, captured);
        auto tmp = std::make_shared<Scope>();
        tmp->parent = scope;
        tmp->set("\x01body", Value::string(std::move(captured)));
        scope->set(n.targets[0], eval(*n.expr, tmp));
        return Flow::Normal;
      }
      case Node::Kind::Macro: {
        auto c = std::make_shared<Callable>();
        c->type = Callable::Type::Macro;
        c->name = n.text;
        c->macro = &n;
        c->closure = scope;
        scope->set(n.text, Value::callable(std::move(c)));
        return Flow::Normal;
      }
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
      case Node::Kind::Generation: {  // transformers renders it as a call block: its own scope
        auto s = std::make_shared<Scope>();
        s->parent = scope;
        render_body(n.bodies[0], s, out);
        return Flow::Normal;
      }
    }
    return Flow::Normal;
  }

  // `set a = v` or `set a, b = v` (v unpacked).
  void assign(const Node& n, Value v, Scope& scope) const {
    if (!n.tuple_target) {
      scope.set(n.targets[0], std::move(v));
      return;
    }
    List items = unpack(v, n.targets.size());
    for (size_t i = 0; i < items.size(); ++i) scope.set(n.targets[i], std::move(items[i]));
  }

  static List unpack(const Value& v, size_t count) {
    if (v.is_undefined()) undefined_error(v);
    List items = iterate(v);
    if (items.size() < count)
      fail(fmt::format("not enough values to unpack (expected {}, got {})", count, items.size()));
    if (items.size() > count) fail(fmt::format("too many values to unpack (expected {})", count));
    return items;
  }

  void count_iteration() {
    if (++iterations_ > limits_.max_loop_iterations)
      fail(fmt::format("more than {} loop iterations (a hostile or runaway template?)", limits_.max_loop_iterations));
  }

  void render_for(const Node& n, const std::shared_ptr<Scope>& scope, std::string& out) {
    const Value iterable = eval(*n.expr, scope);
    std::shared_ptr<const List> items;
    if (iterable.is_list_like() && !n.cond) items = iterable.list_ptr();  // shared: lists are immutable
    else items = std::make_shared<const List>(iterate(iterable));
    auto bind = [&](Scope& s, const Value& item) {
      if (n.tuple_target) {
        List parts = unpack(item, n.targets.size());
        for (size_t i = 0; i < parts.size(); ++i) s.set(n.targets[i], std::move(parts[i]));
      } else {
        s.set(n.targets[0], item);
      }
    };
    if (n.cond) {
      auto kept = std::make_shared<List>();
      for (const Value& item : *items) {
        count_iteration();
        auto s = std::make_shared<Scope>();
        s->parent = scope;
        bind(*s, item);
        if (eval(*n.cond, s).truthy()) kept->push_back(item);
      }
      items = std::move(kept);
    }
    if (items->empty()) {
      if (n.bodies.size() > 1) render_body(n.bodies[1], scope, out);
      return;
    }
    auto info = std::make_shared<LoopInfo>();
    info->items = items;
    const Value loop = Value::loop(info);
    std::shared_ptr<Scope> s;
    for (size_t i = 0; i < items->size(); ++i) {
      count_iteration();
      info->index0 = static_cast<int64_t>(i);
      // a fresh scope per iteration (jinja2's); the last one is reused when nothing kept it
      if (s && s.use_count() == 1) s->vars.clear();
      else s = std::make_shared<Scope>();
      s->parent = scope;
      s->set("loop", loop);
      bind(*s, (*items)[i]);
      if (render_body(n.bodies[0], s, out) == Flow::Break) break;
    }
  }

  Value lookup(const std::string& name, const std::shared_ptr<Scope>& scope) const {
    if (const Value* v = scope->find(name)) return *v;
    if (const Value* v = vars_.find(Value::string(name))) return *v;
    for (const char* g : kGlobals)
      if (name == g) {
        auto c = std::make_shared<Callable>();
        c->type = Callable::Type::Global;
        c->name = name;
        return Value::callable(std::move(c));
      }
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }

  Args eval_args(const Expr& e, const std::shared_ptr<Scope>& scope, size_t first) {
    Args a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i], scope));
    for (const auto& [k, x] : e.kwargs) a.kw.emplace_back(k, eval(*x, scope));
    return a;
  }

  Value eval(const Expr& e, const std::shared_ptr<Scope>& scope) {
    using K = Expr::Kind;
    switch (e.kind) {
      case K::Const: return e.value;
      case K::Name: return lookup(e.name, scope);
      case K::List: case K::Tuple: {
        List items;
        for (const auto& x : e.args) items.push_back(eval(*x, scope));
        return e.kind == K::List ? Value::list(std::move(items)) : Value::tuple(std::move(items));
      }
      case K::Dict: {
        auto d = std::make_shared<Dict>();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], scope);
          if (k.is_list_like() && k.kind() == Value::Kind::List) fail("unhashable type: 'list'");
          if (k.kind() == Value::Kind::Dict) fail("unhashable type: 'dict'");
          d->set(k, eval(*e.args[i + 1], scope));
        }
        return Value::dict(std::move(d));
      }
      case K::Getattr: return get_attr(eval(*e.args[0], scope), e.name);
      case K::Getitem: return get_item(eval(*e.args[0], scope), eval(*e.args[1], scope));
      case K::Slice: {
        const Value obj = eval(*e.args[0], scope);
        Value b[3];
        const Value* p[3] = {nullptr, nullptr, nullptr};
        for (int i = 0; i < 3; ++i)
          if (e.args[i + 1]) {
            b[i] = eval(*e.args[i + 1], scope);
            p[i] = &b[i];
          }
        return slice(obj, p[0], p[1], p[2]);
      }
      case K::Call: {
        const Value callee = eval(*e.args[0], scope);
        Args a = eval_args(e, scope, 1);
        return call(callee, a, scope);
      }
      case K::Filter: {
        const Value v = eval(*e.args[0], scope);
        return apply_filter(e.name, v, eval_args(e, scope, 1));
      }
      case K::Test: {
        const Value v = eval(*e.args[0], scope);
        const bool r = apply_test(e.name, v, eval_args(e, scope, 1));
        return Value::boolean(e.negate ? !r : r);
      }
      case K::Not: return Value::boolean(!eval(*e.args[0], scope).truthy());
      case K::Neg: case K::Pos: {
        const Value v = eval(*e.args[0], scope);
        if (v.is_undefined()) undefined_error(v);
        if (v.kind() == Value::Kind::Float) return Value::number(e.kind == K::Neg ? -v.as_double() : v.as_double());
        if (v.is_int()) {
          if (e.kind == K::Pos) return Value::integer(v.as_int());
          if (v.as_int() == INT64_MIN) fail("integer overflow in unary '-' (beyond 64 bits)");
          return Value::integer(-v.as_int());
        }
        fail(fmt::format("bad operand type for unary {}: '{}'", e.kind == K::Neg ? '-' : '+', v.type_name()));
      }
      case K::Binary: {
        const Value a = eval(*e.args[0], scope);
        const Value b = eval(*e.args[1], scope);
        return binary_op(e.name, a, b);
      }
      case K::And: {
        Value a = eval(*e.args[0], scope);
        return a.truthy() ? eval(*e.args[1], scope) : a;
      }
      case K::Or: {
        Value a = eval(*e.args[0], scope);
        return a.truthy() ? a : eval(*e.args[1], scope);
      }
      case K::Compare: {
        Value left = eval(*e.args[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          const std::string& op = e.ops[i];
          bool r;
          if (op == "==") r = equals(left, right);
          else if (op == "!=") r = !equals(left, right);
          else if (op == "in") r = contains(right, left);
          else if (op == "notin") r = !contains(right, left);
          else {
            if (left.is_undefined()) undefined_error(left);
            if (right.is_undefined()) undefined_error(right);
            if (op == "<") r = less(left, right);
            else if (op == ">") r = less(right, left);
            else if (op == "<=") r = !less(right, left);
            else r = !less(left, right);
          }
          if (!r) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case K::CondExpr: {
        if (eval(*e.args[1], scope).truthy()) return eval(*e.args[0], scope);
        if (e.args[2]) return eval(*e.args[2], scope);
        return Value::undefined(fmt::format(
            "the inline if-expression on line {} evaluated to false and no else section was defined", e.line));
      }
    }
    return Value();
  }

  Value call(const Value& callee, const Args& a, const std::shared_ptr<Scope>& scope) {
    if (callee.is_undefined()) undefined_error(callee);
    if (callee.kind() != Value::Kind::Callable) fail(fmt::format("'{}' object is not callable", callee.type_name()));
    const Callable& c = callee.callable();
    switch (c.type) {
      case Callable::Type::Method: return call_method(c.self, c.name, a);
      case Callable::Type::Macro: return call_macro(c, a, scope);
      case Callable::Type::Global: return call_global(c.name, a);
    }
    return Value();
  }

  Value call_macro(const Callable& c, const Args& a, const std::shared_ptr<Scope>& caller_scope) {
    const Node& m = *c.macro;
    if (a.pos.size() > m.targets.size())
      fail(fmt::format("macro '{}' takes not more than {} argument(s)", m.text, m.targets.size()));
    if (call_depth_ >= limits_.max_call_depth)
      fail(fmt::format("macro calls nest deeper than {} (runaway recursion in macro '{}'?)", limits_.max_call_depth,
                       m.text));
    auto s = std::make_shared<Scope>();
    s->parent = c.closure.lock();
    if (!s->parent) s->parent = caller_scope;
    std::vector<const Value*> given(m.targets.size(), nullptr);
    for (size_t i = 0; i < a.pos.size(); ++i) given[i] = &a.pos[i];
    for (const auto& [k, v] : a.kw) {
      const auto it = std::find(m.targets.begin(), m.targets.end(), k);
      if (it == m.targets.end()) fail(fmt::format("macro '{}' takes no keyword argument '{}'", m.text, k));
      const size_t i = it - m.targets.begin();
      if (given[i]) fail(fmt::format("macro '{}' got multiple values for argument '{}'", m.text, k));
      given[i] = &v;
    }
    const size_t first_default = m.targets.size() - m.defaults.size();
    for (size_t i = 0; i < m.targets.size(); ++i) {
      if (given[i]) s->set(m.targets[i], *given[i]);
      else if (i >= first_default) s->set(m.targets[i], eval(*m.defaults[i - first_default], s));
      else s->set(m.targets[i], Value::undefined(fmt::format("parameter '{}' was not provided", m.targets[i])));
    }
    std::string out;
    ++call_depth_;
    try {
      render_body(m.bodies[0], s, out);
    } catch (...) {
      --call_depth_;
      throw;
    }
    --call_depth_;
    return Value::string(std::move(out));
  }

  Value call_global(const std::string& name, const Args& a) {
    if (name == "raise_exception") {
      const std::string msg = a.pos.empty() ? std::string() : to_str(a.pos[0]);
      throw TemplateRaised("chat template: " + msg);
    }
    if (name == "range") {
      if (!a.kw.empty()) fail("range() takes no keyword arguments");
      if (a.pos.empty() || a.pos.size() > 3) fail(fmt::format("range expected 1 to 3 arguments, got {}", a.pos.size()));
      for (const auto& v : a.pos)
        if (!v.is_int()) fail(fmt::format("range(): '{}' object cannot be interpreted as an integer", v.type_name()));
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1) {
        stop = a.pos[0].as_int();
      } else {
        start = a.pos[0].as_int();
        stop = a.pos[1].as_int();
        if (a.pos.size() == 3) step = a.pos[2].as_int();
      }
      if (step == 0) fail("range() arg 3 must not be zero");
      __int128 n = 0;
      if (step > 0 && stop > start) n = ((__int128)stop - start + step - 1) / step;
      if (step < 0 && stop < start) n = ((__int128)start - stop - step - 1) / -step;
      if (n > 100000)
        fail("range too big: the sandbox blocks ranges larger than MAX_RANGE (100000), as jinja2's does");
      List out;
      for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) out.push_back(Value::integer(start + i * step));
      return Value::list(std::move(out));
    }
    if (name == "namespace" || name == "dict") {
      auto d = std::make_shared<Dict>();
      if (a.pos.size() > 1) fail(fmt::format("{}() takes at most 1 positional argument", name));
      if (!a.pos.empty()) {
        const Value& init = a.pos[0];
        if (init.kind() == Value::Kind::Dict || init.kind() == Value::Kind::Namespace) {
          d->entries = init.dict().entries;
        } else {
          for (const Value& pair : iterate(init)) {
            List kv = unpack(pair, 2);
            d->set(kv[0], kv[1]);
          }
        }
      }
      for (const auto& [k, v] : a.kw) d->set(Value::string(k), v);
      return name == "dict" ? Value::dict(std::move(d)) : Value::namespace_(std::move(d));
    }
    if (name == "strftime_now") {
      if (a.pos.size() != 1 || !a.pos[0].is_string()) fail("strftime_now(format) takes one string");
      const std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[512];
      const size_t n = std::strftime(buf, sizeof buf, a.pos[0].str().c_str(), &tm);
      return Value::string(std::string(buf, n));
    }
    fail(fmt::format("'{}' is not a supported function", name));
  }
};

}  // namespace

std::string render_template(const Body& body, const Dict& vars, const std::string& origin, const RenderLimits& limits) {
  return Renderer(vars, origin, limits).run(body);
}

}  // namespace primus::data::chat::jinja

// Jinja parser: see jinja_parser.h. Follows jinja2 3.1's parser (parser.py) rule by rule for
// the subset chat templates use.
#include "data/chat/jinja_parser.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"
#include "data/chat/jinja_builtins.h"

namespace primus::data::chat::jinja {

namespace {

constexpr int kMaxNesting = 200;  // expression and block nesting (hostile templates)

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& origin) : t_(std::move(toks)), origin_(origin) {}

  Body parse_all() {
    Body body = subparse({});
    if (cur().type != Tok::Eof) fail_here(fmt::format("unexpected {{% {} %}}", cur().text));
    return body;
  }

 private:
  std::vector<Token> t_;
  const std::string& origin_;
  size_t i_ = 0;
  int depth_ = 0;       // recursion guard
  int loop_depth_ = 0;  // for break/continue

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }

  [[noreturn]] void fail_at(const Token& t, const std::string& msg) const {
    throw Error(where(origin_, t.line, t.col) + msg);
  }
  [[noreturn]] void fail_here(const std::string& msg) const { fail_at(cur(), msg); }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Data: return "template data";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "end of print statement '}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "end of statement block '%}'";
      case Tok::Name: return "'" + t.text + "'";
      case Tok::String: return "string literal";
      case Tok::Int: case Tok::Float: return "number " + t.text;
      case Tok::Op: return "'" + t.text + "'";
      case Tok::Eof: return "end of template";
    }
    return "token";
  }

  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail_here(fmt::format("expected '{}', got {}", op, describe(cur())));
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail_here(fmt::format("expected {}, got {}", what, describe(cur())));
    next();
  }
  std::string expect_name(const char* what) {
    if (cur().type != Tok::Name) fail_here(fmt::format("expected {}, got {}", what, describe(cur())));
    std::string n = cur().text;
    next();
    return n;
  }

  struct Guard {
    Parser& p;
    explicit Guard(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxNesting)
        p.fail_here(fmt::format("the template nests expressions or blocks deeper than {} levels", kMaxNesting));
    }
    ~Guard() { --p.depth_; }
  };

  ExprPtr make(Expr::Kind kind, const Token& at) const {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  // ---- statements ----------------------------------------------------------------------

  // Nodes until a {% tag %} named in `end` (left current at that tag's name) or the end.
  Body subparse(const std::set<std::string>& end) {
    Guard g(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) return body;
      if (t.type == Tok::Data) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = t.line;
        n->col = t.col;
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == Tok::VarBegin) {
        next();
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = t.line;
        n->col = t.col;
        n->expr = parse_tuple(true, {}, false);
        expect(Tok::VarEnd, "end of print statement '}}'");
        body.push_back(std::move(n));
      } else if (t.type == Tok::BlockBegin) {
        next();
        if (cur().type != Tok::Name) fail_here(fmt::format("expected a tag name, got {}", describe(cur())));
        if (end.count(cur().text)) return body;
        body.push_back(parse_statement());
      } else {
        fail_here(fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  // The body of a block tag whose own `%}` comes next; ends at one of `end` (current = its name).
  Body parse_block(const std::set<std::string>& end, const Token& opener) {
    skip_op(":");
    expect(Tok::BlockEnd, "end of statement block '%}'");
    Body b = subparse(end);
    if (cur().type == Tok::Eof) {
      std::string names;
      for (const auto& e : end) names += (names.empty() ? "'" : " or '") + e + "'";
      fail_at(opener, fmt::format("the {{% {} %}} opened here is never closed (expected {})", opener.text, names));
    }
    return b;
  }

  // After an end tag's name: its `%}`.
  void end_tag() {
    next();
    expect(Tok::BlockEnd, "end of statement block '%}'");
  }

  std::unique_ptr<Node> node(Node::Kind kind, const Token& at) const {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  std::unique_ptr<Node> parse_statement() {
    Guard g(*this);
    const Token tag = cur();
    const std::string& name = tag.text;
    if (name == "if") return parse_if();
    if (name == "for") return parse_for();
    if (name == "set") return parse_set();
    if (name == "macro") return parse_macro();
    if (name == "generation") {
      next();
      auto n = node(Node::Kind::Generation, tag);
      n->bodies.push_back(parse_block({"endgeneration"}, tag));
      end_tag();
      return n;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail_at(tag, fmt::format("'{}' outside of a for loop", name));
      next();
      expect(Tok::BlockEnd, "end of statement block '%}'");
      return node(name == "break" ? Node::Kind::Break : Node::Kind::Continue, tag);
    }
    static const std::set<std::string> unsupported = {
        "include", "extends", "block", "import", "from", "call", "filter", "with", "autoescape",
        "do", "trans", "pluralize", "print", "debug"};
    if (unsupported.count(name))
      fail_at(tag, fmt::format("the {{% {} %}} tag is not supported by the chat-template renderer (it implements "
                               "if/elif/else, for (with else, break, continue), set (also block set and "
                               "namespace attributes), macro, generation and raw)",
                               name));
    if (name.rfind("end", 0) == 0 || name == "elif" || name == "else")
      fail_at(tag, fmt::format("unexpected {{% {} %}} (no open block it could close)", name));
    fail_at(tag, fmt::format("unknown tag '{}'", name));
  }

  std::unique_ptr<Node> parse_if() {
    const Token tag = cur();
    next();
    auto n = node(Node::Kind::If, tag);
    n->conds.push_back(parse_tuple(false, {}, false));
    while (true) {
      n->bodies.push_back(parse_block({"elif", "else", "endif"}, tag));
      if (is_name("elif")) {
        next();
        n->conds.push_back(parse_tuple(false, {}, false));
        continue;
      }
      if (is_name("else")) {
        next();
        n->bodies.push_back(parse_block({"endif"}, tag));
      }
      break;
    }
    end_tag();
    return n;
  }

  // Names of an assignment target: `a`, `a, b`, `(a, b)`.
  void parse_targets(Node& n) {
    const bool paren = skip_op("(");
    while (true) {
      n.targets.push_back(expect_name("a variable name to assign to"));
      if (!skip_op(",")) break;
      n.tuple_target = true;
      if (cur().type != Tok::Name) break;
    }
    if (paren) {
      n.tuple_target = true;
      expect_op(")");
    }
    for (const auto& t : n.targets)
      if (t == "true" || t == "false" || t == "none" || t == "True" || t == "False" || t == "None")
        fail_here(fmt::format("cannot assign to '{}'", t));
  }

  std::unique_ptr<Node> parse_for() {
    const Token tag = cur();
    next();
    auto n = node(Node::Kind::For, tag);
    parse_targets(*n);
    if (!skip_name("in")) fail_here(fmt::format("expected 'in' in the for loop, got {}", describe(cur())));
    n->expr = parse_tuple(false, {"recursive"}, false);
    if (skip_name("if")) n->cond = parse_expression(true);
    if (is_name("recursive")) fail_here("recursive for loops are not supported by the chat-template renderer");
    ++loop_depth_;
    n->bodies.push_back(parse_block({"endfor", "else"}, tag));
    --loop_depth_;
    if (is_name("else")) {
      next();
      n->bodies.push_back(parse_block({"endfor"}, tag));
    }
    end_tag();
    return n;
  }

  std::unique_ptr<Node> parse_set() {
    const Token tag = cur();
    next();
    if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "." && peek(2).type == Tok::Name) {
      auto n = node(Node::Kind::Set, tag);
      n->targets.push_back(cur().text);
      n->attr = peek(2).text;
      next(), next(), next();
      expect_op("=");
      n->expr = parse_tuple(true, {}, false);
      expect(Tok::BlockEnd, "end of statement block '%}'");
      return n;
    }
    auto n = node(Node::Kind::Set, tag);
    parse_targets(*n);
    if (skip_op("=")) {
      n->expr = parse_tuple(true, {}, false);
      expect(Tok::BlockEnd, "end of statement block '%}'");
      return n;
    }
    if (n->tuple_target) fail_here("a block {% set %} assigns one name");
    n->kind = Node::Kind::BlockSet;
    // filters on the captured text: a chain on a placeholder the renderer binds
    ExprPtr chain = make(Expr::Kind::Name, cur());
    chain->name = "\x01body";
    while (is_op("|")) chain = parse_filter(std::move(chain));
    n->expr = std::move(chain);
    const int saved = loop_depth_;
    n->bodies.push_back(parse_block({"endset"}, tag));
    loop_depth_ = saved;
    end_tag();
    return n;
  }

  std::unique_ptr<Node> parse_macro() {
    const Token tag = cur();
    next();
    auto n = node(Node::Kind::Macro, tag);
    n->text = expect_name("a macro name");
    expect_op("(");
    while (!is_op(")")) {
      if (!n->targets.empty()) expect_op(",");
      if (is_op(")")) break;
      n->targets.push_back(expect_name("a macro parameter name"));
      if (skip_op("=")) {
        n->defaults.push_back(parse_expression(true));
      } else if (!n->defaults.empty()) {
        fail_here("a macro parameter without a default follows one with a default");
      }
    }
    next();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->bodies.push_back(parse_block({"endmacro"}, tag));
    loop_depth_ = saved;
    end_tag();
    return n;
  }

  // ---- expressions ---------------------------------------------------------------------

  bool tuple_end(const std::set<std::string>& extra_end) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || cur().type == Tok::Eof) return true;
    if (is_op(")")) return true;
    return cur().type == Tok::Name && extra_end.count(cur().text);
  }

  // jinja2's parse_tuple: `a`, `a, b` (a tuple), `()` only inside explicit parentheses.
  ExprPtr parse_tuple(bool with_condexpr, const std::set<std::string>& extra_end, bool explicit_parens) {
    const Token start = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (tuple_end(extra_end)) break;
      items.push_back(with_condexpr ? parse_expression(true) : parse_or());
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail_here(fmt::format("expected an expression, got {}", describe(cur())));
    }
    auto e = make(Expr::Kind::Tuple, start);
    e->args = std::move(items);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    Guard g(*this);
    if (!with_condexpr) return parse_or();
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const Token t = cur();
      next();
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (skip_name("else")) other = parse_expression(true);
      auto c = make(Expr::Kind::CondExpr, t);
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind kind, ExprPtr a, ExprPtr b, const Token& at, std::string op = "") {
    auto e = make(kind, at);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token t = cur();
      next();
      e = binary(Expr::Kind::Or, std::move(e), parse_and(), t);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token t = cur();
      next();
      e = binary(Expr::Kind::And, std::move(e), parse_not(), t);
    }
    return e;
  }

  ExprPtr parse_not() {
    Guard g(*this);
    if (is_name("not")) {
      const Token t = cur();
      next();
      auto e = make(Expr::Kind::Not, t);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token start = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "notin";
        next(), next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, start);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token t = cur();
      next();
      e = binary(Expr::Kind::Binary, std::move(e), parse_concat(), t, t.text);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token t = cur();
      next();
      e = binary(Expr::Kind::Binary, std::move(e), parse_math2(), t, "~");
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token t = cur();
      next();
      e = binary(Expr::Kind::Binary, std::move(e), parse_pow(), t, t.text);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token t = cur();
      next();
      e = binary(Expr::Kind::Binary, std::move(e), parse_unary(true), t, "**");
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Guard g(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token t = cur();
      next();
      e = make(t.text == "-" ? Expr::Kind::Neg : Expr::Kind::Pos, t);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    Guard g(*this);
    const Token t = cur();
    switch (t.type) {
      case Tok::Name: {
        next();
        auto e = make(Expr::Kind::Const, t);
        if (t.text == "true" || t.text == "True") e->value = Value::boolean(true);
        else if (t.text == "false" || t.text == "False") e->value = Value::boolean(false);
        else if (t.text == "none" || t.text == "None") e->value = Value::none();
        else {
          e->kind = Expr::Kind::Name;
          e->name = t.text;
        }
        return e;
      }
      case Tok::String: {
        std::string s;
        while (cur().type == Tok::String) {
          s += cur().text;
          next();
        }
        auto e = make(Expr::Kind::Const, t);
        e->value = Value::string(std::move(s));
        return e;
      }
      case Tok::Int: case Tok::Float: {
        next();
        auto e = make(Expr::Kind::Const, t);
        e->value = t.type == Tok::Int ? Value::integer(t.ival) : Value::number(t.fval);
        return e;
      }
      case Tok::Op:
        if (t.text == "(") {
          next();
          ExprPtr e = parse_tuple(true, {}, true);
          expect_op(")");
          return e;
        }
        if (t.text == "[" || t.text == "{") {
          const bool dict = t.text == "{";
          const char* close = dict ? "}" : "]";
          next();
          auto e = make(dict ? Expr::Kind::Dict : Expr::Kind::List, t);
          while (!is_op(close)) {
            if (!e->args.empty()) expect_op(",");
            if (is_op(close)) break;
            e->args.push_back(parse_expression(true));
            if (dict) {
              expect_op(":");
              e->args.push_back(parse_expression(true));
            }
          }
          next();
          return e;
        }
        break;
      default: break;
    }
    fail_here(fmt::format("unexpected {}", describe(t)));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const Token t = cur();
      if (is_op(".")) {
        next();
        if (cur().type == Tok::Name) {
          auto g = make(Expr::Kind::Getattr, t);
          g->name = cur().text;
          g->args.push_back(std::move(e));
          e = std::move(g);
          next();
        } else if (cur().type == Tok::Int) {
          auto g = make(Expr::Kind::Getitem, t);
          g->args.push_back(std::move(e));
          auto k = make(Expr::Kind::Const, cur());
          k->value = Value::integer(cur().ival);
          g->args.push_back(std::move(k));
          e = std::move(g);
          next();
        } else {
          fail_here(fmt::format("expected an attribute name after '.', got {}", describe(cur())));
        }
      } else if (is_op("[")) {
        next();
        e = parse_subscript(std::move(e), t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, const Token& at) {
    Guard g(*this);
    std::vector<ExprPtr> parts;  // start, stop, step
    bool is_slice = false;
    if (!is_op(":")) parts.push_back(parse_expression(true));
    else parts.push_back(nullptr);
    if (skip_op(":")) {
      is_slice = true;
      parts.push_back(is_op("]") || is_op(":") ? nullptr : parse_expression(true));
      if (skip_op(":")) parts.push_back(is_op("]") ? nullptr : parse_expression(true));
    }
    if (is_op(",")) fail_here("tuple subscripts (a[1, 2]) are not supported by the chat-template renderer");
    expect_op("]");
    auto e = make(is_slice ? Expr::Kind::Slice : Expr::Kind::Getitem, at);
    e->args.push_back(std::move(obj));
    for (auto& p : parts) e->args.push_back(std::move(p));
    while (is_slice && e->args.size() < 4) e->args.push_back(nullptr);
    return e;
  }

  // (args, name=kwargs) into e->args (after what is already there) and e->kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**"))
        fail_here("*args and **kwargs in calls are not supported by the chat-template renderer");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = cur().text;
        next(), next();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail_here("a positional argument follows keyword arguments");
        e.args.push_back(parse_expression(true));
      }
    }
    next();
  }

  ExprPtr parse_call(ExprPtr callee) {
    Guard g(*this);
    auto e = make(Expr::Kind::Call, cur());
    if (callee->kind == Expr::Kind::Name || callee->kind == Expr::Kind::Getattr) e->name = callee->name;
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return e;
  }

  std::string dotted_name(const char* what) {
    std::string n = expect_name(what);
    while (is_op(".") && peek().type == Tok::Name) {
      next();
      n += "." + cur().text;
      next();
    }
    return n;
  }

  ExprPtr parse_filter(ExprPtr base) {
    Guard g(*this);
    expect_op("|");
    const Token t = cur();
    auto e = make(Expr::Kind::Filter, t);
    e->name = dotted_name("a filter name");
    if (!is_filter(e->name))
      fail_at(t, fmt::format("unknown or unsupported filter '{}' (the chat-template renderer implements: {})", e->name,
                             filter_names()));
    e->args.push_back(std::move(base));
    if (is_op("(")) parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_test(ExprPtr base) {
    Guard g(*this);
    next();  // is
    const bool negate = skip_name("not");
    const Token t = cur();
    auto e = make(Expr::Kind::Test, t);
    e->negate = negate;
    e->name = dotted_name("a test name");
    if (!is_test(e->name))
      fail_at(t, fmt::format("unknown or unsupported test '{}' (the chat-template renderer implements: {})", e->name,
                             test_names()));
    e->args.push_back(std::move(base));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                cur().type == Tok::Float || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail_here("tests cannot be chained with 'is'");
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }
};

}  // namespace

Body parse_template(const std::string& source, const std::string& origin) {
  return Parser(tokenize(source, origin), origin).parse_all();
}

}  // namespace primus::data::chat::jinja

// Jinja syntax tree: expressions (Expr) and statements (Node), as jinja_parser.cpp builds
// them and jinja_render.cpp evaluates them. Every node keeps its line and column for errors.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/chat/jinja_value.h"

namespace primus::data::chat::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind : uint8_t {
    Const,     // value
    Name,      // name
    List,      // args = items
    Tuple,     // args = items
    Dict,      // args = key, value, key, value, ...
    Getattr,   // args[0].name
    Getitem,   // args[0][args[1]]
    Slice,     // args[0][args[1]:args[2]:args[3]] (a null arg is an omitted bound)
    Call,      // args[0](args[1:], kwargs)
    Filter,    // args[0] | name(args[1:], kwargs)
    Test,      // args[0] is [not: negate] name(args[1:], kwargs)
    Not,       // not args[0]
    Neg,       // -args[0]
    Pos,       // +args[0]
    Binary,    // args[0] op args[1]: + - * / // % ** ~
    And,       // args[0] and args[1]
    Or,        // args[0] or args[1]
    Compare,   // args[0] ops[0] args[1] ops[1] args[2] ... (chained as Python chains them)
    CondExpr,  // args[0] if args[1] else args[2] (args[2] may be null: undefined)
  };
  Kind kind = Kind::Const;
  int line = 0, col = 0;
  Value value;
  std::string name;              // Name, Getattr, Call (for messages), Filter, Test, Binary op
  std::vector<std::string> ops;  // Compare: "==", "!=", "<", "<=", ">", ">=", "in", "notin"
  bool negate = false;           // Test: `is not`
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind : uint8_t {
    Text,      // text
    Output,    // {{ expr }}
    If,        // conds[i] -> bodies[i]; bodies.back() is the else when bodies > conds
    For,       // for targets in expr [if cond]: bodies[0], else bodies[1]
    Set,       // set targets = expr  (attr non-empty: set targets[0].attr = expr)
    BlockSet,  // set targets[0] %} bodies[0] {% endset (filters applied to the text)
    Macro,     // macro name(targets, defaults) bodies[0]
    Break,
    Continue,
    Generation,  // transformers' {% generation %}: bodies[0]
  };
  Kind kind = Kind::Text;
  int line = 0, col = 0;
  std::string text;                  // Text; Macro: its name
  std::string attr;                  // Set: namespace attribute
  std::vector<std::string> targets;  // For/Set targets; Macro parameters
  bool tuple_target = false;         // For/Set: the targets were a tuple (unpack)
  ExprPtr expr;                      // Output/For iterable/Set value; BlockSet: filter chain on a Const ""
  ExprPtr cond;                      // For's inline `if`
  std::vector<ExprPtr> conds;        // If
  std::vector<ExprPtr> defaults;     // Macro: defaults of the last parameters (aligned to the end)
  std::vector<Body> bodies;
};

}  // namespace primus::data::chat::jinja

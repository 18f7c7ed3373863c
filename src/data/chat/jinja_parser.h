// Jinja parser: tokens (jinja_lexer.h) to a syntax tree (jinja_ast.h), with jinja2's grammar
// and operator precedence (filters bind tighter than arithmetic; `**` is left-associative).
// Every feature the renderer does not implement is refused here, at parse time: tags
// (include, extends, block, import, call, filter, with, ...), recursive loops, unknown
// filters and tests, *args/**kwargs; the error names the feature, origin, line and column.
#pragma once

#include <string>

#include "data/chat/jinja_ast.h"
#include "data/chat/jinja_lexer.h"

namespace primus::data::chat::jinja {

// Parses a whole template; throws primus::Error ("ORIGIN:LINE:COL: ...") on a syntax error
// or an unsupported feature.
Body parse_template(const std::string& source, const std::string& origin);

}  // namespace primus::data::chat::jinja

// Jinja lexer: template source to tokens, with the whitespace rules transformers renders
// chat templates under (trim_blocks, lstrip_blocks, keep_trailing_newline off), as jinja2
// 3.1 applies them: newlines normalized to "\n" and one trailing newline dropped;
// `{%-`/`-%}` (and {{- -}}, {#- -#}) strip all whitespace on that side; lstrip_blocks
// removes the spaces before a `{%`/`{#` that starts its line (`{%+` keeps them);
// trim_blocks removes the newline after `%}`/`#}` (`+%}` keeps it). Comments are dropped,
// `{% raw %}...{% endraw %}` becomes data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace primus::data::chat::jinja {

enum class Tok : uint8_t { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type = Tok::Eof;
  std::string text;  // Data text, a name, an operator, a decoded string literal
  int64_t ival = 0;
  double fval = 0;
  int line = 1, col = 1;
};

// Where errors point: "ORIGIN:LINE:COL: ".
std::string where(const std::string& origin, int line, int col);

// Tokenizes `source`; throws primus::Error naming origin, line and column for a tag or
// comment left open, an unterminated string, a bad escape or an unexpected character.
std::vector<Token> tokenize(const std::string& source, const std::string& origin);

}  // namespace primus::data::chat::jinja

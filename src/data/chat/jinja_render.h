// Jinja renderer: evaluates a parsed template (jinja_ast.h) against the variables of one
// render, with jinja2's scoping (a for loop's body gets a fresh scope each iteration, so its
// {% set %} does not leak out; `if` has no scope; a macro sees its parameters, then the scope
// it was defined in), its globals (range, namespace, dict) and transformers' (raise_exception,
// strftime_now), and bounds on what a hostile template can make it do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"
#include "data/chat/jinja_ast.h"

namespace primus::data::chat::jinja {

struct RenderLimits {
  size_t max_output_bytes = size_t{64} << 20;    // the rendered text (and any captured block)
  int64_t max_loop_iterations = 10'000'000;      // for-loop iterations of one render, in all
  int max_call_depth = 100;                      // nested macro calls
};

// What raise_exception("...") throws: "chat template: " + the template's message, not
// prefixed with a location (the message is the template author's).
class TemplateRaised : public Error {
 public:
  using Error::Error;
};

// Renders `body` with `vars` (messages, add_generation_prompt, ...). Errors are
// primus::Error: "ORIGIN:LINE:COL: chat template: ..." for evaluation failures (undefined
// attribute access, type errors, limits), TemplateRaised for raise_exception().
std::string render_template(const Body& body, const Dict& vars, const std::string& origin,
                            const RenderLimits& limits = {});

}  // namespace primus::data::chat::jinja

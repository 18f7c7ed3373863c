// Errors that say what went wrong, where, and what was expected.
//
// PRIMUS_CHECK(cond, "fmt {}", args...) throws primus::Error carrying the failed
// expression, the source file and line, and a formatted message. User-facing code
// (config, data, CLI) throws primus::Error with a message naming the file/key and the fix;
// main() prints it without a stack of C++ noise.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace primus {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] void throw_check_failure(const char* expr, const char* file, int line,
                                      const std::string& message);

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace primus

#define PRIMUS_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond)) [[unlikely]]                                                            \
      ::primus::throw_check_failure(#cond, __FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

#include "cli/cli_common.h"

#include <fmt/core.h>

#include "core/strings.h"

namespace primus::cli {

namespace {
std::vector<std::string> option_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::Option* opt : app.get_options()) {
    for (const auto& l : opt->get_lnames()) names.push_back("--" + l);
    for (const auto& s : opt->get_snames()) names.push_back("-" + s);
  }
  return names;
}
}  // namespace

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ExtrasError& e) {
    // Name the unknown argument and the nearest real option.
    std::string bad;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("-", 0) == 0) {
        const std::string key = a.substr(0, a.find('='));
        bool known = false;
        for (const auto& n : option_names(app)) known |= (n == key);
        if (!known) {
          bad = key;
          break;
        }
      }
    }
    if (!bad.empty()) {
      fmt::print(stderr, "primus {}: unknown option '{}'{}\nRun 'primus {} --help' for the options.\n",
                 app.get_name(), bad, did_you_mean(bad, option_names(app)), app.get_name());
    } else {
      fmt::print(stderr, "primus {}: {}\nRun 'primus {} --help' for the options.\n", app.get_name(),
                 e.what(), app.get_name());
    }
    return 2;
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "primus {}: {}\nRun 'primus {} --help' for the options.\n", app.get_name(), e.what(),
               app.get_name());
    return 2;
  }
}

int not_built_yet(std::string_view command, std::string_view what, std::string_view issue) {
  fmt::print(stderr, "primus {}: not built yet — {} (tracked in {}).\n", command, what, issue);
  return 3;
}

}  // namespace primus::cli

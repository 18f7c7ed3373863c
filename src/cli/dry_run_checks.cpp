#include "cli/dry_run_checks.h"

#include <fmt/format.h>

#include "config/describe.h"
#include "config/ignored_keys.h"
#include "core/error.h"
#include "model/decoder_spec.h"
#include "train/run_paths.h"
#include "train/train_options.h"

namespace primus::cli {

namespace {

std::string count(size_t n, const char* what) { return fmt::format("{} {}{}", n, what, n == 1 ? "" : "s"); }

}  // namespace

DryRunReport dry_run_checks(const config::Config& cfg, double device_memory_gib) {
  DryRunReport r;

  // What the run refuses after validate(): the loop's options (as on a GPU machine: a dry run on
  // a login node must not fail for want of a GPU) and the model's parts.
  try {
    (void)train::train_options(cfg, /*cuda_visible=*/true);
    check_buildable(config::model_config(cfg), "the training model");
    r.checked.push_back("the run accepts the config (train options, model parts)");
  } catch (const Error& e) {
    r.problems.push_back(fmt::format("the run would refuse the config: {}", e.what()));
  }

  const train::RunPathsReport paths = train::check_run_paths(cfg);
  for (const train::PathFinding& f : paths.findings) (f.problem ? r.problems : r.warnings).push_back(f.message);
  r.checked.insert(r.checked.end(), paths.checked.begin(), paths.checked.end());

  for (const config::IgnoredKey& k : config::ignored_keys(cfg)) r.warnings.push_back(k.message());

  if (device_memory_gib > 0) {
    const double need = config::memory_estimate_gib(cfg);
    const double percent = 100.0 * need / device_memory_gib;
    switch (config::memory_fit(need, device_memory_gib)) {
      case config::MemoryFit::kFits:
        r.checked.push_back(fmt::format("memory: the estimate {:.2f} GiB is {:.0f}% of --device-memory {:g} GiB", need,
                                        percent, device_memory_gib));
        break;
      case config::MemoryFit::kTight:
        r.warnings.push_back(fmt::format("memory: the estimate {:.2f} GiB is {:.1f}% of --device-memory {:g} GiB, "
                                         "above {:.0f}%: tight (see the estimate below)",
                                         need, percent, device_memory_gib, 100.0 * config::kTightMemoryFraction));
        break;
      case config::MemoryFit::kDoesNotFit:
        r.warnings.push_back(fmt::format("memory: the estimate {:.2f} GiB does not fit in --device-memory {:g} GiB "
                                         "(see the estimate below)",
                                         need, device_memory_gib));
        break;
    }
  }
  return r;
}

// Every line starts "  - " so that it never reads as a row of the config table above it
// (tools/train_check_config.py parses those rows).
std::string DryRunReport::text() const {
  std::string out = "dry-run checks (docs/SAFE.md):\n";
  for (const std::string& c : checked) out += fmt::format("  - ok       {}\n", c);
  for (const std::string& p : problems) out += fmt::format("  - PROBLEM  {}\n", p);
  for (const std::string& w : warnings) out += fmt::format("  - warning  {}\n", w);
  return out;
}

std::string DryRunReport::verdict() const {
  if (!problems.empty())
    return fmt::format("dry run FAILED: {} and {} (listed under \"dry-run checks\"); the run would stop on the "
                       "problems",
                       count(problems.size(), "problem"), count(warnings.size(), "warning"));
  if (!warnings.empty())
    return fmt::format("dry run OK, with {} (listed under \"dry-run checks\")", count(warnings.size(), "warning"));
  return "dry run OK";
}

}  // namespace primus::cli

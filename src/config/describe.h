// Human-readable views of configs, shared by `primus config` and `primus train --dry-run`.
#pragma once

#include <string>

#include "config/config.h"
#include "model/model_stats.h"

namespace primus::config {

// The schema, grouped: key, type, default, range and doc. `group` filters ("" = all); an
// unknown group throws an Error listing the groups.
std::string describe_schema(const std::string& group = "");

// The schema as a Markdown table (for docs).
std::string describe_schema_markdown();

// The experiment header and every key with its value and source, grouped as the schema.
std::string describe_config(const Config& cfg);

// The parameter count, FLOPs per token and the memory estimate per GPU for the config's
// parallel layout, compared with device_memory_gib of device memory (a warning line when the
// estimate does not fit or fits with little headroom: memory_fit; 0 skips the comparison).
std::string describe_model(const Config& cfg, double device_memory_gib = 0);

// How a memory estimate compares with a device's memory: it fits; it is tight (above
// kTightMemoryFraction of it, leaving too little for what the estimate does not count: the CUDA
// context, workspaces, fragmentation, communication buffers); or it does not fit.
enum class MemoryFit { kFits, kTight, kDoesNotFit };
inline constexpr double kTightMemoryFraction = 0.95;
MemoryFit memory_fit(double need_gib, double device_gib);

// describe_model's total estimate per GPU, in GiB.
double memory_estimate_gib(const Config& cfg);

// The memory-estimate inputs taken from a config (layout, precision, recompute ...).
ParallelLayout parallel_layout(const Config& cfg);
TrainingSetup training_setup(const Config& cfg);

// 8030261248 -> "8,030,261,248"
std::string with_commas(int64_t n);

// A path relative to the current directory when it lies under it, else as given.
std::string display_path(const std::string& path);

}  // namespace primus::config

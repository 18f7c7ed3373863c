// The tables behind schema(): model options (architecture, MoE, MLA, MTP) and training
// options (data, schedule, optimizer, precision, parallelism, checkpoints, logging ...).
// Internal to src/config; everyone else reads them through schema().
#pragma once

#include <string>
#include <vector>

#include "config/schema.h"

namespace primus::config {

std::vector<OptionSpec> model_options();
std::vector<OptionSpec> training_options();

// A small builder so each option reads as one line: key, default, doc, then its range.
class OptionTable {
 public:
  class Opt {
   public:
    explicit Opt(OptionSpec& spec) : spec_(spec) {}
    Opt& min(double v, bool open = false) {
      spec_.min = v;
      spec_.min_open = open;
      return *this;
    }
    Opt& max(double v, bool open = false) {
      spec_.max = v;
      spec_.max_open = open;
      return *this;
    }
    Opt& positive() { return min(0, true); }
    Opt& non_negative() { return min(0); }
    Opt& at_least(double v) { return min(v); }
    Opt& fraction() { return min(0).max(1, true); }  // [0, 1)

   private:
    OptionSpec& spec_;
  };

  void group(std::string name) { group_ = std::move(name); }

  Opt flag(const std::string& key, bool def, const std::string& doc);
  Opt integer(const std::string& key, int64_t def, const std::string& doc);
  Opt opt_integer(const std::string& key, const std::string& doc);  // default null
  Opt real(const std::string& key, double def, const std::string& doc);
  Opt opt_real(const std::string& key, const std::string& doc);
  Opt text(const std::string& key, const std::string& def, const std::string& doc);
  Opt opt_text(const std::string& key, const std::string& doc);
  Opt choice(const std::string& key, const std::string& def, std::vector<std::string> choices,
             const std::string& doc);
  Opt opt_choice(const std::string& key, std::vector<std::string> choices, const std::string& doc);
  Opt strings(const std::string& key, const std::string& doc);  // list of strings, default null
  Opt numbers(const std::string& key, const std::string& doc);  // list of numbers, default null

  std::vector<OptionSpec> take() { return std::move(options_); }

 private:
  Opt add(const std::string& key, Type type, bool nullable, nlohmann::json def, const std::string& doc,
          std::vector<std::string> choices = {});
  std::string group_;
  std::vector<OptionSpec> options_;
};

}  // namespace primus::config

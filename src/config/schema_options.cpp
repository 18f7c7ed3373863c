#include "config/schema_options.h"

namespace primus::config {

OptionTable::Opt OptionTable::add(const std::string& key, Type type, bool nullable, nlohmann::json def,
                                  const std::string& doc, std::vector<std::string> choices) {
  OptionSpec spec;
  spec.key = key;
  spec.group = group_;
  spec.type = type;
  spec.nullable = nullable;
  spec.default_value = std::move(def);
  spec.choices = std::move(choices);
  spec.doc = doc;
  options_.push_back(std::move(spec));
  return Opt(options_.back());
}

OptionTable::Opt OptionTable::flag(const std::string& key, bool def, const std::string& doc) {
  return add(key, Type::Bool, false, def, doc);
}
OptionTable::Opt OptionTable::integer(const std::string& key, int64_t def, const std::string& doc) {
  return add(key, Type::Int, false, def, doc);
}
OptionTable::Opt OptionTable::opt_integer(const std::string& key, const std::string& doc) {
  return add(key, Type::Int, true, nullptr, doc);
}
OptionTable::Opt OptionTable::real(const std::string& key, double def, const std::string& doc) {
  return add(key, Type::Float, false, def, doc);
}
OptionTable::Opt OptionTable::opt_real(const std::string& key, const std::string& doc) {
  return add(key, Type::Float, true, nullptr, doc);
}
OptionTable::Opt OptionTable::text(const std::string& key, const std::string& def, const std::string& doc) {
  return add(key, Type::String, false, def, doc);
}
OptionTable::Opt OptionTable::opt_text(const std::string& key, const std::string& doc) {
  return add(key, Type::String, true, nullptr, doc);
}
OptionTable::Opt OptionTable::choice(const std::string& key, const std::string& def, std::vector<std::string> choices,
                                     const std::string& doc) {
  return add(key, Type::Enum, false, def, doc, std::move(choices));
}
OptionTable::Opt OptionTable::opt_choice(const std::string& key, std::vector<std::string> choices,
                                         const std::string& doc) {
  return add(key, Type::Enum, true, nullptr, doc, std::move(choices));
}
OptionTable::Opt OptionTable::strings(const std::string& key, const std::string& doc) {
  return add(key, Type::StringList, true, nullptr, doc);
}
OptionTable::Opt OptionTable::numbers(const std::string& key, const std::string& doc) {
  return add(key, Type::NumberList, true, nullptr, doc);
}

}  // namespace primus::config

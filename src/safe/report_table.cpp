#include "safe/report_table.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"

namespace primus::safe {

namespace {

std::string cell(const nlohmann::json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d != 0 && (std::abs(d) >= 1e6 || std::abs(d) < 1e-3)) return fmt::format("{:.3e}", d);
    return fmt::format("{:.4g}", d);
  }
  return v.dump();
}

}  // namespace

TableFormat parse_table_format(const std::string& s) {
  if (s == "md" || s == "markdown") return TableFormat::Markdown;
  if (s == "csv") return TableFormat::Csv;
  if (s == "jsonl" || s == "json") return TableFormat::Jsonl;
  fail("output format '{}' is not one of md, csv, jsonl", s);
}

std::string table_to_string(const std::vector<nlohmann::json>& rows, const std::vector<std::string>& columns,
                            TableFormat format) {
  std::string out;
  if (format == TableFormat::Jsonl) {
    for (const auto& r : rows) out += r.dump() + "\n";
    return out;
  }
  const char* sep = format == TableFormat::Csv ? "," : " | ";
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l = format == TableFormat::Markdown ? "| " : "";
    for (size_t i = 0; i < cells.size(); ++i) l += (i ? sep : "") + cells[i];
    l += format == TableFormat::Markdown ? " |\n" : "\n";
    return l;
  };
  out += line(columns);
  if (format == TableFormat::Markdown) out += line(std::vector<std::string>(columns.size(), "---"));
  for (const auto& r : rows) {
    std::vector<std::string> cells;
    for (const auto& c : columns) cells.push_back(r.contains(c) ? cell(r.at(c)) : "");
    out += line(cells);
  }
  return out;
}

void print_table(std::FILE* out, const std::vector<nlohmann::json>& rows, const std::vector<std::string>& columns,
                 TableFormat format) {
  const std::string s = table_to_string(rows, columns, format);
  std::fputs(s.c_str(), out);
  std::fflush(out);
}

}  // namespace primus::safe

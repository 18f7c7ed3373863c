// Rows of benchmark results printed as a markdown table, CSV or JSON lines (one object per row).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace primus::safe {

enum class TableFormat { Markdown, Csv, Jsonl };

// "md"/"markdown", "csv", "jsonl"/"json"; throws naming the accepted values otherwise.
TableFormat parse_table_format(const std::string& s);

// Prints rows (JSON objects) with the given column order; numbers with up to 4 significant
// decimals in md/csv, as-is in jsonl (where every key of the row is kept).
void print_table(std::FILE* out, const std::vector<nlohmann::json>& rows, const std::vector<std::string>& columns,
                 TableFormat format);
std::string table_to_string(const std::vector<nlohmann::json>& rows, const std::vector<std::string>& columns,
                            TableFormat format);

}  // namespace primus::safe

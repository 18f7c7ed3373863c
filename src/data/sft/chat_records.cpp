#include "data/sft/chat_records.h"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.h"
#include "core/strings.h"
#include "data/line_reader.h"

namespace primus::data::sft {

namespace {

using nlohmann::json;

// "\"a\", \"b\" and 3 more" of an object's keys, for messages.
std::string keys_seen(const json& j) {
  std::string s;
  int n = 0;
  for (auto it = j.begin(); it != j.end(); ++it, ++n) {
    if (n == 12) return s + fmt::format(" and {} more", j.size() - 12);
    s += fmt::format("{}\"{}\"", n ? ", " : "", printable(it.key(), 40));
  }
  return s.empty() ? "none" : s;
}

// "a string", "an object", "null": a JSON value's type with its article, for messages.
std::string a_type(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_object() || v.is_array()) return std::string("an ") + v.type_name();
  return std::string("a ") + v.type_name();
}

[[noreturn]] void bad(const std::string& where, const std::string& what) { fail("{}: {}", where, what); }

// A message list: each element an object with string "role" and "content" (other keys kept,
// for templates that read them: name, tool_calls, ...).
json check_messages(const json& v, const std::string& field, const std::string& where) {
  if (!v.is_array())
    bad(where, fmt::format("\"{}\" is {}; expected a message list [{{\"role\": ..., \"content\": ...}}, ...]",
                           field, a_type(v)));
  if (v.empty()) bad(where, fmt::format("\"{}\" is an empty list; expected at least one message", field));
  for (size_t i = 0; i < v.size(); ++i) {
    const json& m = v[i];
    if (!m.is_object())
      bad(where, fmt::format("{}[{}] is {}; expected an object {{\"role\": ..., \"content\": ...}}", field, i,
                             a_type(m)));
    const auto role = m.find("role");
    if (role == m.end())
      bad(where, fmt::format("{}[{}] has no \"role\" (keys seen: {}); expected {{\"role\": \"user\"|\"assistant\"|"
                             "\"system\", \"content\": ...}}",
                             field, i, keys_seen(m)));
    if (!role->is_string())
      bad(where, fmt::format("{}[{}].role is {}; expected a string such as \"user\"", field, i, a_type(*role)));
    const auto content = m.find("content");
    if (content == m.end())
      bad(where, fmt::format("{}[{}] has no \"content\" (keys seen: {})", field, i, keys_seen(m)));
    if (!content->is_string())
      bad(where, fmt::format("{}[{}].content is {}; expected a string", field, i, a_type(*content)));
  }
  return v;
}

// A string (one message of `role`) or a message list.
json string_or_messages(const json& obj, const char* field, const char* role, const std::string& where) {
  const auto it = obj.find(field);
  if (it == obj.end()) bad(where, fmt::format("\"{}\" is missing", field));
  if (it->is_string()) return json::array({{{"role", role}, {"content", it->get<std::string>()}}});
  if (!it->is_array())
    bad(where, fmt::format("\"{}\" is {}; expected a string or a message list [{{\"role\": ..., \"content\": "
                           "...}}, ...]",
                           field, a_type(*it)));
  return check_messages(*it, field, where);
}

const std::string& string_field(const json& obj, const char* field, const char* shape, const std::string& where) {
  const auto it = obj.find(field);
  if (it == obj.end())
    bad(where, fmt::format("\"{}\" is missing ({} shape: {{\"instruction\": ..., \"input\": ... (optional), "
                           "\"output\": ...}}; keys seen: {})",
                           field, shape, keys_seen(obj)));
  if (!it->is_string()) bad(where, fmt::format("\"{}\" is {}; expected a string", field, a_type(*it)));
  return it->get_ref<const std::string&>();
}

bool has_assistant(const json& messages) {
  for (const json& m : messages)
    if (m["role"] == "assistant") return true;
  return false;
}

void need_assistant(const json& messages, const char* field, const std::string& where) {
  if (!has_assistant(messages))
    bad(where, fmt::format("\"{}\" has no assistant turn, so nothing would be trained (roles must include "
                           "\"assistant\")",
                           field));
}

ChatRecord parse_sharegpt(const json& v, const std::string& where) {
  if (!v.is_array())
    bad(where, fmt::format("\"conversations\" is {}; expected a list [{{\"from\": \"human\"|\"gpt\"|\"system\", "
                           "\"value\": ...}}, ...]",
                           a_type(v)));
  if (v.empty()) bad(where, "\"conversations\" is an empty list; expected at least one turn");
  ChatRecord r;
  r.shape = RecordShape::kConversations;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& t = v[i];
    if (!t.is_object())
      bad(where, fmt::format("conversations[{}] is {}; expected an object {{\"from\": ..., \"value\": ...}}", i,
                             a_type(t)));
    const auto from = t.find("from");
    if (from == t.end())
      bad(where, fmt::format("conversations[{}] has no \"from\" (keys seen: {}); expected {{\"from\": \"human\"|"
                             "\"gpt\"|\"system\", \"value\": ...}}",
                             i, keys_seen(t)));
    if (!from->is_string())
      bad(where, fmt::format("conversations[{}].from is {}; expected \"human\", \"gpt\" or \"system\"", i,
                             a_type(*from)));
    const std::string& f = from->get_ref<const std::string&>();
    std::string role;
    if (f == "human" || f == "user") role = "user";
    else if (f == "gpt" || f == "assistant") role = "assistant";
    else if (f == "system") role = "system";
    else if (f == "tool") role = "tool";
    else
      bad(where, fmt::format("conversations[{}].from is \"{}\"; expected \"human\", \"gpt\" or \"system\" (or "
                             "\"user\", \"assistant\", \"tool\")",
                             i, printable(f, 40)));
    const auto value = t.find("value");
    if (value == t.end())
      bad(where, fmt::format("conversations[{}] has no \"value\" (keys seen: {})", i, keys_seen(t)));
    if (!value->is_string())
      bad(where, fmt::format("conversations[{}].value is {}; expected a string", i, a_type(*value)));
    r.completion.push_back({{"role", role}, {"content", value->get<std::string>()}});
  }
  need_assistant(r.completion, "conversations", where);
  return r;
}

ChatRecord parse_alpaca(const json& obj, const std::string& where) {
  ChatRecord r;
  r.shape = RecordShape::kAlpaca;
  std::string user = string_field(obj, "instruction", "alpaca", where);
  const auto input = obj.find("input");
  if (input != obj.end() && !input->is_null()) {
    if (!input->is_string()) bad(where, fmt::format("\"input\" is {}; expected a string", a_type(*input)));
    if (!input->get_ref<const std::string&>().empty()) user += "\n\n" + input->get<std::string>();
  }
  const std::string& output = string_field(obj, "output", "alpaca", where);
  r.completion = json::array({{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", output}}});
  return r;
}

ChatRecord parse_preference(const json& obj, const std::string& where) {
  ChatRecord r;
  r.shape = RecordShape::kPreference;
  for (const char* k : {"chosen", "rejected"})
    if (!obj.contains(k))
      bad(where, fmt::format("preference pair without \"{}\" (expected {{\"prompt\": ..., \"chosen\": ..., "
                             "\"rejected\": ...}}; keys seen: {})",
                             k, keys_seen(obj)));
  if (obj.contains("prompt")) {
    r.prompt = string_or_messages(obj, "prompt", "user", where);
    r.completion = string_or_messages(obj, "chosen", "assistant", where);
    r.rejected = string_or_messages(obj, "rejected", "assistant", where);
    return r;
  }
  // Implicit prompt: the messages chosen and rejected share from the start.
  for (const char* k : {"chosen", "rejected"})
    if (!obj[k].is_array())
      bad(where, fmt::format("\"{}\" is {} and there is no \"prompt\": without a prompt, chosen and rejected must "
                             "be message lists that share the prompt turns (or add a \"prompt\" field)",
                             k, a_type(obj[k])));
  const json chosen = check_messages(obj["chosen"], "chosen", where);
  const json rejected = check_messages(obj["rejected"], "rejected", where);
  size_t n = 0;
  while (n < chosen.size() && n < rejected.size() && chosen[n] == rejected[n]) ++n;
  if (n == 0)
    bad(where, "\"chosen\" and \"rejected\" differ from their first message and there is no \"prompt\": add a "
               "\"prompt\" field, or start both lists with the shared prompt turns");
  if (n == chosen.size() || n == rejected.size())
    bad(where, fmt::format("\"{}\" is the shared prompt with nothing after it: each of chosen and rejected needs "
                           "its own completion after the {} shared message(s)",
                           n == chosen.size() ? "chosen" : "rejected", n));
  for (size_t i = 0; i < chosen.size(); ++i) (i < n ? r.prompt : r.completion).push_back(chosen[i]);
  for (size_t i = n; i < rejected.size(); ++i) r.rejected.push_back(rejected[i]);
  return r;
}

}  // namespace

const char* record_shape_name(RecordShape s) {
  switch (s) {
    case RecordShape::kMessages: return "messages";
    case RecordShape::kConversations: return "conversations";
    case RecordShape::kAlpaca: return "alpaca";
    case RecordShape::kPromptCompletion: return "prompt/completion";
    case RecordShape::kPreference: return "preference";
  }
  return "?";
}

std::string ChatRecord::where() const { return fmt::format("{}:{}", file, line); }

const std::string& accepted_record_shapes() {
  static const std::string kShapes =
      "{\"messages\": [{\"role\", \"content\"}...]}, {\"conversations\": [{\"from\", \"value\"}...]}, "
      "{\"instruction\", \"input\" (optional), \"output\"}, {\"prompt\", \"completion\"}, "
      "{\"prompt\" (optional), \"chosen\", \"rejected\"}";
  return kShapes;
}

ChatRecord parse_chat_record(std::string_view text, const std::string& file, int64_t line, RecordKind kind) {
  const std::string where = fmt::format("{}:{}", file, line);
  json obj;
  try {
    obj = json::parse(text);
  } catch (const json::exception& e) {
    bad(where, fmt::format("not valid JSON ({})", e.what()));
  }
  if (!obj.is_object())
    bad(where, fmt::format("the line is a JSON {}; expected an object of one of the shapes {}", obj.type_name(),
                           accepted_record_shapes()));

  // The shapes whose keys are present.
  std::vector<RecordShape> found;
  const bool sft = kind != RecordKind::kPreference, pref = kind != RecordKind::kSft;
  if (sft && obj.contains("messages")) found.push_back(RecordShape::kMessages);
  if (sft && obj.contains("conversations")) found.push_back(RecordShape::kConversations);
  if (sft && obj.contains("instruction")) found.push_back(RecordShape::kAlpaca);
  if (sft && obj.contains("completion")) found.push_back(RecordShape::kPromptCompletion);
  if (pref && (obj.contains("chosen") || obj.contains("rejected"))) found.push_back(RecordShape::kPreference);
  if (found.size() > 1) {
    std::string names;
    for (size_t i = 0; i < found.size(); ++i) names += fmt::format("{}{}", i ? " and " : "", record_shape_name(found[i]));
    bad(where, fmt::format("ambiguous record: its keys ({}) fit the {} shapes; keep the keys of one shape per line "
                           "(accepted: {})",
                           keys_seen(obj), names, accepted_record_shapes()));
  }
  if (found.empty()) {
    if (kind == RecordKind::kSft && (obj.contains("chosen") || obj.contains("rejected")))
      bad(where, fmt::format("a preference pair (keys seen: {}) in SFT data: SFT reads {}, {}, {} or {}; for DPO "
                             "data turn the preference mode on",
                             keys_seen(obj), "messages", "conversations", "instruction/output", "prompt/completion"));
    if (kind == RecordKind::kPreference)
      bad(where, fmt::format("not a preference pair: expected {{\"prompt\" (optional), \"chosen\", \"rejected\"}}; "
                             "keys seen: {}",
                             keys_seen(obj)));
    if (obj.contains("prompt"))
      bad(where, fmt::format("\"prompt\" without \"completion\" (prompt/completion) or \"chosen\"/\"rejected\" "
                             "(preference); keys seen: {}",
                             keys_seen(obj)));
    bad(where, fmt::format("unknown record shape (keys seen: {}); accepted shapes: {}", keys_seen(obj),
                           accepted_record_shapes()));
  }

  ChatRecord r;
  switch (found[0]) {
    case RecordShape::kMessages:
      r.shape = RecordShape::kMessages;
      r.completion = check_messages(obj["messages"], "messages", where);
      need_assistant(r.completion, "messages", where);
      break;
    case RecordShape::kConversations: r = parse_sharegpt(obj["conversations"], where); break;
    case RecordShape::kAlpaca: r = parse_alpaca(obj, where); break;
    case RecordShape::kPromptCompletion:
      r.shape = RecordShape::kPromptCompletion;
      if (!obj.contains("prompt"))
        bad(where, fmt::format("\"completion\" without \"prompt\" (prompt/completion shape: {{\"prompt\": ..., "
                               "\"completion\": ...}}; keys seen: {})",
                               keys_seen(obj)));
      r.prompt = string_or_messages(obj, "prompt", "user", where);
      r.completion = string_or_messages(obj, "completion", "assistant", where);
      break;
    case RecordShape::kPreference: r = parse_preference(obj, where); break;
  }
  r.file = file;
  r.line = line;
  return r;
}

std::vector<ChatRecord> read_chat_records(const std::string& path, RecordKind kind) {
  PRIMUS_CHECK(std::filesystem::is_regular_file(path), "chat data file {} does not exist", path);
  LineReader reader(path);
  std::vector<ChatRecord> out;
  std::string line;
  while (reader.next(line)) {
    if (trim(line).empty()) continue;
    out.push_back(parse_chat_record(line, path, reader.line_number(), kind));
  }
  return out;
}

}  // namespace primus::data::sft

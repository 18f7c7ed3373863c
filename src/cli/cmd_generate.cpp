// primus generate: text from a Primus checkpoint with a KV cache (src/infer/).
//
//   primus generate --load SAVE_DIR --tokenizer-model tokenizer.json --prompt "Once upon a time"
//   primus generate --load SAVE_DIR --prompt-ids 1,2,3 --max-new-tokens 16 --output-json out.json
//
// The architecture comes from the checkpoint's config.json, the weights from its
// model.safetensors; the tokenizer from --tokenizer-model (default: the checkpoint
// config's tokenizer_model). One prompt streams its text as it is generated; several are
// run as one batch and printed at the end. Throughput goes to stderr and --output-json.
//
// Chat models (--chat, or --chat-file): each prompt is a conversation rendered with the chat
// template (the chat_template of tokenizer_config.json beside the tokenizer, or
// --chat-template FILE) with add_generation_prompt, as transformers' apply_chat_template
// does; the text is encoded with the special tokens it spells (<|im_start|>, <|eot_id|>, ...)
// as their ids and nothing added (the template writes the BOS where the model expects one).
//   --prompt / --prompt-file  each text is one user turn (after --system, if given)
//   --chat-file FILE.jsonl    one conversation per line: {"messages": [...]} (trailing
//                             assistant turns are dropped: SFT data works as it is),
//                             {"prompt": "text" | [messages]}, or any post-training shape
//                             (conversations, instruction/input, prompt/completion, preference:
//                             their prompt); other keys ("answer", ids) are ignored
// Generation stops at the tokenizer's end of sequence, the config's eos_token and the
// template's end-of-turn token (the special token it writes after an assistant turn, e.g.
// <|eot_id|>, <|im_end|>, <end_of_turn>); the completions' texts leave the stop token out.
#include <filesystem>
#include <fmt/core.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/strings.h"
#include "data/chat/chat_template.h"
#include "data/sft/chat_records.h"
#include "data/sft/stop_tokens.h"
#include "data/sft/sft_tokenize.h"
#include "data/tokenizer/tokenizer.h"
#include "infer/checkpoint_model.h"
#include "infer/generate.h"
#include "infer/cached_decoder.h"
#include "infer/npy_f32.h"

namespace primus::cli {

namespace {

struct Prompt {
  std::optional<std::string> text;  // absent for --prompt-ids; with --chat the rendered conversation
  std::vector<int32_t> ids;
  nlohmann::json messages;  // --chat: the conversation (null otherwise)
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  for (const std::string& part : split(s, ',')) {
    const std::string t = trim(part);
    if (t.empty()) continue;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    PRIMUS_CHECK(used == t.size() && v >= 0 && v <= INT32_MAX,
                 "--prompt-ids '{}': '{}' is not a token id (expected non-negative integers separated by commas, "
                 "e.g. --prompt-ids 1,2,3)", s, t);
    ids.push_back(static_cast<int32_t>(v));
  }
  PRIMUS_CHECK(!ids.empty(), "--prompt-ids '{}' holds no ids (expected e.g. --prompt-ids 1,2,3)", s);
  return ids;
}

std::vector<std::string> read_prompt_file(const std::string& path) {
  std::ifstream in(path);
  PRIMUS_CHECK(in.good(), "--prompt-file '{}' cannot be opened", path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!trim(line).empty()) out.push_back(line);
  }
  PRIMUS_CHECK(!out.empty(), "--prompt-file '{}' has no non-empty line (one prompt per line)", path);
  return out;
}

// Ends with an incomplete UTF-8 sequence decoded as U+FFFD: wait for the next token.
bool ends_with_replacement(const std::string& s) { return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0; }

// The completion's text: decode(prompt + new) minus decode(prompt), so that tokenizers
// whose decoders treat the first token specially (Metaspace) space the joint correctly.
std::string completion_text(const data::Tokenizer& tok, const std::vector<int32_t>& prompt,
                            const std::vector<int32_t>& generated) {
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), generated.begin(), generated.end());
  const std::string full = tok.decode(all, /*skip_special=*/true);
  const std::string head = tok.decode(prompt, /*skip_special=*/true);
  if (full.compare(0, head.size(), head) == 0) return full.substr(head.size());
  return tok.decode(generated, /*skip_special=*/true);
}

// ---- chat prompts ---------------------------------------------------------------------

// A message list as the chat template reads it: objects with string "role" and "content".
nlohmann::json checked_messages(const nlohmann::json& m, const std::string& where) {
  PRIMUS_CHECK(m.is_array() && !m.empty(), "{}: expected a non-empty list of messages "
               "[{{\"role\": ..., \"content\": ...}}], got {}", where, m.dump().substr(0, 200));
  for (const nlohmann::json& x : m)
    PRIMUS_CHECK(x.is_object() && x.contains("role") && x["role"].is_string() && x.contains("content") &&
                     x["content"].is_string(),
                 "{}: message {} is not {{\"role\": string, \"content\": string}}", where, x.dump().substr(0, 200));
  return m;
}

// The conversation to continue, from one line of --chat-file.
nlohmann::json chat_file_messages(const std::string& line, const std::string& path, int64_t line_no) {
  const std::string where = fmt::format("{}:{}", path, line_no);
  nlohmann::json obj;
  try {
    obj = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", where, e.what());
  }
  PRIMUS_CHECK(obj.is_object(), "{}: expected a JSON object such as {{\"messages\": [...]}} or {{\"prompt\": \"...\"}}",
               where);
  nlohmann::json messages;
  if (obj.contains("messages")) {
    messages = checked_messages(obj["messages"], where + ": \"messages\"");
  } else if (obj.contains("prompt") && !obj.contains("completion") && !obj.contains("chosen") &&
             !obj.contains("rejected")) {
    const nlohmann::json& p = obj["prompt"];
    messages = p.is_string() ? nlohmann::json::array({{{"role", "user"}, {"content", p}}})
                             : checked_messages(p, where + ": \"prompt\"");
  } else {
    const data::sft::ChatRecord r = data::sft::parse_chat_record(line, path, line_no, data::sft::RecordKind::kAny);
    messages = r.is_conversation() ? r.completion : r.prompt;
  }
  // The answer to generate is not part of the prompt.
  while (!messages.empty() && messages.back().value("role", "") == "assistant") messages.erase(messages.size() - 1);
  PRIMUS_CHECK(!messages.empty(), "{}: no message before the assistant's turn to generate", where);
  return messages;
}

std::vector<nlohmann::json> read_chat_file(const std::string& path) {
  std::ifstream in(path);
  PRIMUS_CHECK(in.good(), "--chat-file '{}' cannot be opened", path);
  std::vector<nlohmann::json> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!trim(line).empty()) out.push_back(chat_file_messages(line, path, n));
  }
  PRIMUS_CHECK(!out.empty(), "--chat-file '{}' has no record (one JSON object a line)", path);
  return out;
}

DType parse_dtype(const std::string& s, Device device) {
  if (s == "auto") return device == Device::CPU ? DType::F32 : DType::BF16;
  if (s == "fp32" || s == "float32") return DType::F32;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "fp16" || s == "float16") return DType::F16;
  fail("--dtype '{}' is not one of auto, fp32, bf16, fp16{}", s, did_you_mean(s, {"auto", "fp32", "bf16", "fp16"}));
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  CLI::App app{"Generate text from a Primus checkpoint (Llama family) with a KV cache", "generate"};
  std::string load, tokenizer_model, tokenizer_type, prompt_file, output_json, dump_logits;
  std::string chat_file, chat_template_opt, system_prompt;
  bool chat = false;
  std::string device_name_opt = "cpu", dtype_opt = "auto";
  std::optional<int64_t> iteration;
  std::vector<std::string> prompts_text, prompts_ids;
  std::vector<int32_t> stop_ids;
  int64_t vocab_size_opt = 0;
  infer::GenerateOptions gen;
  bool ignore_eos = false, no_special = false, no_stream = false, quiet = false;
  std::string kv_cache_memory;
  app.add_option("--load", load, "checkpoint: a save directory (latest iteration) or an iter_XXXXXXX directory")
      ->required();
  app.add_option("--iteration", iteration, "iteration to load from the save directory (default: the tracker's)");
  app.add_option("--tokenizer-model", tokenizer_model,
                 "tokenizer file (tokenizer.json or its directory, .model, ...); default: the checkpoint config's "
                 "tokenizer_model");
  app.add_option("--tokenizer-type", tokenizer_type,
                 "HuggingFaceTokenizer | SentencePieceTokenizer | TikTokenizer | NullTokenizer (default: the "
                 "checkpoint config's tokenizer_type, else HuggingFaceTokenizer)");
  app.add_option("--vocab-size", vocab_size_opt, "NullTokenizer: number of ids before the end of document");
  // One value per occurrence: `--prompt Hello world` is an error (quote the text), not two prompts.
  app.add_option("--prompt", prompts_text, "prompt text (repeat for a batch)")->allow_extra_args(false);
  app.add_option("--prompt-file", prompt_file, "file with one prompt per line (added after --prompt)");
  app.add_option("--prompt-ids", prompts_ids,
                 "prompt as token ids, e.g. 1,2,3 (repeatable; bypasses the tokenizer; added last)")
      ->allow_extra_args(false);
  app.add_flag("--chat", chat,
               "render each prompt as a user turn with the chat template (add_generation_prompt) and stop at its "
               "end-of-turn token");
  app.add_option("--chat-file", chat_file,
                 "JSONL of conversations to continue ({\"messages\": [...]} or {\"prompt\": ...} a line; "
                 "implies --chat)");
  app.add_option("--chat-template", chat_template_opt,
                 "--chat: a tokenizer_config.json or a .jinja file (default: tokenizer_config.json beside the "
                 "tokenizer)");
  app.add_option("--system", system_prompt, "--chat: a system turn before each prompt");
  app.add_option("--max-new-tokens", gen.max_new_tokens, "new tokens per prompt (default 64)");
  app.add_option("--temperature", gen.sampling.temperature, "sampling temperature; 0 = greedy (default 0)");
  app.add_option("--top-k", gen.sampling.top_k, "sample among the k most likely tokens (0 = off)");
  app.add_option("--top-p", gen.sampling.top_p, "nucleus sampling: smallest set with this total probability (1 = off)");
  app.add_option("--seed", gen.sampling.seed, "sampling seed (default 1234): same seed, same output");
  app.add_option("--stop-id", stop_ids, "extra token id that ends a sequence (repeatable)");
  app.add_flag("--ignore-eos", ignore_eos, "do not stop at the tokenizer's end-of-sequence tokens");
  app.add_flag("--no-special-tokens", no_special,
               "do not add the tokenizer's special-token template (e.g. Llama 3's <|begin_of_text|>) to prompts");
  app.add_option("--device", device_name_opt, "cpu | cuda (default cpu)");
  app.add_option("--dtype", dtype_opt, "compute dtype: auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16");
  app.add_option("--output-json", output_json, "write prompts, token ids, texts and tokens/s to this JSON file");
  app.add_option("--dump-logits", dump_logits,
                 "write the logits of every prompt position as fp32 .npy [prompts, tokens, padded vocab] (prompts "
                 "of equal length)");
  app.add_option("--kv-cache-memory", kv_cache_memory,
                 "memory for the KV cache, e.g. 2GiB, 512MiB, 1.5GB: as many sequences decode together as their "
                 "slots fit (continuous batching: a finished one leaves, a waiting prompt joins); default: one slot "
                 "per prompt");
  app.add_option("--max-batch", gen.kv_budget.max_batch,
                 "at most this many sequences decode together (continuous batching; with --kv-cache-memory the "
                 "smaller wins)");
  app.add_flag("--no-stream", no_stream, "print a single prompt's text at the end instead of token by token");
  app.add_flag("--quiet", quiet, "print no text and no throughput line (use with --output-json)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  Device device = Device::CPU;
  if (device_name_opt == "cuda") {
    device = Device::CUDA;
  } else {
    PRIMUS_CHECK(device_name_opt == "cpu", "--device '{}' is not one of cpu, cuda{}", device_name_opt,
                 did_you_mean(device_name_opt, {"cpu", "cuda"}));
  }
  const DType dtype = parse_dtype(dtype_opt, device);
  PRIMUS_CHECK(device != Device::CPU || dtype == DType::F32,
               "--dtype {}: the CPU backend computes in fp32 only (use --dtype fp32 or auto, or --device cuda)",
               dtype_opt);
  if (!chat_file.empty()) chat = true;
  PRIMUS_CHECK(!prompts_text.empty() || !prompt_file.empty() || !prompts_ids.empty() || !chat_file.empty(),
               "no prompt: pass --prompt TEXT (repeatable), --prompt-file FILE, --prompt-ids 1,2,3 or --chat-file "
               "FILE.jsonl");
  PRIMUS_CHECK(!chat || prompts_ids.empty(),
               "--prompt-ids with --chat: token ids bypass the chat template; give the prompt as text (--prompt) or "
               "conversations (--chat-file)");
  PRIMUS_CHECK(chat || (chat_template_opt.empty() && system_prompt.empty()),
               "--chat-template and --system apply to chat prompts: add --chat (or use --chat-file)");
  infer::validate(gen.sampling);
  PRIMUS_CHECK(gen.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got {}", gen.max_new_tokens);
  PRIMUS_CHECK(gen.kv_budget.max_batch >= 0, "--max-batch {} must be >= 1", gen.kv_budget.max_batch);
  if (!kv_cache_memory.empty())
    gen.kv_budget.memory_bytes = infer::parse_memory_size(kv_cache_memory, "--kv-cache-memory");

  ops::Context ctx = device == Device::CPU ? ops::Context::cpu() : ops::Context::cuda();
  infer::InferenceModel model = infer::load_inference_model(load, iteration, device, dtype);
  const ModelConfig& mc = model.config;

  // Tokenizer: the options, else what the checkpoint was trained with.
  const nlohmann::json& options = model.config_json.value("options", nlohmann::json::object());
  auto config_string = [&](const char* key) {
    return options.contains(key) && options[key].is_string() ? options[key].get<std::string>() : std::string();
  };
  if (tokenizer_type.empty()) tokenizer_type = config_string("tokenizer_type");
  if (tokenizer_type.empty()) tokenizer_type = "HuggingFaceTokenizer";
  const bool tokenizer_from_config = tokenizer_model.empty();
  if (tokenizer_from_config) tokenizer_model = config_string("tokenizer_model");
  std::vector<std::string> text_prompts = prompts_text;
  if (!prompt_file.empty())
    for (auto& p : read_prompt_file(prompt_file)) text_prompts.push_back(std::move(p));
  std::vector<nlohmann::json> conversations;
  if (chat) {
    for (const std::string& t : text_prompts)
      conversations.push_back(nlohmann::json::array({{{"role", "user"}, {"content", t}}}));
    if (!chat_file.empty())
      for (auto& m : read_chat_file(chat_file)) conversations.push_back(std::move(m));
    if (!system_prompt.empty())
      for (nlohmann::json& m : conversations)
        if (m[0].value("role", "") != "system")
          m.insert(m.begin(), nlohmann::json{{"role", "system"}, {"content", system_prompt}});
  }
  const bool need_tokenizer = !text_prompts.empty() || chat;
  // The training config's tokenizer path may be relative to another machine or directory.
  // Prompts given as ids do not need it: go on without it (token ids only) rather than fail.
  if (tokenizer_from_config && !tokenizer_model.empty() && !std::filesystem::exists(tokenizer_model)) {
    PRIMUS_CHECK(!need_tokenizer,
                 "the checkpoint's config names tokenizer_model '{}', which does not exist here; pass "
                 "--tokenizer-model PATH (the same tokenizer the model was trained with)",
                 tokenizer_model);
    fmt::print(stderr, "primus generate: note: the checkpoint's tokenizer_model '{}' does not exist here; "
                       "printing token ids only (pass --tokenizer-model to decode them)\n",
               tokenizer_model);
    tokenizer_model.clear();
    if (tokenizer_type != "NullTokenizer") tokenizer_type = "HuggingFaceTokenizer";
  }
  std::unique_ptr<data::Tokenizer> tok;
  if (!tokenizer_model.empty() || tokenizer_type == "NullTokenizer") {
    const int64_t null_vocab = vocab_size_opt > 0 ? vocab_size_opt : std::max<int64_t>(mc.vocab_size - 1, 1);
    tok = data::make_tokenizer(tokenizer_type, tokenizer_model, null_vocab);
    PRIMUS_CHECK(tok->vocab_size() <= mc.padded_vocab_size,
                 "tokenizer '{}' has {} ids but the checkpoint's model has only {} vocabulary rows: is it the "
                 "tokenizer the model was trained with?",
                 tokenizer_model, tok->vocab_size(), mc.padded_vocab_size);
  } else {
    PRIMUS_CHECK(!need_tokenizer,
                 "text prompts need a tokenizer: pass --tokenizer-model (a tokenizer.json, .model, ...) or give the "
                 "prompt as ids with --prompt-ids 1,2,3 (the checkpoint config names no tokenizer_model)");
  }

  std::vector<Prompt> prompts;
  const auto special = no_special ? data::SpecialTokens::kNone : data::SpecialTokens::kAdd;
  std::string chat_template_name;
  std::shared_ptr<const data::chat::ChatTemplate> chat_tmpl;  // --chat: its eos and end of turn stop
  if (chat) {
    const data::sft::ChatTemplateSource src = data::sft::load_chat_template(chat_template_opt, tokenizer_model, *tok);
    PRIMUS_CHECK(src.tmpl != nullptr, "--chat-template none: --chat needs a template (a tokenizer_config.json or a "
                 ".jinja file)");
    chat_template_name = src.name;
    for (const nlohmann::json& m : conversations) {
      std::string text;
      try {
        text = src.tmpl->render(m, /*add_generation_prompt=*/true);
      } catch (const std::exception& e) {
        fail("chat template {} failed to render prompt {}: {}", src.name, prompts.size(), e.what());
      }
      // The template spells every special token (BOS included, where the model has one).
      std::vector<int32_t> ids = tok->encode(text, data::SpecialTokens::kNone);
      PRIMUS_CHECK(!ids.empty(), "chat prompt {} renders to no tokens", prompts.size());
      prompts.push_back({text, std::move(ids), m});
    }
    chat_tmpl = src.tmpl;
  }
  if (!chat) {
    for (const std::string& t : text_prompts) {
      std::vector<int32_t> ids = tok->encode(t, special);
      PRIMUS_CHECK(!ids.empty(), "prompt '{}' encodes to no tokens", t);
      prompts.push_back({t, std::move(ids), nullptr});
    }
  }
  for (const std::string& s : prompts_ids) prompts.push_back({std::nullopt, parse_ids(s), nullptr});

  // Vocabulary the new tokens are drawn from, and where sequences stop.
  gen.vocab_limit = tok ? tok->vocab_size() : (mc.vocab_size > 0 ? mc.vocab_size : mc.padded_vocab_size);
  if (tok && !ignore_eos)
    for (int32_t id : data::sft::stop_token_ids(*tok, chat_tmpl.get()))
      if (std::find(stop_ids.begin(), stop_ids.end(), id) == stop_ids.end()) stop_ids.push_back(id);
  gen.stop_ids = stop_ids;

  const int64_t max_pos = mc.max_position_embeddings;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t n = static_cast<int64_t>(prompts[i].ids.size());
    for (int32_t id : prompts[i].ids)
      PRIMUS_CHECK(id < mc.padded_vocab_size, "prompt {}: token id {} is outside the model's vocabulary [0, {})", i,
                   id, mc.padded_vocab_size);
    if (max_pos > 0) {
      PRIMUS_CHECK(n <= max_pos,
                   "prompt {} has {} tokens, more than the model's max_position_embeddings {}: shorten the prompt",
                   i, n, max_pos);
      PRIMUS_CHECK(n + gen.max_new_tokens - 1 <= max_pos,
                   "prompt {} ({} tokens) + --max-new-tokens {} needs {} positions but max_position_embeddings is {}: "
                   "use --max-new-tokens {} or less",
                   i, n, gen.max_new_tokens, n + gen.max_new_tokens - 1, max_pos, max_pos - n + 1);
    }
  }
  if (!dump_logits.empty()) {
    for (const Prompt& p : prompts)
      PRIMUS_CHECK(p.ids.size() == prompts[0].ids.size(),
                   "--dump-logits needs prompts of equal length (got {} and {} tokens): dump one prompt at a time",
                   prompts[0].ids.size(), p.ids.size());
    gen.keep_prompt_logits = true;
  }

  infer::CachedDecoder decoder(mc, ctx, model.weights);
  std::vector<std::vector<int32_t>> ids;
  for (const Prompt& p : prompts) ids.push_back(p.ids);

  // Streaming: one prompt, text printed as soon as it is stable.
  const bool stream = prompts.size() == 1 && !no_stream && !quiet;
  std::string streamed;
  std::vector<int32_t> stream_ids;
  if (stream) {
    if (prompts[0].text) fmt::print("{}", *prompts[0].text);
    std::fflush(stdout);
    gen.on_token = [&](int64_t, int32_t t) {
      stream_ids.push_back(t);
      if (!tok) {
        fmt::print("{}{}", stream_ids.size() == 1 ? "" : " ", t);
      } else {
        const std::string text = completion_text(*tok, ids[0], stream_ids);
        if (ends_with_replacement(text) || text.size() < streamed.size() ||
            text.compare(0, streamed.size(), streamed) != 0)
          return;  // wait until the text is stable
        fmt::print("{}", text.substr(streamed.size()));
        streamed = text;
      }
      std::fflush(stdout);
    };
  }

  const infer::KvCachePlan plan = infer::plan_generation_cache(decoder, ids, gen);  // errors before any work
  const infer::GenerateResult r = infer::generate(decoder, ids, gen);

  std::vector<std::string> texts;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::string t;
    if (tok) {
      std::vector<int32_t> gen_ids = r.tokens[i];
      // Chat: the answer's text, without the end-of-turn / eos token that ended it.
      if (chat && r.finish_reasons[i] == "stop" && !gen_ids.empty()) gen_ids.pop_back();
      t = completion_text(*tok, ids[i], gen_ids);
    } else {
      for (int32_t id : r.tokens[i]) t += (t.empty() ? "" : " ") + std::to_string(id);
    }
    texts.push_back(std::move(t));
  }
  if (stream) {
    if (tok && texts[0].size() > streamed.size() && texts[0].compare(0, streamed.size(), streamed) == 0)
      fmt::print("{}", texts[0].substr(streamed.size()));
    fmt::print("\n");
  } else if (!quiet) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      fmt::print("=== prompt {} ({} tokens, {} new, {}) ===\n", i, ids[i].size(), r.tokens[i].size(),
                 r.finish_reasons[i]);
      if (prompts[i].text) {
        fmt::print("{}{}\n", *prompts[i].text, texts[i]);
      } else {
        fmt::print("{}\n", texts[i]);
      }
    }
  }
  const double total_s = r.prefill_seconds + r.decode_seconds;
  // A decode step reads every weight once and each sequence's KV cache up to its position: the
  // least memory traffic of a step, against an H100 SXM's 3.35 TB/s (the roofline).
  const double step_ms = 1e3 * r.decode_seconds / static_cast<double>(std::max<int64_t>(r.decode_steps, 1));
  // The cache a step reads: every position of every sequence, summed over the steps that
  // sequence was decoded in (prompt + its k-th token at step k), spread over the steps.
  double cache_positions = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const double n = static_cast<double>(r.tokens[i].size()) - 1;  // decode steps of sequence i
    cache_positions += n * static_cast<double>(ids[i].size()) + n * (n + 1) / 2;
  }
  const double step_bytes =
      static_cast<double>(decoder.weight_bytes()) +
      cache_positions / static_cast<double>(std::max<int64_t>(r.decode_steps, 1)) *
          static_cast<double>(decoder.cache_values_per_token() * dtype_size(decoder.dtype()));
  const std::string slots_text = fmt::format(
      "{} slot(s) x {} positions, {} ({}), {} prefill(s)", r.slots, r.cache_max_len, infer::format_bytes(r.cache_bytes),
      plan.limited_by == "memory"     ? "--kv-cache-memory " + kv_cache_memory
      : plan.limited_by == "max_batch" ? fmt::format("--max-batch {}", gen.kv_budget.max_batch)
                                       : "one slot per prompt",
      r.prefills);
  const double roofline_ms = step_bytes / 3.35e12 * 1e3;
  std::fflush(stdout);  // the text's last line before the stats on stderr (a shared terminal or pipe)
  if (!quiet)
    fmt::print(stderr,
               "[generate] {} prompt(s), {} prompt tokens, {} new tokens on {} ({}): prefill {:.3f} s ({:.1f} "
               "tokens/s), decode {:.3f} s ({:.1f} tokens/s, {:.3f} ms per step), {:.1f} new tokens/s overall; {}; "
               "slots: {}; a decode step reads >= {:.3f} GB (weights + KV cache): {:.3f} ms at 3.35 TB/s, {:.0f}% of "
               "that roofline\n",
               prompts.size(), r.prompt_tokens, r.generated_tokens, device_name_opt, dtype_name(dtype),
               r.prefill_seconds, r.prefill_tokens_per_s(), r.decode_seconds, r.decode_tokens_per_s(), step_ms,
               r.generated_tokens / std::max(total_s, 1e-12), decoder.cache_description(), slots_text, step_bytes / 1e9,
               roofline_ms, r.decode_steps > 0 ? 100.0 * roofline_ms / step_ms : 0.0);

  if (!dump_logits.empty()) infer::write_npy_f32(dump_logits, r.prompt_logits);
  if (!output_json.empty()) {
    nlohmann::json j;
    j["checkpoint"] = model.path;
    j["iteration"] = model.iteration;
    j["device"] = device_name_opt;
    j["dtype"] = dtype_name(dtype);
    j["tokenizer"] = tok ? nlohmann::json{{"type", tok->type_name()}, {"model", tokenizer_model}} : nlohmann::json();
    j["chat"] = chat;
    if (chat) {
      j["chat_template"] = chat_template_name;
      nlohmann::json msgs = nlohmann::json::array();
      for (const Prompt& p : prompts) msgs.push_back(p.messages);
      j["messages"] = msgs;
    }
    j["sampling"] = {{"temperature", gen.sampling.temperature},
                     {"top_k", gen.sampling.top_k},
                     {"top_p", gen.sampling.top_p},
                     {"seed", gen.sampling.seed},
                     {"greedy", gen.sampling.greedy()}};
    j["max_new_tokens"] = gen.max_new_tokens;
    j["stop_ids"] = gen.stop_ids;
    nlohmann::json ptext = nlohmann::json::array(), pids = nlohmann::json::array();
    for (const Prompt& p : prompts) {
      ptext.push_back(p.text ? nlohmann::json(*p.text) : nlohmann::json());
      pids.push_back(p.ids);
    }
    j["prompts"] = ptext;
    j["prompt_ids"] = pids;
    j["generated_ids"] = r.tokens;
    j["texts"] = texts;
    j["finish_reasons"] = r.finish_reasons;
    j["prompt_tokens"] = r.prompt_tokens;
    j["generated_tokens"] = r.generated_tokens;
    j["prefill_seconds"] = r.prefill_seconds;
    j["decode_seconds"] = r.decode_seconds;
    j["decode_steps"] = r.decode_steps;
    j["kv_cache"] = {{"slots", r.slots},
                     {"max_len", r.cache_max_len},
                     {"bytes", r.cache_bytes},
                     {"bytes_per_slot", plan.bytes_per_slot},
                     {"limited_by", plan.limited_by},
                     {"prefills", r.prefills}};
    j["decode_ms_per_step"] = step_ms;
    j["decode_bytes_per_step"] = step_bytes;
    j["roofline_ms_per_step_3_35TBps"] = roofline_ms;
    j["prefill_tokens_per_s"] = r.prefill_tokens_per_s();
    j["decode_tokens_per_s"] = r.decode_tokens_per_s();
    j["tokens_per_s"] = r.generated_tokens / std::max(total_s, 1e-12);
    std::ofstream out(output_json);
    PRIMUS_CHECK(out.good(), "--output-json '{}' cannot be written", output_json);
    out << j.dump(2) << "\n";
    PRIMUS_CHECK(out.good(), "--output-json '{}': write failed", output_json);
  }
  return 0;
}

}  // namespace primus::cli

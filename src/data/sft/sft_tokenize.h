// Chat records -> (tokens, loss mask), one example per record (two for a preference pair).
//
// With a chat template (the tokenizer's own, or a .jinja file):
//   the conversation is rendered once, R = render(messages). For each trained turn i (every
//   assistant turn of a conversation; every completion turn of prompt/completion and
//   preference records) P_i = render(messages[:i], add_generation_prompt = true for an
//   assistant turn) must be a prefix of F_i = render(messages[:i+1]), and F_i a prefix of R:
//   the characters R[len(P_i), len(F_i)) are the turn's own (its content and the end-of-turn
//   token the template writes, e.g. "81<|eot_id|>"). The render is tokenized piece by piece,
//   cut at those boundaries (special tokens written in the text, such as <|begin_of_text|>
//   and <|eot_id|>, become their ids, as HuggingFace's added tokens do), so the mask is
//   exact: a token carries loss iff it comes from a trained turn. A template for which the
//   prefix property fails (one that rewrites earlier turns, e.g. drops past reasoning) is an
//   error naming the template and the turn: use the loss mode "all" for it.
// Without a template ("none"): a record must be one user prompt and one assistant answer
//   (prompt/completion strings, alpaca, or a two-turn conversation):
//   tokens = [bos if the tokenizer has one] + prompt + completion + [eod], the loss on the
//   completion and the eod.
// Loss modes: assistant_only (the default: only trained turns / the completion) or all (every
//   token). Preference pairs always train the completion only.
//
// mask[j] says whether token j is a target that carries loss (the dataset turns it into
// the loss mask of position j - 1, whose label is token j).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/chat/chat_template.h"
#include "data/sft/chat_records.h"
#include "data/tokenizer/tokenizer.h"

namespace primus::data::sft {

enum class LossMode { kAssistantOnly, kAll };
const char* loss_mode_name(LossMode mode);  // "assistant_only" / "all"
// "assistant_only" / "all" -> LossMode; anything else is an error naming `key` and the choices.
LossMode parse_loss_mode(const std::string& value, const std::string& key = "loss_mode");

struct TokenizedExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // one per token: 1 = the token is a trained target
  int64_t loss_tokens() const;
};

// A chat template and what identifies it (for the cache key). Null template = "none".
struct ChatTemplateSource {
  std::shared_ptr<const chat::ChatTemplate> tmpl;
  std::string name;  // the file it came from, or "none"
  std::string hash;  // of the source text and the bos/eos strings it is rendered with
};

// Loads the template named by `spec`:
//   ""      the chat_template of tokenizer_config.json beside the tokenizer model (a model
//           directory, or the directory of a tokenizer.json); an error if it has none
//   "none"  no template (raw prompt + completion)
//   a path  a tokenizer_config.json (its chat_template), or any other file read as Jinja
//           source, rendered with bos_token/eos_token = the tokenizer's bos/eod strings
ChatTemplateSource load_chat_template(const std::string& spec, const std::string& tokenizer_model_path,
                                      const Tokenizer& tokenizer);

class SftTokenizer {
 public:
  // `tokenizer` must outlive this object (its word cache is used: one SftTokenizer per thread).
  SftTokenizer(Tokenizer& tokenizer, ChatTemplateSource tmpl, LossMode mode);

  // A conversation or prompt/completion record -> one example.
  TokenizedExample tokenize(const ChatRecord& record);
  // A preference record -> {chosen, rejected}: the prompt (rendered with
  // add_generation_prompt) then each completion as assistant turn(s); loss on the completion.
  std::pair<TokenizedExample, TokenizedExample> tokenize_preference(const ChatRecord& record);

  const ChatTemplateSource& chat_template() const { return tmpl_; }
  LossMode loss_mode() const { return mode_; }
  const Tokenizer& tokenizer() const { return tok_; }

 private:
  // messages rendered and tokenized; turns [first_trained, n) with role assistant (or all of
  // them when every_turn) carry loss.
  TokenizedExample render_and_tokenize(const ChatRecord& record, const nlohmann::json& messages,
                                       size_t first_trained, bool every_turn, bool force_completion_only);
  TokenizedExample raw(const ChatRecord& record, const nlohmann::json& prompt, const nlohmann::json& completion,
                       bool force_completion_only);
  void append_text(std::string_view text, bool trained, TokenizedExample& out);

  Tokenizer& tok_;
  ChatTemplateSource tmpl_;
  LossMode mode_;
};

}  // namespace primus::data::sft

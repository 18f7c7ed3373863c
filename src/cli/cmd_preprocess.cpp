// primus preprocess: JSONL (plain, .gz, .zst) -> Megatron .bin/.idx, with the flags of
// Megatron's tools/preprocess_data.py.
#include <fmt/core.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "data/tokenizer/tokenizer.h"

namespace primus::cli {

int cmd_preprocess(int argc, char** argv) {
  CLI::App app{"Tokenize JSONL documents into Megatron's indexed dataset (PREFIX_KEY_document.bin/.idx)",
               "preprocess"};
  data::PreprocessOptions opt;
  std::string tokenizer_type, tokenizer_model, vocab_file, merge_file;
  int64_t vocab_size = 0;
  int partitions = 1;
  bool no_special = false, quiet = false;
  app.add_option("--input", opt.inputs, "input JSONL file(s), plain, .gz or .zst (several: one output)")
      ->required()
      ->expected(1, -1);
  app.add_option("--output-prefix", opt.output_prefix, "output prefix: writes PREFIX_KEY_document.bin/.idx")
      ->required();
  app.add_option("--json-keys", opt.json_keys, "JSON keys to tokenize (default: text)")->expected(1, -1);
  app.add_option("--tokenizer-type", tokenizer_type,
                 "HuggingFaceTokenizer | SentencePieceTokenizer | GPT2BPETokenizer | TikTokenizer | NullTokenizer")
      ->required();
  app.add_option("--tokenizer-model", tokenizer_model, "tokenizer file (tokenizer.json or its directory, .model, ...)");
  app.add_option("--vocab-file", vocab_file, "GPT2BPETokenizer: vocab.json");
  app.add_option("--merge-file", merge_file, "GPT2BPETokenizer: merges.txt");
  app.add_option("--vocab-size", vocab_size, "NullTokenizer: number of ids (the end of document is this id)");
  app.add_flag("--append-eod", opt.append_eod, "append the end-of-document token to every document");
  app.add_option("--workers", opt.workers, "tokenizer threads (default 1)");
  app.add_option("--partitions", partitions,
                 "accepted for Megatron compatibility: the workers already split the input, and the output is one prefix");
  app.add_flag("--split-sentences", opt.split_sentences,
               "store each sentence as a sequence (PREFIX_KEY_sentence.*; rule-based splitter, not NLTK)");
  app.add_flag("--keep-newlines", opt.keep_newlines, "with --split-sentences: keep newlines between sentences");
  app.add_option("--log-interval", opt.log_interval, "documents between progress lines when not on a terminal");
  app.add_flag("--skip-bad-lines", opt.skip_bad_lines,
                "skip (and count) lines that are not JSON objects with the keys, instead of stopping");
  app.add_flag("--no-special-tokens", no_special,
               "do not apply the tokenizer's special-token template (Megatron's HuggingFaceTokenizer adds BOS)");
  app.add_flag("--quiet", quiet, "no progress lines");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  if (no_special) opt.special = data::SpecialTokens::kNone;
  opt.progress = !quiet;
  PRIMUS_CHECK(partitions >= 1, "--partitions must be >= 1 (got {})", partitions);
  PRIMUS_CHECK(opt.log_interval >= 1, "--log-interval must be >= 1 (got {})", opt.log_interval);
  auto tokenizer = data::make_tokenizer(tokenizer_type, tokenizer_model, vocab_size, vocab_file, merge_file);
  const data::PreprocessStats s = data::run_preprocess(opt, *tokenizer);
  const double mb = static_cast<double>(s.input_bytes) / 1e6;
  fmt::print(stderr,
             "[preprocess] done: {} documents, {} tokens, {:.1f} MB in {:.1f} s ({:.1f} MB/s, {:.0f} tokens/s){}{}\n",
             s.documents, s.tokens, mb, s.seconds, mb / std::max(s.seconds, 1e-9),
             static_cast<double>(s.tokens) / std::max(s.seconds, 1e-9),
             s.bad_lines ? fmt::format(", {} bad lines skipped", s.bad_lines) : "",
             s.empty_lines ? fmt::format(", {} empty lines", s.empty_lines) : "");
  for (const auto& p : s.output_prefixes) fmt::print("{}.bin\n{}.idx\n", p, p);
  return 0;
}

}  // namespace primus::cli

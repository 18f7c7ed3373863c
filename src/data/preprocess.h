// `primus preprocess`: JSONL -> Megatron .bin/.idx, with Megatron's preprocess_data.py
// semantics (one document per line; each --json-keys field is tokenized; --append-eod adds
// the tokenizer's end-of-document id; --split-sentences stores each sentence as a sequence
// in PREFIX_KEY_sentence.*, else PREFIX_KEY_document.*).
//
// Streaming: a reader thread feeds batches of lines to `workers` tokenizer threads (each
// with its own tokenizer clone); results are written in input order, so the output does
// not depend on the number of workers. Memory is bounded by the batches in flight.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/tokenizer/tokenizer.h"

namespace primus::data {

struct PreprocessOptions {
  std::vector<std::string> inputs;  // processed in order into one output prefix
  std::string output_prefix;
  std::vector<std::string> json_keys{"text"};
  bool append_eod = false;
  int workers = 1;
  bool split_sentences = false;
  bool keep_newlines = false;      // with split_sentences: keep '\n' between sentences
  SpecialTokens special = SpecialTokens::kAdd;  // Megatron's HuggingFaceTokenizer adds BOS
  bool skip_bad_lines = false;     // count and skip lines that are not JSON objects with the keys
  int64_t log_interval = 10000;    // documents between progress lines when not on a terminal
  bool progress = true;
};

struct PreprocessStats {
  int64_t documents = 0;
  int64_t bad_lines = 0;
  int64_t empty_lines = 0;
  int64_t tokens = 0;       // all keys
  int64_t input_bytes = 0;  // of the JSONL lines (decompressed)
  double seconds = 0;
  std::vector<std::string> output_prefixes;  // one per json key
};

// Output prefix of one key: PREFIX_KEY_document or PREFIX_KEY_sentence.
std::string preprocess_output_prefix(const std::string& prefix, const std::string& key, bool split_sentences);

// Runs the whole conversion. Throws primus::Error naming file:line on a bad line unless
// skip_bad_lines; on any error no file is left under the final names.
PreprocessStats run_preprocess(const PreprocessOptions& options, const Tokenizer& tokenizer);

// Sentence splitter for --split-sentences: ends a sentence after . ! ? (and closing quotes
// or brackets) followed by whitespace and an upper-case letter, digit or quote. A rule of
// thumb, not NLTK's punkt model.
std::vector<std::string> split_sentences(std::string_view text, bool keep_newlines);

}  // namespace primus::data

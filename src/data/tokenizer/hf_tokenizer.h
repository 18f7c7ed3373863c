// HuggingFace tokenizer.json (BPE models), and GPT-2's vocab.json + merges.txt.
//
// The pipeline is HuggingFace's: cut the text at added tokens -> normalize each piece
// (Prepend, Replace, Strip, NFC/NFKC/NFD/NFKD, Sequence) -> pre-tokenize (Split with a
// regex, ByteLevel, Metaspace, Sequence) -> BPE on each word -> template (BOS) when asked.
// decode runs the decoders (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip).
// Anything else in the file is refused at load with the type named, never ignored.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer/tokenizer.h"

namespace primus::data {

// `path`: a tokenizer.json, or a directory holding one. eod/bos/pad come from a
// tokenizer_config.json beside it (eos_token/bos_token/pad_token) when present, else from
// the usual names (<|end_of_text|>, </s>, <|endoftext|>, ...).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

// GPT-2's BPE files (Megatron's GPT2BPETokenizer): byte-level BPE with GPT-2's regex;
// <|endoftext|> is the end of document.
std::unique_ptr<Tokenizer> load_gpt2_bpe_tokenizer(const std::string& vocab_json, const std::string& merges_txt);

}  // namespace primus::data

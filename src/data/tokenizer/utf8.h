// UTF-8 helpers for the tokenizers: decoding one code point, encoding one, and replacing
// invalid byte sequences with U+FFFD the way WHATWG/Unicode "maximal subpart" decoders do
// (Node's TextDecoder, Python's errors="replace"), so that text with broken bytes gets the
// ids HuggingFace gives after the same lossy decoding (Rust's &str cannot hold invalid
// UTF-8, so HF never sees the raw bytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace primus::data {

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 if the bytes there are
// not a valid sequence (overlong, surrogate, > U+10FFFF, truncated, stray continuation).
size_t utf8_valid_length(std::string_view s, size_t i);

// True if every byte of `s` belongs to a valid UTF-8 sequence.
bool utf8_is_valid(std::string_view s);

// `s` with each maximal invalid subpart replaced by U+FFFD (EF BF BD).
std::string utf8_sanitize(std::string_view s);

// Decodes the valid sequence at s[i] (caller checked validity); sets `len`.
uint32_t utf8_decode(std::string_view s, size_t i, size_t& len);

// Appends the UTF-8 encoding of code point `cp` (<= 0x10FFFF).
void utf8_append(std::string& out, uint32_t cp);

}  // namespace primus::data

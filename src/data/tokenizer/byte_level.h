// GPT-2's byte-level alphabet: each byte 0..255 is spelled by one printable code point
// (printable Latin-1 bytes by themselves, the others by U+0100 + n in byte order), so a
// vocabulary of byte strings can be written as text. 'Ġ' (U+0120) is the space byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace primus::data {

// Code point spelling byte b.
uint32_t byte_to_codepoint(uint8_t b);

// Raw bytes of a byte-level string; nullopt if a character is outside the alphabet.
std::optional<std::string> byte_level_decode(std::string_view spelled);

// Byte-level spelling of raw bytes (for token strings shown to users).
std::string byte_level_encode(std::string_view bytes);

}  // namespace primus::data

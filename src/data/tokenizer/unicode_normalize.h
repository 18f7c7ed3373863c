// Unicode normalization forms for tokenizer.json normalizers (Qwen's NFC, ...), through ICU
// when the build has it.
#pragma once

#include <string>
#include <string_view>

namespace primus::data {

enum class UnicodeForm { kNFC, kNFD, kNFKC, kNFKD };

// False in a build without ICU; loading a tokenizer that needs it then fails by name.
bool unicode_normalize_available();
// `text` (valid UTF-8) in the given form.
std::string unicode_normalize(std::string_view text, UnicodeForm form);

}  // namespace primus::data

#include "data/tokenizer/unicode_normalize.h"

#include "core/error.h"

#if defined(PRIMUS_WITH_ICU)
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace primus::data {

#if defined(PRIMUS_WITH_ICU)
bool unicode_normalize_available() { return true; }

std::string unicode_normalize(std::string_view text, UnicodeForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::kNFC: n = icu::Normalizer2::getNFCInstance(status); break;
    case UnicodeForm::kNFD: n = icu::Normalizer2::getNFDInstance(status); break;
    case UnicodeForm::kNFKC: n = icu::Normalizer2::getNFKCInstance(status); break;
    case UnicodeForm::kNFKD: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  PRIMUS_CHECK(U_SUCCESS(status), "ICU normalizer unavailable: {}", u_errorName(status));
  const icu::UnicodeString in = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  if (n->isNormalized(in, status) && U_SUCCESS(status)) return std::string(text);
  status = U_ZERO_ERROR;
  const icu::UnicodeString out = n->normalize(in, status);
  PRIMUS_CHECK(U_SUCCESS(status), "ICU normalization failed: {}", u_errorName(status));
  std::string result;
  out.toUTF8String(result);
  return result;
}
#else
bool unicode_normalize_available() { return false; }

std::string unicode_normalize(std::string_view, UnicodeForm) {
  fail("Unicode normalization needs ICU; install libicu-dev and rebuild");
}
#endif

}  // namespace primus::data

// Unicode normalization and character classes (see unicode.hpp), on utf8proc.
#include "tokenizer/unicode.hpp"

#include <utf8proc.h>

#include <cstdlib>

#include "mlxterp/error.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {

utf8proc_int32_t category(uint32_t cp) { return utf8proc_category(utf8proc_int32_t(cp)); }

// Cc Cf Cn Co Cs: what Rust's unicode_categories calls is_other (BERT's "control").
bool is_other(uint32_t cp) {
  const auto c = category(cp);
  return c == UTF8PROC_CATEGORY_CN || c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF ||
         c == UTF8PROC_CATEGORY_CO || c == UTF8PROC_CATEGORY_CS;
}

// The CJK ideograph blocks BERT pads with spaces.
bool is_chinese_char(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

void append_lower(uint32_t cp, std::string& out) {
  // The one unconditional multi-character lowercase mapping (SpecialCasing.txt): İ -> i + combining dot.
  if (cp == 0x130) {
    out += "i\xCC\x87";
    return;
  }
  out += codepoint_to_utf8(uint32_t(utf8proc_tolower(utf8proc_int32_t(cp))));
}

}  // namespace

std::string unicode_normalize(std::string_view s, NormalForm form) {
  if (s.empty()) return {};
  int opts = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC: opts |= UTF8PROC_COMPOSE; break;
    case NormalForm::NFD: opts |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::NFKC: opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::NFKD: opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          utf8proc_ssize_t(s.size()), &dst, utf8proc_option_t(opts));
  MLXTERP_CHECK(n >= 0, "Unicode normalization: ", utf8proc_errmsg(n), "; expected valid UTF-8 text");
  std::string out(reinterpret_cast<const char*>(dst), size_t(n));
  std::free(dst);
  return out;
}

std::string unicode_lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) append_lower(next_codepoint(s, i), out);
  return out;
}

bool is_unicode_punctuation(uint32_t cp) {
  const auto c = category(cp);
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

bool is_bert_punctuation(uint32_t cp) {
  const bool ascii_punct = (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
                           (cp >= 0x7B && cp <= 0x7E);
  return ascii_punct || is_unicode_punctuation(cp);
}

std::string bert_normalize(std::string_view s, const BertNormalizerOptions& o) {
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = next_codepoint(s, i);
    if (o.clean_text) {
      // Removal first (a control character that is also White_Space, such as U+0085, goes), then
      // whitespace to ' '; tab, newline and carriage return count as whitespace, not control.
      const bool tnr = cp == '\t' || cp == '\n' || cp == '\r';
      if (!tnr && (cp == 0 || cp == 0xFFFD || is_other(cp))) continue;
      if (tnr || is_unicode_whitespace(cp)) {
        out += ' ';
        continue;
      }
    }
    if (o.handle_chinese_chars && is_chinese_char(cp)) {
      out += ' ';
      out += codepoint_to_utf8(cp);
      out += ' ';
      continue;
    }
    out += codepoint_to_utf8(cp);
  }
  if (o.strip_accents) {
    const std::string d = unicode_normalize(out, NormalForm::NFD);
    out.clear();
    for (size_t i = 0; i < d.size();) {
      const size_t b = i;
      const uint32_t cp = next_codepoint(d, i);
      if (category(cp) != UTF8PROC_CATEGORY_MN) out.append(d, b, i - b);
    }
  }
  if (o.lowercase) out = unicode_lowercase(out);
  return out;
}

std::string strip_marks(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t b = i;
    const auto c = category(next_codepoint(s, i));
    if (c != UTF8PROC_CATEGORY_MN && c != UTF8PROC_CATEGORY_MC && c != UTF8PROC_CATEGORY_ME) out.append(s, b, i - b);
  }
  return out;
}

}  // namespace mlxterp::tok

// Unicode normalization and character classes for the tokenizer pipeline (internal), on utf8proc:
// the NFC / NFD / NFKC / NFKD, Lowercase and BertNormalizer normalizers and the BERT pre-tokenizers of
// Hugging Face `tokenizers`, with the character semantics of Rust's `char` that those components use.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mlxterp::tok {

enum class NormalForm { NFC, NFD, NFKC, NFKD };

// `s` (valid UTF-8) in the normal form. Embedded NULs are kept.
std::string unicode_normalize(std::string_view s, NormalForm form);

// Rust's str -> chars -> char::to_lowercase, one character at a time (no context: a final sigma stays σ).
std::string unicode_lowercase(std::string_view s);

// Options of HF's BertNormalizer (strip_accents null in the JSON means "= lowercase").
struct BertNormalizerOptions {
  bool clean_text = true, handle_chinese_chars = true, strip_accents = true, lowercase = true;
};
std::string bert_normalize(std::string_view s, const BertNormalizerOptions& o);
// HF's StripAccents normalizer: drops every combining mark (general category Mn, Mc or Me); it does not
// decompose first (tokenizer.json files put an NFD / NFKD before it).
std::string strip_marks(std::string_view s);

// General category tests on a code point.
bool is_unicode_punctuation(uint32_t cp);  // P* (Pc Pd Ps Pe Pi Pf Po)
// What HF's BERT components count as punctuation: ASCII punctuation (which includes symbols such as $ + <
// = > ^ ` | ~) or a P* character.
bool is_bert_punctuation(uint32_t cp);

}  // namespace mlxterp::tok

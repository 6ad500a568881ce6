// SentencePiece's compiled normalization map (`precompiled_charsmap`), applied as Hugging Face's
// `Precompiled` normalizer does (T5, ALBERT, XLM-R, mBART, Marian tokenizer.json files). Internal.
//
// The map is a darts-clone double-array trie over UTF-8 byte strings whose values are offsets into a pool of
// NUL-terminated replacements:
//   [u32 little-endian: trie size in bytes][trie units, u32 LE each][replacement pool]
// HF applies it per extended grapheme cluster: a cluster shorter than 6 bytes whose bytes start with a key
// is replaced, as a whole, by the replacement of the *shortest* such key; otherwise each character of the
// cluster is replaced if it starts with a key (again the shortest), or kept.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlxterp::tok {

class PrecompiledCharsmap {
 public:
  // blob: the decoded charsmap bytes; `where` prefixes errors. An empty blob maps nothing (identity).
  PrecompiledCharsmap(std::string_view blob, const std::string& where);
  // `s` valid UTF-8.
  std::string normalize(std::string_view s) const;
  size_t trie_units() const { return trie_.size(); }

 private:
  // The replacement of the shortest key that `chunk` starts with; false if none.
  bool transform(std::string_view chunk, std::string_view* out) const;
  std::vector<uint32_t> trie_;
  std::string pool_;
};

// Standard base64 (RFC 4648 alphabet, '=' padding optional, no whitespace) -> bytes; throws on bad input.
std::string base64_decode(std::string_view b64, const std::string& where);

}  // namespace mlxterp::tok

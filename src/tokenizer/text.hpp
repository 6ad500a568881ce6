// Text helpers shared by the tokenizers (internal): UTF-8 validation and iteration, the GPT-2
// byte <-> unicode map, Rust-compatible lossy UTF-8 decoding, and "<0xXX>" byte-token names.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlxterp::tok {

// Length of the UTF-8 sequence starting with `lead` (1 for ASCII and for invalid lead bytes).
inline size_t utf8_len(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Offset of the first byte that starts an invalid UTF-8 sequence (overlong forms, surrogates and
// code points above U+10FFFF are invalid, as in Rust's str), or npos if `s` is valid.
size_t first_invalid_utf8(std::string_view s);
// Throws mlxterp::Error "<where>: the text is not valid UTF-8 at byte N ..." if `s` is invalid.
void check_utf8(std::string_view s, std::string_view where);

// Decodes the code point at s[i] (s valid UTF-8); advances i.
uint32_t next_codepoint(std::string_view s, size_t& i);
std::string codepoint_to_utf8(uint32_t cp);
// The UTF-8 characters of `s` (views into it).
std::vector<std::string_view> utf8_chars(std::string_view s);
size_t count_codepoints(std::string_view s);

// Unicode White_Space (what Rust's char::is_whitespace tests).
bool is_unicode_whitespace(uint32_t cp);

// Bytes -> text as Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// GPT-2's reversible byte -> printable-character map ("Ġ" for a space, "Ċ" for a newline).
const std::array<std::string, 256>& byte_to_unicode();
// The inverse: code point -> byte, or -1 if the code point is not one of the 256 images.
int unicode_to_byte(uint32_t cp);
// Maps every byte of `s` through byte_to_unicode().
std::string bytes_to_byte_level(std::string_view s);
// The inverse of bytes_to_byte_level for a whole token; false if some character is not a byte image.
bool byte_level_to_bytes(std::string_view token, std::string& out);

// "<0x0A>" -> 10; -1 if `piece` is not a byte token (exactly "<0x" two hex digits ">").
int parse_byte_token(std::string_view piece);
std::string byte_token_name(uint8_t b);  // 10 -> "<0x0A>"

// Replace every occurrence of `from` (non-empty) by `to`.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

inline constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 "▁"

}  // namespace mlxterp::tok

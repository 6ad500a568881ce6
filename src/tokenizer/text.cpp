// Text helpers shared by the tokenizers (see text.hpp).
#include "tokenizer/text.hpp"

#include <cstdio>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::tok {

namespace {
// Length of the valid UTF-8 sequence at s[i], or 0 if none starts there. `max_prefix` receives the
// length of the longest prefix that could still begin a valid sequence (for lossy decoding).
size_t valid_seq_len(std::string_view s, size_t i, size_t* max_prefix = nullptr) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  const uint8_t b0 = p[i];
  if (max_prefix) *max_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
  else if (b0 == 0xE0) len = 3, lo = 0xA0;
  else if (b0 >= 0xE1 && b0 <= 0xEC) len = 3;
  else if (b0 == 0xED) len = 3, hi = 0x9F;
  else if (b0 >= 0xEE && b0 <= 0xEF) len = 3;
  else if (b0 == 0xF0) len = 4, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3) len = 4;
  else if (b0 == 0xF4) len = 4, hi = 0x8F;
  else return 0;
  size_t k = 1;
  for (; k < len; ++k) {
    if (i + k >= n) break;
    const uint8_t b = p[i + k];
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) break;
  }
  if (max_prefix) *max_prefix = k;
  return k == len ? len : 0;
}
}  // namespace

size_t first_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < s.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t l = valid_seq_len(s, i);
    if (l == 0) return i;
    i += l;
  }
  return std::string_view::npos;
}

void check_utf8(std::string_view s, std::string_view where) {
  size_t bad = first_invalid_utf8(s);
  if (bad == std::string_view::npos) return;
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", unsigned(uint8_t(s[bad])));
  MLXTERP_FAIL(where, ": the text is not valid UTF-8 at byte ", bad, " (", hex,
               "); expected UTF-8 text (convert the input to UTF-8, or pass token ids directly)");
}

uint32_t next_codepoint(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  uint32_t c = p[i];
  if (c < 0x80) {
    ++i;
    return c;
  }
  size_t len = utf8_len(uint8_t(c));
  if (len == 1 || i + len > s.size()) {
    ++i;
    return 0xFFFD;
  }
  uint32_t cp = c & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
  i += len;
  return cp;
}

std::string codepoint_to_utf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

std::vector<std::string_view> utf8_chars(std::string_view s) {
  std::vector<std::string_view> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t l = std::min(utf8_len(uint8_t(s[i])), s.size() - i);
    out.push_back(s.substr(i, l));
    i += l;
  }
  return out;
}

size_t count_codepoints(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (uint8_t(c) & 0xC0) != 0x80;
  return n;
}

bool is_unicode_whitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t prefix = 1;
    size_t l = valid_seq_len(s, i, &prefix);
    if (l > 0) {
      out.append(s.substr(i, l));
      i += l;
    } else {
      out.append("\xEF\xBF\xBD");
      i += std::max<size_t>(prefix, 1);
    }
  }
  return out;
}

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = codepoint_to_utf8(printable ? uint32_t(b) : uint32_t(256 + n++));
    }
    return t;
  }();
  return table;
}

int unicode_to_byte(uint32_t cp) {
  static const std::array<int16_t, 324> inv = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    const auto& fwd = byte_to_unicode();
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      t[next_codepoint(fwd[b], i)] = int16_t(b);
    }
    return t;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

std::string bytes_to_byte_level(std::string_view s) {
  const auto& t = byte_to_unicode();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += t[uint8_t(c)];
  return out;
}

bool byte_level_to_bytes(std::string_view token, std::string& out) {
  const size_t mark = out.size();
  size_t i = 0;
  while (i < token.size()) {
    int b = unicode_to_byte(next_codepoint(token, i));
    if (b < 0) {
      out.resize(mark);
      return false;
    }
    out += char(b);
  }
  return true;
}

int parse_byte_token(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int h = hex(p[3]), l = hex(p[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

std::string byte_token_name(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", unsigned(b));
  return buf;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (true) {
    size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

}  // namespace mlxterp::tok

// HF's Precompiled normalizer (see precompiled.hpp): darts-clone trie lookups per grapheme cluster.
#include "tokenizer/precompiled.hpp"

#include <utf8proc.h>

#include <cstring>

#include "mlxterp/error.hpp"

namespace mlxterp::tok {

namespace {

// darts-clone unit fields.
bool unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
uint32_t unit_value(uint32_t u) { return u & 0x7fffffffu; }
uint32_t unit_label(uint32_t u) { return u & (0x80000000u | 0xffu); }
uint32_t unit_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

uint32_t read_u32le(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
}

int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::string base64_decode(std::string_view b64, const std::string& where) {
  while (!b64.empty() && b64.back() == '=') b64.remove_suffix(1);
  MLXTERP_CHECK(b64.size() % 4 != 1, where, ": base64 text of ", b64.size(),
                " characters (without padding) cannot be complete; expected a length that is not 1 mod 4");
  std::string out;
  out.reserve(b64.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < b64.size(); ++i) {
    const int v = b64_value(b64[i]);
    MLXTERP_CHECK(v >= 0, where, ": invalid base64 character at offset ", i, "; expected A-Z a-z 0-9 + /, got byte ",
                  int(static_cast<unsigned char>(b64[i])));
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

PrecompiledCharsmap::PrecompiledCharsmap(std::string_view blob, const std::string& where) {
  if (blob.empty()) return;
  MLXTERP_CHECK(blob.size() >= 4, where, ": precompiled_charsmap of ", blob.size(),
                " bytes; expected at least the 4-byte trie size");
  const uint32_t trie_bytes = read_u32le(blob.data());
  MLXTERP_CHECK(trie_bytes % 4 == 0 && trie_bytes >= 4 && 4 + uint64_t(trie_bytes) <= blob.size(), where,
                ": precompiled_charsmap declares a trie of ", trie_bytes, " bytes in a map of ", blob.size(),
                "; expected a positive multiple of 4 that fits (a truncated or foreign blob?)");
  trie_.resize(trie_bytes / 4);
  for (size_t i = 0; i < trie_.size(); ++i) trie_[i] = read_u32le(blob.data() + 4 + 4 * i);
  pool_.assign(blob.substr(4 + trie_bytes));
}

bool PrecompiledCharsmap::transform(std::string_view chunk, std::string_view* out) const {
  if (trie_.empty()) return false;
  size_t node = unit_offset(trie_[0]);
  for (const char ch : chunk) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == 0) return false;  // keys are NUL-free
    node ^= c;
    if (node >= trie_.size()) return false;
    const uint32_t unit = trie_[node];
    if (unit_label(unit) != c) return false;
    node ^= unit_offset(unit);
    if (unit_has_leaf(unit)) {
      if (node >= trie_.size()) return false;
      const size_t at = unit_value(trie_[node]);
      if (at > pool_.size()) return false;
      const size_t end = pool_.find('\0', at);
      *out = std::string_view(pool_).substr(at, (end == std::string::npos ? pool_.size() : end) - at);
      return true;  // the shortest key: HF takes the first common-prefix result
    }
  }
  return false;
}

std::string PrecompiledCharsmap::normalize(std::string_view s) const {
  if (trie_.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  // Code points with their byte spans; clusters from utf8proc's extended grapheme breaks (UAX #29).
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_int32_t state = 0, prev = -1;
  size_t cluster = 0;  // start of the current cluster
  auto flush = [&](size_t end) {
    if (end == cluster) return;
    const std::string_view g = s.substr(cluster, end - cluster);
    std::string_view rep;
    if (g.size() < 6 && transform(g, &rep)) {
      out += rep;
    } else {
      for (size_t i = 0; i < g.size();) {
        utf8proc_int32_t cp;
        const utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(g.data()) + i,
                                                    utf8proc_ssize_t(g.size() - i), &cp);
        const size_t len = n > 0 ? size_t(n) : 1;
        const std::string_view part = g.substr(i, len);
        if (transform(part, &rep)) out += rep;
        else out += part;
        i += len;
      }
    }
    cluster = end;
  };
  for (size_t i = 0; i < s.size();) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n = utf8proc_iterate(p + i, utf8proc_ssize_t(s.size() - i), &cp);
    const size_t len = n > 0 ? size_t(n) : 1;
    if (n <= 0) cp = -1;  // an invalid byte (not expected: the pipeline checks UTF-8) is its own cluster
    if (i > 0 && (prev < 0 || cp < 0 || utf8proc_grapheme_break_stateful(prev, cp, &state))) flush(i);
    if (cp < 0) state = 0;
    prev = cp;
    i += len;
  }
  flush(s.size());
  return out;
}

}  // namespace mlxterp::tok

// Added-token matching (see added.hpp).
#include "tokenizer/added.hpp"

#include <algorithm>

#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {
// Rust's char::is_alphanumeric() || '_' approximated on code points: what HF's single_word
// boundary test (`\w`) needs for the common cases.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  return !is_unicode_whitespace(cp) && cp != 0xFFFD;
}
uint32_t last_codepoint(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (uint8_t(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  return next_codepoint(s, i);
}
}  // namespace

AddedMatcher::AddedMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  nodes_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& c = tokens_[t].content;
    if (c.empty()) continue;
    first_byte_[uint8_t(c[0])] = true;
    int32_t node = 0;
    for (unsigned char ch : c) {
      int32_t nx = child(node, ch);
      if (nx < 0) {
        nx = int32_t(nodes_.size());
        auto& vec = nodes_[node].next;
        vec.insert(std::lower_bound(vec.begin(), vec.end(), std::make_pair(ch, int32_t(-1))), {ch, nx});
        nodes_.emplace_back();
      }
      node = nx;
    }
    if (nodes_[node].token < 0) nodes_[node].token = int32_t(t);
  }
}

int32_t AddedMatcher::child(int32_t node, unsigned char c) const {
  const auto& v = nodes_[node].next;
  auto it = std::lower_bound(v.begin(), v.end(), std::make_pair(c, int32_t(-1)));
  return it != v.end() && it->first == c ? it->second : -1;
}

void AddedMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  size_t start_offset = 0;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    if (!first_byte_[uint8_t(text[i])]) {
      ++i;
      continue;
    }
    // Longest token starting at i.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < n; ++j) {
      node = child(node, uint8_t(text[j]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) best = nodes_[node].token, best_end = j + 1;
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& tk = tokens_[best];
    size_t start = i, stop = best_end;
    if (tk.single_word) {
      bool start_ok = start == 0 || !is_word_char(last_codepoint(text.substr(0, start)));
      size_t k = stop;
      bool stop_ok = stop == n || !is_word_char(next_codepoint(text, k));
      if (!start_ok || !stop_ok) {
        ++i;
        continue;
      }
    }
    if (tk.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t p = s - 1;
        while (p > 0 && (uint8_t(text[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!is_unicode_whitespace(next_codepoint(text, q))) break;
        s = p;
      }
      start = std::max(s, start_offset);
    }
    if (tk.rstrip) {
      while (stop < n) {
        size_t q = stop;
        if (!is_unicode_whitespace(next_codepoint(text, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out.push_back({-1, start_offset, start});
    out.push_back({tk.id, start, stop});
    start_offset = stop;
    i = best_end;  // matching resumes after the token itself (as HF's find_iter does)
    if (i < stop) i = stop;
  }
  if (start_offset < n) out.push_back({-1, start_offset, n});
}

}  // namespace mlxterp::tok

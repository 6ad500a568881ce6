// The Unigram and WordPiece models (see subword.hpp).
#include "tokenizer/subword.hpp"

#include <algorithm>
#include <limits>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

// ---- Unigram ------------------------------------------------------------------------------------------

UnigramModel::UnigramModel(const std::vector<std::string>& pieces, const StringIdMap& vocab, std::vector<double> scores,
                           int32_t unk_id, bool byte_fallback, std::string where)
    : ids_(vocab), scores_(std::move(scores)), unk_id_(unk_id), byte_fallback_(byte_fallback), where_(std::move(where)) {
  const size_t n = scores_.size();
  MLXTERP_CHECK(pieces.size() >= n, where_, ": ", pieces.size(), " Unigram pieces but ", n,
                " scores; expected one score per piece");
  MLXTERP_CHECK(n > 0, where_, ": the Unigram vocabulary is empty; expected at least <unk>");
  MLXTERP_CHECK(unk_id_ < int32_t(n), where_, ": Unigram unk_id ", unk_id_, " is past the vocabulary (", n, " pieces)");
  min_score_ = std::numeric_limits<double>::infinity();
  terminal_.push_back(-1);  // the root
  for (size_t id = 0; id < n; ++id) {
    min_score_ = std::min(min_score_, scores_[id]);
    const std::string& p = pieces[id];
    if (p.empty()) continue;  // an empty piece never matches text
    int32_t node = 0;
    for (unsigned char c : p) {
      const uint64_t key = (uint64_t(uint32_t(node)) << 8) | c;
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        terminal_.push_back(-1);
        it = edges_.emplace(key, int32_t(terminal_.size() - 1)).first;
      }
      node = it->second;
    }
    terminal_[node] = int32_t(id);
  }
  for (int b = 0; b < 256; ++b) byte_ids_[b] = find_id(ids_, byte_token_name(uint8_t(b)));
}

void UnigramModel::encode(std::string_view s, std::vector<int32_t>& out) const {
  if (s.empty()) return;
  struct Best {
    double score = 0.0;
    int64_t start = -1;  // -1: no path ends here yet
    int32_t id = 0;
  };
  const size_t n = s.size();
  const double unk_score = min_score_ - 10.0;
  std::vector<Best> best(n + 1);
  auto offer = [&](size_t end, size_t start, double score, int32_t id) {
    Best& b = best[end];
    if (b.start < 0 || score > b.score) b = {score, int64_t(start), id};
  };
  for (size_t pos = 0; pos < n;) {
    const double here = best[pos].score;
    const size_t mblen = std::min(utf8_len(uint8_t(s[pos])), n - pos);
    bool single = false;
    int32_t node = 0;
    for (size_t q = pos; q < n; ++q) {
      node = child(node, uint8_t(s[q]));
      if (node < 0) break;
      const int32_t id = terminal_[node];
      if (id < 0) continue;
      offer(q + 1, pos, scores_[id] + here, id);
      if (q + 1 - pos == mblen) single = true;
    }
    if (!single) {
      MLXTERP_CHECK(unk_id_ >= 0, where_, ": the character ", quote(std::string(s.substr(pos, mblen))),
                    " is not in the Unigram vocabulary and the model has no unk_id; expected an unk_id in the "
                    "tokenizer.json (or byte_fallback pieces)");
      offer(pos + mblen, pos, unk_score + here, unk_id_);
    }
    pos += mblen;
  }
  // Back from the end: (begin, end, is_unk) per token, consecutive unks fused.
  struct Tok {
    size_t b, e;
    int32_t id;
  };
  std::vector<Tok> toks;
  for (size_t e = n; e > 0;) {
    const Best& b = best[e];
    const size_t st = size_t(b.start);
    if (b.id == unk_id_ && unk_id_ >= 0 && !toks.empty() && toks.back().id == unk_id_ && toks.back().b == e)
      toks.back().b = st;
    else
      toks.push_back({st, e, b.id});
    e = st;
  }
  for (auto it = toks.rbegin(); it != toks.rend(); ++it) {
    const std::string_view piece = s.substr(it->b, it->e - it->b);
    const int32_t id = find_id(ids_, piece);
    if (id >= 0) {
      out.push_back(id);
    } else if (byte_fallback_ &&
               std::all_of(piece.begin(), piece.end(), [&](char c) { return byte_ids_[uint8_t(c)] >= 0; })) {
      for (unsigned char c : piece) out.push_back(byte_ids_[c]);
    } else {
      out.push_back(unk_id_);
    }
  }
}

// ---- WordPiece ----------------------------------------------------------------------------------------

WordPieceModel::WordPieceModel(const StringIdMap& vocab, std::string unk_token, std::string prefix, size_t max_chars,
                               std::string where)
    : vocab_(vocab), unk_token_(std::move(unk_token)), prefix_(std::move(prefix)), max_chars_(max_chars),
      where_(std::move(where)) {
  unk_id_ = find_id(vocab_, unk_token_);
}

void WordPieceModel::push_unk(std::vector<int32_t>& out) const {
  MLXTERP_CHECK(unk_id_ >= 0, where_, ": WordPiece needs its unk_token ", quote(unk_token_),
                " for this word, and it is not in the vocabulary; expected the unk_token among the model's pieces");
  out.push_back(unk_id_);
}

void WordPieceModel::encode(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (count_codepoints(word) > max_chars_) return push_unk(out);
  const size_t mark = out.size();
  std::string key;
  for (size_t start = 0; start < word.size();) {
    size_t end = word.size();
    int32_t found = -1;
    while (start < end) {
      key.assign(start > 0 ? prefix_ : std::string());
      key.append(word.substr(start, end - start));
      found = find_id(vocab_, key);
      if (found >= 0) break;
      // Drop the last character of word[start, end).
      size_t p = end - 1;
      while (p > start && (uint8_t(word[p]) & 0xC0) == 0x80) --p;
      end = p;
    }
    if (found < 0) {
      out.resize(mark);
      return push_unk(out);
    }
    out.push_back(found);
    start = end;
  }
}

}  // namespace mlxterp::tok

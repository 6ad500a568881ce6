// The two BPE engines (see bpe.hpp).
#include "tokenizer/bpe.hpp"

#include <queue>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

// ---- WordCache -----------------------------------------------------------------------------------

bool WordCache::get(std::string_view word, std::vector<int32_t>& out) const {
  std::shared_lock lock(mu_);
  auto it = map_.find(word);
  if (it == map_.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::put(std::string_view word, const int32_t* ids, size_t n) const {
  std::unique_lock lock(mu_);
  if (map_.size() >= capacity_) map_.clear();
  map_.emplace(std::string(word), std::vector<int32_t>(ids, ids + n));
}

// ---- MergeBpe ------------------------------------------------------------------------------------

namespace {
struct Symbol {
  int32_t id;
  int32_t prev, next;
  uint32_t len;  // bytes of the word covered (0 = merged away)
};
struct MergeCand {
  int32_t rank, pos, new_id;
  bool operator<(const MergeCand& o) const {  // std::priority_queue is a max-heap: invert
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};
}  // namespace

MergeBpe::MergeBpe(const StringIdMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   const MergeBpeOptions& options, const std::string& where)
    : vocab_(vocab), opt_(options), where_(where) {
  merges_.reserve(merges.size() * 2);
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    // HF drops the prefix's length from b whatever b starts with.
    const std::string made = a + b.substr(std::min(b.size(), opt_.continuing_prefix.size()));
    int32_t ia = find_id(vocab, a), ib = find_id(vocab, b), in = find_id(vocab, made);
    MLXTERP_CHECK(ia >= 0 && ib >= 0, where, ": merge ", r, " (", quote(a), " ", quote(b),
                  ") uses a piece missing from the vocabulary; expected both halves in the vocabulary");
    MLXTERP_CHECK(in >= 0, where, ": merge ", r, " (", quote(a), " ", quote(b), ") makes ", quote(made),
                  ", which is missing from the vocabulary");
    merges_.emplace(uint64_t(uint32_t(ia)) << 32 | uint32_t(ib), std::make_pair(int32_t(r), in));
  }
  all_bytes_ = true;
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = find_id(vocab, byte_token_name(uint8_t(b)));
    all_bytes_ &= byte_ids_[b] >= 0;
  }
}

void MergeBpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (opt_.ignore_merges) {
    int32_t id = find_id(vocab_, word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() <= opt_.max_cached_len;
  if (cacheable && cache_.get(word, out)) return;
  const size_t mark = out.size();
  merge_word(word, out);
  if (cacheable) cache_.put(word, out.data() + mark, out.size() - mark);
}

void MergeBpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto push = [&](int32_t id, uint32_t len) {
    int32_t idx = int32_t(sym.size());
    sym.push_back({id, idx - 1, -1, len});
    if (idx > 0) sym[idx - 1].next = idx;
  };
  bool prev_unk = false;
  const bool affixed = !opt_.continuing_prefix.empty() || !opt_.end_suffix.empty();
  std::string key;  // the character with its prefix / suffix, when the model has them
  size_t i = 0;
  while (i < word.size()) {
    size_t l = std::min(utf8_len(uint8_t(word[i])), word.size() - i);
    std::string_view ch = word.substr(i, l);
    if (affixed) {
      key.assign(i > 0 ? opt_.continuing_prefix : std::string());
      key += ch;
      if (i + l == word.size()) key += opt_.end_suffix;
      ch = key;
    }
    int32_t id = find_id(vocab_, ch);
    if (id >= 0) {
      push(id, uint32_t(l));
      prev_unk = false;
    } else if (opt_.byte_fallback && all_bytes_) {
      for (size_t k = 0; k < ch.size(); ++k) push(byte_ids_[uint8_t(ch[k])], 1);  // HF: the affixed bytes
      prev_unk = false;
    } else {
      MLXTERP_CHECK(opt_.unk_id >= 0, where_, ": the character ", quote(ch),
                    " is not in the vocabulary and the BPE model has no unk_token; expected a byte-level or byte-fallback "
                    "vocabulary");
      if (opt_.fuse_unk && prev_unk) {
        sym.back().len += uint32_t(l);
      } else {
        push(opt_.unk_id, uint32_t(l));
      }
      prev_unk = true;
    }
    i += l;
  }
  if (sym.size() > 1) {
    std::vector<MergeCand> heap_storage;
    heap_storage.reserve(sym.size());
    std::priority_queue<MergeCand> heap(std::less<MergeCand>(), std::move(heap_storage));
    auto lookup = [&](int32_t a, int32_t b) -> const std::pair<int32_t, int32_t>* {
      auto it = merges_.find(uint64_t(uint32_t(a)) << 32 | uint32_t(b));
      return it == merges_.end() ? nullptr : &it->second;
    };
    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      if (auto m = lookup(sym[k].id, sym[k + 1].id)) heap.push({m->first, int32_t(k), m->second});
    }
    while (!heap.empty()) {
      MergeCand top = heap.top();
      heap.pop();
      Symbol& left = sym[top.pos];
      if (left.len == 0 || left.next < 0) continue;
      Symbol& right = sym[left.next];
      auto m = lookup(left.id, right.id);
      if (!m || m->second != top.new_id) continue;
      // Merge right into left.
      left.id = top.new_id;
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) sym[right.next].prev = top.pos;
      if (left.prev >= 0) {
        if (auto mp = lookup(sym[left.prev].id, left.id)) heap.push({mp->first, left.prev, mp->second});
      }
      if (left.next >= 0) {
        if (auto mn = lookup(left.id, sym[left.next].id)) heap.push({mn->first, top.pos, mn->second});
      }
    }
  }
  for (int32_t k = 0; k >= 0 && k < int32_t(sym.size()); k = sym[k].next) out.push_back(sym[k].id);
}

// ---- ScoreBpe ------------------------------------------------------------------------------------

namespace {
struct SpSymbol {
  uint32_t start, len;  // span of the text (len 0 = merged away)
  int32_t prev, next;
  int32_t id;           // >= 0 when fixed up front (llama2.c byte fallback); such symbols never merge
};
struct SpCand {
  float score;
  int32_t left;
  uint32_t len;  // total length at push time (to detect stale candidates)
  bool operator<(const SpCand& o) const { return score != o.score ? score < o.score : left > o.left; }
};
}  // namespace

ScoreBpe::ScoreBpe(std::vector<std::string> pieces, std::vector<float> scores, std::vector<uint8_t> mergeable,
                   const ScoreBpeOptions& options)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), opt_(options) {
  MLXTERP_ASSERT(pieces_.size() == scores_.size() && pieces_.size() == mergeable.size());
  mergeable_map_.reserve(pieces_.size() * 2);
  all_map_.reserve(pieces_.size() * 2);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    all_map_.emplace(pieces_[i], int32_t(i));  // first occurrence wins
    if (mergeable[i]) mergeable_map_.emplace(pieces_[i], int32_t(i));
  }
  all_bytes_ = true;
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = find_id(all_map_, byte_token_name(uint8_t(b)));
    all_bytes_ &= byte_ids_[b] >= 0;
  }
}

void ScoreBpe::encode(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<SpSymbol> sym;
  sym.reserve(text.size());
  auto push = [&](uint32_t start, uint32_t len, int32_t id) {
    int32_t idx = int32_t(sym.size());
    sym.push_back({start, len, idx - 1, -1, id});
    if (idx > 0) sym[idx - 1].next = idx;
  };
  for (size_t i = 0; i < text.size();) {
    size_t l = std::min(utf8_len(uint8_t(text[i])), text.size() - i);
    if (opt_.early_byte_fallback && find_id(all_map_, text.substr(i, l)) < 0) {
      for (size_t k = 0; k < l; ++k) push(uint32_t(i + k), 1, int32_t(uint8_t(text[i + k])) + 3);
    } else {
      push(uint32_t(i), uint32_t(l), -1);
    }
    i += l;
  }
  std::priority_queue<SpCand> heap;
  auto try_pair = [&](int32_t a) {
    if (a < 0) return;
    const SpSymbol& l = sym[a];
    if (l.next < 0 || l.id >= 0 || sym[l.next].id >= 0) return;
    const SpSymbol& r = sym[l.next];
    int32_t id = find_id(mergeable_map_, text.substr(l.start, l.len + r.len));
    if (id >= 0) heap.push({scores_[id], a, l.len + r.len});
  };
  for (int32_t k = 0; k + 1 < int32_t(sym.size()); ++k) try_pair(k);
  while (!heap.empty()) {
    SpCand top = heap.top();
    heap.pop();
    SpSymbol& l = sym[top.left];
    if (l.len == 0 || l.next < 0 || l.len + sym[l.next].len != top.len) continue;
    SpSymbol& r = sym[l.next];
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = top.left;
    try_pair(l.prev);
    try_pair(top.left);
  }
  for (int32_t k = 0; k >= 0 && k < int32_t(sym.size()); k = sym[k].next) {
    const SpSymbol& s = sym[k];
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    std::string_view piece = text.substr(s.start, s.len);
    int32_t id = find_id(all_map_, piece);
    if (id >= 0) {
      out.push_back(id);
    } else if (all_bytes_) {
      for (char c : piece) out.push_back(byte_ids_[uint8_t(c)]);
    } else {
      out.push_back(opt_.unk_id);
    }
  }
}

}  // namespace mlxterp::tok

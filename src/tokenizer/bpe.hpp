// The two BPE engines (internal).
//
//   MergeBpe  — Hugging Face `tokenizers`' BPE model: a word is split into characters (byte tokens
//               "<0xXX>" or <unk> for characters outside the vocabulary), then adjacent pairs are merged
//               lowest merge rank first (ties: leftmost). Used by tokenizer.json and GGUF gpt2 vocabularies.
//   ScoreBpe  — SentencePiece's BPE (and llama.cpp's / llama2.c's): adjacent pairs whose concatenation
//               is a vocabulary piece are merged highest piece score first (ties: leftmost); symbols
//               left outside the vocabulary become byte tokens (or <unk>). Used by GGUF llama
//               vocabularies and llama2.c tok*.bin.
// Both are O(n log n) in the word length with a binary heap; MergeBpe caches whole-word results.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mlxterp::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept {
    // FNV-1a, 64-bit: fast on the short keys BPE looks up.
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return size_t(h ^ (h >> 29));
  }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

inline int32_t find_id(const StringIdMap& m, std::string_view s) {
  auto it = m.find(s);
  return it == m.end() ? -1 : it->second;
}

// A bounded, thread-safe word -> ids cache (cleared when full).
class WordCache {
 public:
  explicit WordCache(size_t capacity = 200000) : capacity_(capacity) {}
  bool get(std::string_view word, std::vector<int32_t>& out) const;
  void put(std::string_view word, const int32_t* ids, size_t n) const;

 private:
  size_t capacity_;
  mutable std::shared_mutex mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map_;
};

struct MergeBpeOptions {
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  int32_t unk_id = -1;        // -1: a character outside the vocabulary is an error
  size_t max_cached_len = 256;  // words longer than this (bytes) are not cached
  // HF's continuing_subword_prefix / end_of_word_suffix: every character but a word's first is looked up as
  // prefix + char, its last as char + suffix, and merge (a, b) makes a + b without b's prefix (WordPiece-style
  // "##" BPE vocabularies; CLIP's and OpenAI GPT's "</w>").
  std::string continuing_prefix, end_suffix;
};

class MergeBpe {
 public:
  // `vocab` must outlive the engine. Merges are pairs of vocabulary pieces, in rank order.
  MergeBpe(const StringIdMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           const MergeBpeOptions& options, const std::string& where);
  // Appends the ids of one pre-tokenized word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  size_t n_merges() const { return merges_.size(); }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  const StringIdMap& vocab_;
  MergeBpeOptions opt_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left << 32 | right) -> (rank, new id)
  int32_t byte_ids_[256];
  bool all_bytes_ = false;
  WordCache cache_;
  std::string where_;
};

struct ScoreBpeOptions {
  // Characters outside the vocabulary: byte tokens if every "<0xXX>" exists, else unk_id.
  int32_t unk_id = 0;
  // llama2.c: characters outside the vocabulary become byte tokens at once (before merging).
  bool early_byte_fallback = false;
};

class ScoreBpe {
 public:
  // pieces[i] is token i's text as it appears in the (normalized) input; scores[i] its score;
  // mergeable[i] whether a merge may produce it (normal pieces, not control or byte tokens).
  ScoreBpe(std::vector<std::string> pieces, std::vector<float> scores, std::vector<uint8_t> mergeable,
           const ScoreBpeOptions& options);
  // Appends the ids for `text` (already normalized: "▁" for spaces, dummy prefix added).
  void encode(std::string_view text, std::vector<int32_t>& out) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  StringIdMap mergeable_map_;  // pieces a merge may produce
  StringIdMap all_map_;        // every piece (for the initial characters and the final lookup)
  ScoreBpeOptions opt_;
  int32_t byte_ids_[256];
  bool all_bytes_ = false;
};

}  // namespace mlxterp::tok

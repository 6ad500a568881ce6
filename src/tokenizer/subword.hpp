// The Unigram and WordPiece models of Hugging Face `tokenizers` (internal).
//
//   UnigramModel   — SentencePiece's unigram language model as HF runs it: the Viterbi path that
//                    maximises the summed piece scores (float64) over a byte trie of the pieces;
//                    a character no piece starts with becomes <unk> at (lowest score - 10), and
//                    consecutive <unk>s fuse into one; with byte_fallback an <unk> becomes its
//                    "<0xXX>" byte pieces. Ties keep the path found first (earlier start).
//   WordPieceModel — BERT's greedy longest-match-first: the longest vocabulary prefix of the word,
//                    then of the rest with the continuing-subword prefix ("##"), and so on; a word with
//                    no complete segmentation, or longer than max_input_chars_per_word characters,
//                    is one <unk>.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe.hpp"

namespace mlxterp::tok {

class UnigramModel {
 public:
  // pieces[id] with scores[id] for id < scores.size() (later pieces, such as added tokens, are not the
  // model's); `vocab` maps each piece to its id (the last of equal pieces) and must outlive the model.
  // unk_id -1 when the model has none (an unknown character is then an error).
  UnigramModel(const std::vector<std::string>& pieces, const StringIdMap& vocab, std::vector<double> scores,
               int32_t unk_id, bool byte_fallback, std::string where);
  // Appends the ids of one pre-tokenized piece.
  void encode(std::string_view s, std::vector<int32_t>& out) const;

 private:
  int32_t child(int32_t node, uint8_t byte) const {
    auto it = edges_.find((uint64_t(uint32_t(node)) << 8) | byte);
    return it == edges_.end() ? -1 : it->second;
  }
  std::vector<int32_t> terminal_;                  // trie node -> piece id (last of equal pieces), or -1
  std::unordered_map<uint64_t, int32_t> edges_;    // (node << 8 | byte) -> child node
  const StringIdMap& ids_;                         // piece -> id (last of equal pieces)
  std::vector<double> scores_;
  double min_score_ = 0.0;
  int32_t unk_id_;
  bool byte_fallback_;
  int32_t byte_ids_[256];  // "<0xXX>" piece ids, -1 where absent
  std::string where_;
};

class WordPieceModel {
 public:
  // `vocab` must outlive the model.
  WordPieceModel(const StringIdMap& vocab, std::string unk_token, std::string prefix, size_t max_chars,
                 std::string where);
  void encode(std::string_view word, std::vector<int32_t>& out) const;

 private:
  void push_unk(std::vector<int32_t>& out) const;
  const StringIdMap& vocab_;
  std::string unk_token_, prefix_;
  int32_t unk_id_;
  size_t max_chars_;
  std::string where_;
};

}  // namespace mlxterp::tok

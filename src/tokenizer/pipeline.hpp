// The Hugging Face tokenization pipeline (internal), shared by tokenizer.json files and GGUF
// vocabularies:
//   added tokens (raw) -> normalizers -> added tokens (normalized) -> pre-tokenizers -> model (BPE,
//   Unigram, WordPiece or WordLevel)
//   -> post-processor template (BOS ...);   decode: ids -> pieces -> decoders -> text.
// Each stage mirrors the component of the same name in HF `tokenizers` (0.2x).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mlxterp/tokenizer.hpp"
#include "tokenizer/added.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/precompiled.hpp"
#include "tokenizer/regex.hpp"
#include "tokenizer/subword.hpp"
#include "tokenizer/unicode.hpp"

namespace mlxterp::tok {

struct NormalizerStep {
  enum Kind { Prepend, Replace, ReplaceRegex, Strip, Unicode, Lowercase, Bert, StripAccents, Precompiled } kind;
  std::string a, b;  // Prepend: a; Replace: a -> b
  std::shared_ptr<Regex> re;
  bool left = false, right = false;  // Strip
  NormalForm form = NormalForm::NFC;  // Unicode
  BertNormalizerOptions bert;         // Bert
  std::shared_ptr<const PrecompiledCharsmap> charsmap;  // Precompiled
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { Always, First, Never };

struct PreTokStep {
  // BertPre: split on whitespace (removed) and BERT punctuation (isolated); Punctuation: split on BERT
  // punctuation with `behavior`.
  enum Kind { ByteLevel, Split, Metaspace, Digits, WhitespaceSplit, BertPre, Punctuation } kind;
  // ByteLevel
  bool add_prefix_space = false, use_regex = true;
  // Split (also Digits / Whitespace through a regex)
  std::shared_ptr<Regex> re;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  // Metaspace
  std::string replacement = "\xE2\x96\x81";
  PrependScheme prepend_scheme = PrependScheme::Always;
  bool split = true;
};

struct DecoderStep {
  enum Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece, BpeSuffix } kind;
  // Replace a -> b; Strip content a; Metaspace replacement a; WordPiece prefix a; BpeSuffix (BPEDecoder) suffix a
  std::string a, b;
  size_t start = 0, stop = 0;        // Strip
  PrependScheme prepend_scheme = PrependScheme::Always;  // Metaspace
  bool cleanup = false;                                  // WordPiece
};

// How token_to_str shows a vocabulary entry.
enum class DisplayMode { Raw, ByteLevel, Spm };

struct PipelineSpec {
  std::string source, kind;
  std::vector<std::string> vocab;  // id -> piece (model vocabulary and added tokens)
  StringIdMap model_vocab;         // the model's own vocabulary (what BPE looks characters up in)
  std::vector<AddedToken> added;
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokStep> pretokenizers;
  // Model: MergeBpe (merges), ScoreBpe (score_bpe), Unigram (unigram) or WordPiece (wordpiece).
  std::vector<std::pair<std::string, std::string>> merges;  // MergeBpe
  MergeBpeOptions merge_options;
  bool score_bpe = false;  // ScoreBpe (GGUF llama vocabularies)
  std::vector<float> scores;
  std::vector<uint8_t> mergeable;
  int32_t unk_id = -1;
  bool unigram = false;  // pieces = vocab ids below unigram_scores.size(); byte fallback as merge_options
  std::vector<double> unigram_scores;
  bool wordlevel = false;  // WordLevel: each pre-token is looked up whole in model_vocab (unk_id otherwise)
  bool wordpiece = false;  // model_vocab, unk_token, continuing-subword prefix, max characters per word
  std::string wordpiece_unk, wordpiece_prefix = "##";
  size_t wordpiece_max_chars = 100;
  // Post-processor (single-sequence template) and decoders.
  std::vector<int32_t> prefix, suffix;
  bool has_decoder = false;
  std::vector<DecoderStep> decoders;
  DisplayMode display = DisplayMode::Raw;
  SpecialIds special;
  std::vector<uint8_t> special_flags;  // per id: control / special token (skipped by decode(skip_special))
};

class PipelineTokenizer : public Tokenizer {
 public:
  explicit PipelineTokenizer(PipelineSpec spec);

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const override;
  std::string token_to_str(int32_t id) const override;
  std::string id_to_piece(int32_t id) const override;
  std::optional<int32_t> piece_to_id(std::string_view piece) const override;
  int32_t vocab_size() const override { return int32_t(spec_.vocab.size()); }
  bool is_special(int32_t id) const override;
  bool adds_bos() const override;
  std::string kind() const override { return spec_.kind; }

 private:
  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
  void pretokenize(size_t step, std::string_view piece, bool at_start, std::vector<int32_t>& out) const;
  void encode_wordlevel(std::string_view piece, std::vector<int32_t>& out) const;
  std::string normalize(std::string_view text) const;
  void check_id(int32_t id) const;

  PipelineSpec spec_;
  StringIdMap piece_ids_;
  AddedMatcher raw_added_, normalized_added_;
  std::unique_ptr<MergeBpe> merge_bpe_;
  std::unique_ptr<ScoreBpe> score_bpe_;
  std::unique_ptr<UnigramModel> unigram_;
  std::unique_ptr<WordPieceModel> wordpiece_;
};

}  // namespace mlxterp::tok

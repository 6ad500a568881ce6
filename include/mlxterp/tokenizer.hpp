// mlxterp/tokenizer.hpp — tokenizers that agree with the reference implementations id for id.
//
//   auto tok = mlxterp::load_tokenizer("models/Llama-3.2-1B");       // dir, tokenizer.json, .model, .gguf, tok*.bin
//   std::vector<int32_t> ids = tok->encode("Hello world");            // BOS added iff the tokenizer's config adds it
//   std::vector<int32_t> raw = tok->encode("Hello world", {.add_special = false});
//   std::string text = tok->decode(ids);                              // specials skipped by default? no: kept unless asked
//   std::string shown = tok->token_to_str(ids[1]);                    // display form: "Ġworld" -> " world", "<0x0A>" shown as such
//   auto batch = mlxterp::encode_batch(*tok, {"a", "longer text"}, {.padding_side = mlxterp::PaddingSide::Right});
//   // batch.ids [2, t] int64, batch.attention_mask [2, t] int64 (1 = real token)
//
// Sources supported (DESIGN.md §2): Hugging Face tokenizer.json (models: byte-level BPE, SentencePiece-style
// BPE with byte fallback, BPE with a continuing-subword prefix / end-of-word suffix (CLIP), Unigram,
// WordPiece, WordLevel; normalizers incl. NFC/NFD/NFKC/NFKD, Lowercase,
// BertNormalizer, StripAccents and SentencePiece's Precompiled charsmap (T5, ALBERT, XLM-R); added/special
// tokens, post-processor templates, decoders), SentencePiece .model
// files (through libsentencepiece: BPE and Unigram), GGUF-embedded vocabularies (llama/SPM and gpt2/BPE),
// and llama2.c tok*.bin. An unsupported component is an error naming it, never silently wrong ids.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mlxterp {

struct EncodeOptions {
  bool add_special = true;  // apply the tokenizer's own template (BOS etc.); false = raw pieces only
};

struct SpecialIds {
  int32_t bos = -1, eos = -1, pad = -1, unk = -1;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // UTF-8 text -> ids. Invalid UTF-8 throws mlxterp::Error naming the byte offset.
  virtual std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const = 0;
  // ids -> text. skip_special drops control/special tokens (BOS, EOS, ...).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // The display form of one token (byte-level "Ġ" shown as a space, SentencePiece "▁" as a space,
  // byte tokens as "<0x0A>").
  virtual std::string token_to_str(int32_t id) const = 0;
  // The raw vocabulary entry (as stored: "Ġworld", "▁the", "<0x0A>").
  virtual std::string id_to_piece(int32_t id) const = 0;
  // Exact vocabulary lookup of a raw piece (or special token); nullopt if absent.
  virtual std::optional<int32_t> piece_to_id(std::string_view piece) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // Whether encode() with add_special = true prepends BOS.
  virtual bool adds_bos() const = 0;
  // "hf-bpe", "hf-spm-bpe", "hf-unigram", "hf-wordpiece", "sentencepiece", "gguf-llama", "gguf-gpt2", "llama2c"
  virtual std::string kind() const = 0;

  const SpecialIds& special() const { return special_; }

 protected:
  SpecialIds special_;
};

// Picks the tokenizer from a path: a tokenizer.json, a SentencePiece .model, a .gguf (vocab in
// metadata), a llama2.c tokenizer .bin, or a directory holding tokenizer.json / tokenizer.model.
// Throws mlxterp::Error naming the path and what was looked for.
std::shared_ptr<Tokenizer> load_tokenizer(const std::string& path);

// Resolves a token written as `tokenize --json` would decode it (" She") or as "#ID" ("#338") to one id;
// throws if it is not exactly one vocabulary entry.
int32_t parse_token(const Tokenizer& tok, std::string_view spec);

enum class PaddingSide { Right, Left };

struct BatchOptions {
  PaddingSide padding_side = PaddingSide::Right;
  bool add_special = true;
  int64_t max_length = 0;  // 0 = no truncation; otherwise longer texts are truncated (from the end)
};

struct BatchEncoding {
  at::Tensor ids;             // [batch, t] int64, padded with the pad id (or 0 if none)
  at::Tensor attention_mask;  // [batch, t] int64, 1 = real token
  std::vector<int64_t> lengths;
};

BatchEncoding encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts, const BatchOptions& options = {});

// Chat templates for the common families, with turn boundaries exposed.
struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};
struct Turn {
  size_t index;
  std::string role;
  int64_t full_start, full_end;        // token span of the whole turn incl. its markers [start, end)
  int64_t content_start, content_end;  // token span of the content alone
};
struct ChatEncoding {
  std::vector<int32_t> ids;
  std::vector<Turn> turns;
};
// family: "llama3", "chatml" (Qwen), "mistral" ([INST]), "gemma"; "auto" guesses from the vocabulary.
ChatEncoding apply_chat_template(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                 const std::string& family = "auto", bool add_generation_prompt = true);

}  // namespace mlxterp

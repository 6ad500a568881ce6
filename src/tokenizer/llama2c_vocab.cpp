// llama2.c tokenizer files (tok512.bin, tokenizer.bin): int32 max_token_length, then per token
// float32 score, int32 byte length, bytes. Spaces are stored as ' ' (SentencePiece's "▁" replaced),
// BOS/EOS as "\n<s>\n" / "\n</s>\n", bytes as "<0xXX>" at id byte + 3.
//
// encode() is llama2.c's: a " " dummy prefix, characters looked up one by one (byte tokens id + 3 for
// characters outside the vocabulary), then the best-scoring adjacent pair merged until none remains.
// It equals SentencePiece's encoding with the .model these files were exported from: "<s>" in the
// text is text (as in llama2.c and SentencePiece), and a literal "▁" counts as a space.
// decode() drops the leading space of the first piece (and of the piece after BOS), like
// SentencePiece; consecutive byte tokens are joined and shown as U+FFFD per byte if not valid UTF-8.
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/bpe.hpp"
#include "tokenizer/loaders.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::string path, std::vector<std::string> pieces, std::vector<float> scores)
      : path_(std::move(path)), pieces_(std::move(pieces)) {
    const size_t n = pieces_.size();
    special_.unk = 0;
    special_.bos = n > 1 ? 1 : -1;
    special_.eos = n > 2 ? 2 : -1;
    // Control tokens in their SentencePiece form ("\n<s>\n" -> "<s>").
    for (size_t i = 0; i < std::min<size_t>(n, 3); ++i) pieces_[i] = trim(pieces_[i]);
    for (size_t i = 0; i < n; ++i) ids_.emplace(pieces_[i], int32_t(i));
    // llama2.c merges into any vocabulary entry.
    ScoreBpeOptions o;
    o.unk_id = 0;
    o.early_byte_fallback = true;
    bpe_ = std::make_unique<ScoreBpe>(pieces_, std::move(scores), std::vector<uint8_t>(n, 1), o);
    MLXTERP_CHECK(n >= 259 && parse_byte_token(pieces_[3]) == 0 && parse_byte_token(pieces_[258]) == 255, path_,
                  ": expected byte tokens <0x00>..<0xFF> at ids 3..258 (llama2.c's byte fallback), got ",
                  n < 259 ? cat(n, " tokens") : quote(pieces_[3]) + " at id 3");
  }

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options) const override {
    check_utf8(text, path_);
    std::vector<int32_t> out;
    if (options.add_special) out.push_back(special_.bos);
    // SentencePiece (which made these vocabularies and pretokenized the training data) treats a
    // literal "▁" exactly like a space; llama2.c's run.c would byte-encode it.
    if (!text.empty()) bpe_->encode(" " + replace_all(text, kSpmSpace, " "), out);
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out, pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (first_invalid_utf8(pending) == std::string::npos) out += pending;
      else
        for (size_t k = 0; k < pending.size(); ++k) out += "\xEF\xBF\xBD";
      pending.clear();
    };
    bool strip_next = true;  // the first piece, and the piece after BOS, lose their leading space
    for (int32_t id : ids) {
      check_id(id);
      if (id <= 2) {
        if (skip_special) {
          if (id == 1) strip_next = true;
          continue;
        }
        flush();
        out += pieces_[id];
        strip_next = id == 1;
        continue;
      }
      int b = parse_byte_token(pieces_[id]);
      if (b >= 0) {
        pending += char(b);
        strip_next = false;
        continue;
      }
      flush();
      std::string_view p = pieces_[id];
      if (strip_next && !p.empty() && p[0] == ' ') p.remove_prefix(1);
      out += p;
      strip_next = false;
    }
    flush();
    return out;
  }

  std::string token_to_str(int32_t id) const override {
    check_id(id);
    return pieces_[id];
  }
  std::string id_to_piece(int32_t id) const override {
    check_id(id);
    return pieces_[id];
  }
  std::optional<int32_t> piece_to_id(std::string_view piece) const override {
    int32_t id = find_id(ids_, piece);
    if (id < 0) return std::nullopt;
    return id;
  }
  int32_t vocab_size() const override { return int32_t(pieces_.size()); }
  bool is_special(int32_t id) const override {
    check_id(id);
    return id <= 2;
  }
  bool adds_bos() const override { return true; }
  std::string kind() const override { return "llama2c"; }

 private:
  void check_id(int32_t id) const {
    MLXTERP_CHECK(id >= 0 && id < int32_t(pieces_.size()), path_, ": token id ", id,
                  " is out of range; expected 0 <= id < ", pieces_.size(), " (the vocabulary size)");
  }
  std::string path_;
  std::vector<std::string> pieces_;
  StringIdMap ids_;
  std::unique_ptr<ScoreBpe> bpe_;
};

}  // namespace

std::shared_ptr<Tokenizer> load_llama2c_vocab(const std::string& path) {
  auto f = MappedFile::open(path);
  const uint8_t* p = f->data();
  const size_t size = f->size();
  MLXTERP_CHECK(size >= 4, path, ": too short for a llama2.c tokenizer; expected at least 4 bytes, got ", size);
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  MLXTERP_CHECK(max_len > 0 && max_len < (1 << 20), path, ": max_token_length is ", max_len,
                "; expected a positive length (is this a llama2.c tokenizer .bin?)");
  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t off = 4;
  while (off < size) {
    MLXTERP_CHECK(off + 8 <= size, path, ": token ", pieces.size(), " header at byte ", off,
                  " runs past the end of the file (", size, " bytes); the file is truncated");
    float score;
    int32_t len;
    std::memcpy(&score, p + off, 4);
    std::memcpy(&len, p + off + 4, 4);
    off += 8;
    MLXTERP_CHECK(len >= 0 && len <= max_len && off + size_t(len) <= size, path, ": token ", pieces.size(),
                  " has length ", len, "; expected 0..", max_len, " within the file (", size, " bytes)");
    pieces.emplace_back(reinterpret_cast<const char*>(p + off), size_t(len));
    scores.push_back(score);
    off += size_t(len);
  }
  return std::make_shared<Llama2cTokenizer>(path, std::move(pieces), std::move(scores));
}

}  // namespace mlxterp::tok

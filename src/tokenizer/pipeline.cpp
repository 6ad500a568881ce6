// The Hugging Face tokenization pipeline (see pipeline.hpp).
#include "tokenizer/pipeline.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {

struct Part {
  size_t b, e;
  bool match;
};

// HF NormalizedString::split's behaviours: the kept pieces of `parts` (matches and the text between them).
template <class F>
void emit_split(const std::vector<Part>& parts, SplitBehavior behavior, F&& emit) {
  std::vector<std::pair<size_t, size_t>> out;  // kept pieces
  out.reserve(parts.size());
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const auto& p : parts) out.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Removed:
      for (const auto& p : parts)
        if (!p.match) out.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const auto& p : parts) {
        if (p.match == prev_match && !out.empty()) out.back().second = p.e;
        else out.emplace_back(p.b, p.e);
        prev_match = p.match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& p : parts) {
        if (p.match && !prev_match && !out.empty()) out.back().second = p.e;
        else out.emplace_back(p.b, p.e);
        prev_match = p.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t k = parts.size(); k-- > 0;) {
        const auto& p = parts[k];
        if (p.match && !prev_match && !out.empty()) out.back().first = p.b;
        else out.emplace_back(p.b, p.e);
        prev_match = p.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  for (const auto& [b, e] : out)
    if (e > b) emit(b, e);
}

// HF NormalizedString::split: the pieces of `s` cut by the matches of `re`, per `behavior`.
template <class F>
void split_by(std::string_view s, const Regex& re, SplitBehavior behavior, bool invert, F&& emit) {
  std::vector<Part> parts;
  size_t prev = 0;
  re.for_each_match(s, [&](size_t b, size_t e) {
    if (prev != b) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  });
  if (prev != s.size()) parts.push_back({prev, s.size(), invert});
  emit_split(parts, behavior, emit);
}

// Valid UTF-8 runs as text, stray bytes as "<0xXX>" (token_to_str of partial-character tokens).
std::string show_bytes(std::string_view bytes) {
  if (first_invalid_utf8(bytes) == std::string_view::npos) return std::string(bytes);
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    size_t bad = first_invalid_utf8(bytes.substr(i));
    if (bad == std::string_view::npos) {
      out.append(bytes.substr(i));
      break;
    }
    out.append(bytes.substr(i, bad));
    out += byte_token_name(uint8_t(bytes[i + bad]));
    i += bad + 1;
  }
  return out;
}

// HF's BERT pre-tokenizers, character by character: BertPreTokenizer (`bert`) removes whitespace and
// isolates each BERT punctuation character; Punctuation splits on each punctuation character (one match
// per character) with `behavior`.
template <class F>
void split_by_chars(std::string_view s, bool bert, SplitBehavior behavior, F&& emit) {
  std::vector<Part> parts;
  size_t word = 0;  // start of the current run of other characters
  for (size_t i = 0; i < s.size();) {
    const size_t b = i;
    const uint32_t cp = next_codepoint(s, i);
    const bool ws = bert && is_unicode_whitespace(cp);
    if (!ws && !is_bert_punctuation(cp)) continue;
    if (word < b) parts.push_back({word, b, false});
    if (!ws) parts.push_back({b, i, true});
    word = i;
  }
  if (word < s.size()) parts.push_back({word, s.size(), false});
  emit_split(parts, bert ? SplitBehavior::Isolated : behavior, emit);
}

// HF's WordPiece decoder cleanup of one token (spaces before punctuation and contractions).
std::string wordpiece_cleanup(std::string t) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules)
    if (t.find(from) != std::string::npos) t = replace_all(t, from, to);
  return t;
}

std::string strip_unicode_ws(std::string_view s, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e) {
      size_t k = b;
      if (!is_unicode_whitespace(next_codepoint(s, k))) break;
      b = k;
    }
  }
  if (right) {
    while (e > b) {
      size_t p = e - 1;
      while (p > b && (uint8_t(s[p]) & 0xC0) == 0x80) --p;
      size_t k = p;
      if (!is_unicode_whitespace(next_codepoint(s, k))) break;
      e = p;
    }
  }
  return std::string(s.substr(b, e - b));
}

}  // namespace

PipelineTokenizer::PipelineTokenizer(PipelineSpec spec) : spec_(std::move(spec)) {
  special_ = spec_.special;
  spec_.special_flags.resize(spec_.vocab.size(), 0);
  piece_ids_.reserve(spec_.vocab.size() * 2);
  for (size_t i = 0; i < spec_.vocab.size(); ++i) piece_ids_.emplace(spec_.vocab[i], int32_t(i));
  std::vector<AddedToken> raw, normalized;
  for (const auto& a : spec_.added) {
    MLXTERP_CHECK(a.id >= 0 && a.id < int32_t(spec_.vocab.size()), spec_.source, ": added token ", quote(a.content),
                  " has id ", a.id, "; expected an id in [0, ", spec_.vocab.size(), ")");
    if (a.special) spec_.special_flags[a.id] = 1;
    piece_ids_[a.content] = a.id;
    if (a.normalized) {
      AddedToken n = a;
      n.content = normalize(a.content);
      normalized.push_back(std::move(n));
    } else {
      raw.push_back(a);
    }
  }
  raw_added_ = AddedMatcher(std::move(raw));
  normalized_added_ = AddedMatcher(std::move(normalized));
  if (spec_.unigram) {
    unigram_ = std::make_unique<UnigramModel>(spec_.vocab, spec_.model_vocab, spec_.unigram_scores, spec_.unk_id,
                                              spec_.merge_options.byte_fallback, spec_.source);
  } else if (spec_.wordpiece) {
    wordpiece_ = std::make_unique<WordPieceModel>(spec_.model_vocab, spec_.wordpiece_unk, spec_.wordpiece_prefix,
                                                  spec_.wordpiece_max_chars, spec_.source);
  } else if (spec_.wordlevel) {
    // no engine: encode_wordlevel looks words up in spec_.model_vocab
  } else if (spec_.score_bpe) {
    ScoreBpeOptions o;
    o.unk_id = spec_.unk_id;
    score_bpe_ = std::make_unique<ScoreBpe>(spec_.vocab, spec_.scores, spec_.mergeable, o);
  } else {
    MergeBpeOptions o = spec_.merge_options;
    o.unk_id = spec_.unk_id;
    merge_bpe_ = std::make_unique<MergeBpe>(spec_.model_vocab, spec_.merges, o, spec_.source);
    spec_.merges.clear();
    spec_.merges.shrink_to_fit();
  }
}

std::string PipelineTokenizer::normalize(std::string_view text) const {
  std::string s(text);
  for (const auto& n : spec_.normalizers) {
    switch (n.kind) {
      case NormalizerStep::Prepend:
        if (!s.empty()) s = n.a + s;
        break;
      case NormalizerStep::Replace:
        if (s.find(n.a) != std::string::npos) s = replace_all(s, n.a, n.b);
        break;
      case NormalizerStep::ReplaceRegex: {
        std::string r;
        size_t prev = 0;
        n.re->for_each_match(s, [&](size_t b, size_t e) {
          r.append(s, prev, b - prev);
          r += n.b;
          prev = e;
        });
        r.append(s, prev, std::string::npos);
        s = std::move(r);
        break;
      }
      case NormalizerStep::Strip:
        s = strip_unicode_ws(s, n.left, n.right);
        break;
      case NormalizerStep::Unicode:
        s = unicode_normalize(s, n.form);
        break;
      case NormalizerStep::Lowercase:
        s = unicode_lowercase(s);
        break;
      case NormalizerStep::Bert:
        s = bert_normalize(s, n.bert);
        break;
      case NormalizerStep::StripAccents:
        s = strip_marks(s);
        break;
      case NormalizerStep::Precompiled:
        s = n.charsmap->normalize(s);
        break;
    }
  }
  return s;
}

std::vector<int32_t> PipelineTokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  check_utf8(text, spec_.source);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (options.add_special) out.insert(out.end(), spec_.prefix.begin(), spec_.prefix.end());
  if (raw_added_.empty()) {
    if (!text.empty()) encode_segment(text, true, out);
  } else {
    std::vector<Segment> segs;
    raw_added_.split(text, segs);
    for (const auto& s : segs) {
      if (s.id >= 0) out.push_back(s.id);
      else encode_segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, out);
    }
  }
  if (options.add_special) out.insert(out.end(), spec_.suffix.begin(), spec_.suffix.end());
  return out;
}

void PipelineTokenizer::encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  std::string normalized;
  std::string_view s = text;
  if (!spec_.normalizers.empty()) {
    normalized = normalize(text);
    s = normalized;
  }
  if (normalized_added_.empty()) {
    pretokenize(0, s, at_start, out);
    return;
  }
  std::vector<Segment> segs;
  normalized_added_.split(s, segs);
  for (const auto& g : segs) {
    if (g.id >= 0) out.push_back(g.id);
    else pretokenize(0, s.substr(g.begin, g.end - g.begin), at_start && g.begin == 0, out);
  }
}

// HF's WordLevel model: the whole pre-token, or the unknown token (an error without one, as in HF).
void PipelineTokenizer::encode_wordlevel(std::string_view piece, std::vector<int32_t>& out) const {
  const int32_t id = find_id(spec_.model_vocab, piece);
  MLXTERP_CHECK(id >= 0 || spec_.unk_id >= 0, spec_.source, ": the word ", quote(std::string(piece)),
                " is not in the WordLevel vocabulary and the model's unk_token is not in it either; expected an "
                "unk_token from the vocabulary");
  out.push_back(id >= 0 ? id : spec_.unk_id);
}

void PipelineTokenizer::pretokenize(size_t step, std::string_view piece, bool at_start,
                                    std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (step == spec_.pretokenizers.size()) {
    if (merge_bpe_) merge_bpe_->encode_word(piece, out);
    else if (unigram_) unigram_->encode(piece, out);
    else if (wordpiece_) wordpiece_->encode(piece, out);
    else if (spec_.wordlevel) encode_wordlevel(piece, out);
    else score_bpe_->encode(piece, out);
    return;
  }
  const PreTokStep& p = spec_.pretokenizers[step];
  switch (p.kind) {
    case PreTokStep::ByteLevel: {
      std::string prefixed;
      std::string_view s = piece;
      if (p.add_prefix_space && piece[0] != ' ') {
        prefixed = " " + std::string(piece);
        s = prefixed;
      }
      std::string mapped;
      if (!p.use_regex) {
        pretokenize(step + 1, bytes_to_byte_level(s), at_start, out);
        return;
      }
      split_by(s, *p.re, SplitBehavior::Isolated, false, [&](size_t b, size_t e) {
        mapped = bytes_to_byte_level(s.substr(b, e - b));
        pretokenize(step + 1, mapped, at_start && b == 0, out);
      });
      return;
    }
    case PreTokStep::Split:
    case PreTokStep::Digits:
    case PreTokStep::WhitespaceSplit:
      split_by(piece, *p.re, p.behavior, p.invert,
               [&](size_t b, size_t e) { pretokenize(step + 1, piece.substr(b, e - b), at_start && b == 0, out); });
      return;
    case PreTokStep::BertPre:
    case PreTokStep::Punctuation:
      split_by_chars(piece, p.kind == PreTokStep::BertPre, p.behavior,
                     [&](size_t b, size_t e) { pretokenize(step + 1, piece.substr(b, e - b), at_start && b == 0, out); });
      return;
    case PreTokStep::Metaspace: {
      std::string s = replace_all(piece, " ", p.replacement);
      bool starts = s.compare(0, p.replacement.size(), p.replacement) == 0;
      if (!starts && (p.prepend_scheme == PrependScheme::Always || (p.prepend_scheme == PrependScheme::First && at_start)))
        s = p.replacement + s;
      if (!p.split) {
        pretokenize(step + 1, s, at_start, out);
        return;
      }
      // Split on the replacement, each piece keeping the replacement that starts it (MergedWithNext).
      size_t b = 0;
      while (b < s.size()) {
        size_t e = s.find(p.replacement, b + (s.compare(b, p.replacement.size(), p.replacement) == 0 ? p.replacement.size() : 0));
        if (e == std::string::npos) e = s.size();
        pretokenize(step + 1, std::string_view(s).substr(b, e - b), at_start && b == 0, out);
        b = e;
      }
      return;
    }
  }
}

void PipelineTokenizer::check_id(int32_t id) const {
  MLXTERP_CHECK(id >= 0 && id < int32_t(spec_.vocab.size()), spec_.source, ": token id ", id,
                " is out of range; expected 0 <= id < ", spec_.vocab.size(), " (the vocabulary size)");
}

std::string PipelineTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    check_id(id);
    if (skip_special && spec_.special_flags[id]) continue;
    toks.push_back(spec_.vocab[id]);
  }
  if (!spec_.has_decoder) return join(toks, " ");
  for (const auto& d : spec_.decoders) {
    switch (d.kind) {
      case DecoderStep::ByteLevel: {
        std::string bytes;
        for (const auto& t : toks)
          if (!byte_level_to_bytes(t, bytes)) bytes += t;
        toks.assign(1, utf8_lossy(bytes));
        break;
      }
      case DecoderStep::Replace:
        for (auto& t : toks) t = replace_all(t, d.a, d.b);
        break;
      case DecoderStep::ByteFallback: {
        std::vector<std::string> next;
        std::string pending;
        auto flush = [&] {
          if (pending.empty()) return;
          if (first_invalid_utf8(pending) == std::string::npos) next.push_back(pending);
          else
            for (size_t k = 0; k < pending.size(); ++k) next.emplace_back("\xEF\xBF\xBD");
          pending.clear();
        };
        for (auto& t : toks) {
          int b = parse_byte_token(t);
          if (b >= 0) {
            pending += char(b);
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        toks = std::move(next);
        break;
      }
      case DecoderStep::Fuse:
        toks.assign(1, join(toks, ""));
        break;
      case DecoderStep::Strip:
        for (auto& t : toks) {
          size_t b = 0, e = t.size();
          for (size_t k = 0; k < d.start && t.compare(b, d.a.size(), d.a) == 0 && b + d.a.size() <= e; ++k) b += d.a.size();
          for (size_t k = 0; k < d.stop && e >= b + d.a.size() && t.compare(e - d.a.size(), d.a.size(), d.a) == 0; ++k)
            e -= d.a.size();
          t = t.substr(b, e - b);
        }
        break;
      case DecoderStep::WordPiece:
        for (size_t i = 0; i < toks.size(); ++i) {
          std::string& t = toks[i];
          if (i > 0) {
            if (t.compare(0, d.a.size(), d.a) == 0) t.erase(0, d.a.size());
            else t.insert(0, " ");
          }
          if (d.cleanup) t = wordpiece_cleanup(t);
        }
        break;
      case DecoderStep::BpeSuffix:  // HF's BPEDecoder: the suffix ends a word (a space), except the last token's
        for (size_t i = 0; i < toks.size(); ++i) toks[i] = replace_all(toks[i], d.a, i + 1 == toks.size() ? "" : " ");
        break;
      case DecoderStep::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i) {
          bool drop = i == 0 && d.prepend_scheme != PrependScheme::Never;
          toks[i] = replace_all(toks[i], d.a, drop ? "" : " ");
        }
        break;
    }
  }
  return join(toks, "");
}

std::string PipelineTokenizer::token_to_str(int32_t id) const {
  check_id(id);
  const std::string& p = spec_.vocab[id];
  if (spec_.special_flags[id]) return p;
  switch (spec_.display) {
    case DisplayMode::ByteLevel: {
      std::string bytes;
      if (!byte_level_to_bytes(p, bytes)) return p;
      return show_bytes(bytes);
    }
    case DisplayMode::Spm:
      if (parse_byte_token(p) >= 0) return p;
      return replace_all(p, kSpmSpace, " ");
    case DisplayMode::Raw:
      break;
  }
  return p;
}

std::string PipelineTokenizer::id_to_piece(int32_t id) const {
  check_id(id);
  return spec_.vocab[id];
}

std::optional<int32_t> PipelineTokenizer::piece_to_id(std::string_view piece) const {
  int32_t id = find_id(piece_ids_, piece);
  if (id < 0) return std::nullopt;
  return id;
}

bool PipelineTokenizer::is_special(int32_t id) const {
  check_id(id);
  return spec_.special_flags[id] != 0;
}

bool PipelineTokenizer::adds_bos() const {
  return !spec_.prefix.empty() && spec_.special.bos >= 0 && spec_.prefix.front() == spec_.special.bos;
}

}  // namespace mlxterp::tok

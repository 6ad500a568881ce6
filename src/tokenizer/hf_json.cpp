// Hugging Face tokenizer.json -> PipelineTokenizer. Every component type we read is listed here;
// any other type is an error naming it (never silently different ids).
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/loaders.hpp"
#include "tokenizer/pipeline.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {

using json = nlohmann::json;

std::string type_of(const json& j, const std::string& where) {
  MLXTERP_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
                ": expected an object with a \"type\" field, got ", j.dump().substr(0, 80));
  return j["type"].get<std::string>();
}

[[noreturn]] void unsupported(const std::string& where, const std::string& what, const std::string& type,
                              const std::string& supported) {
  MLXTERP_FAIL(where, ": ", what, " type ", quote(type), " is not supported; expected one of ", supported,
               " (an unsupported component would give different ids than the reference, so it is refused)");
}

// {"String": s} or {"Regex": r}: a regex either way (a literal string escaped).
std::shared_ptr<Regex> pattern_regex(const json& p, const std::string& where, std::string* literal = nullptr) {
  MLXTERP_CHECK(p.is_object() && (p.contains("String") || p.contains("Regex")), where,
                ": pattern must be {\"String\": ...} or {\"Regex\": ...}, got ", p.dump().substr(0, 80));
  if (p.contains("String")) {
    std::string s = p["String"].get<std::string>();
    if (literal) *literal = s;
    return std::make_shared<Regex>("\\Q" + replace_all(s, "\\E", "\\E\\\\E\\Q") + "\\E", where);
  }
  return std::make_shared<Regex>(oniguruma_to_pcre2(p["Regex"].get<std::string>(), where), where);
}

SplitBehavior parse_behavior(const json& j, const std::string& where) {
  std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  MLXTERP_FAIL(where, ": split behavior ", quote(b),
               " is unknown; expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}

PrependScheme parse_scheme(const json& j, const std::string& where) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::Always;
    if (s == "first") return PrependScheme::First;
    if (s == "never") return PrependScheme::Never;
    MLXTERP_FAIL(where, ": Metaspace prepend_scheme ", quote(s), " is unknown; expected always, first or never");
  }
  if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean())
    return j["add_prefix_space"].get<bool>() ? PrependScheme::Always : PrependScheme::Never;
  return PrependScheme::Always;
}

void add_normalizer(const json& j, const std::string& where, PipelineSpec& spec) {
  if (j.is_null()) return;
  std::string t = type_of(j, where);
  if (t == "Sequence") {
    for (const auto& n : j.at("normalizers")) add_normalizer(n, where, spec);
  } else if (t == "Prepend") {
    spec.normalizers.push_back({NormalizerStep::Prepend, j.at("prepend").get<std::string>(), "", nullptr});
  } else if (t == "Replace") {
    std::string lit;
    auto re = pattern_regex(j.at("pattern"), where + " Replace normalizer", &lit);
    std::string content = j.at("content").get<std::string>();
    if (j["pattern"].contains("String")) spec.normalizers.push_back({NormalizerStep::Replace, lit, content, nullptr});
    else spec.normalizers.push_back({NormalizerStep::ReplaceRegex, "", content, re});
  } else if (t == "Strip") {
    NormalizerStep s{NormalizerStep::Strip, "", "", nullptr};
    s.left = j.value("strip_left", true);
    s.right = j.value("strip_right", true);
    spec.normalizers.push_back(s);
  } else if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
    NormalizerStep s{NormalizerStep::Unicode, "", "", nullptr};
    s.form = t == "NFC" ? NormalForm::NFC : t == "NFD" ? NormalForm::NFD : t == "NFKC" ? NormalForm::NFKC : NormalForm::NFKD;
    spec.normalizers.push_back(s);
  } else if (t == "Lowercase") {
    spec.normalizers.push_back({NormalizerStep::Lowercase, "", "", nullptr});
  } else if (t == "StripAccents") {
    spec.normalizers.push_back({NormalizerStep::StripAccents, "", "", nullptr});
  } else if (t == "Precompiled") {
    // SentencePiece's compiled character map (T5, ALBERT, XLM-R, mBART); null or "" maps nothing.
    const std::string w = where + " Precompiled normalizer";
    const json& cm = j.contains("precompiled_charsmap") ? j["precompiled_charsmap"] : json();
    MLXTERP_CHECK(cm.is_null() || cm.is_string(), w, ": precompiled_charsmap must be a base64 string; got ",
                  cm.type_name());
    NormalizerStep s{NormalizerStep::Precompiled, "", "", nullptr};
    s.charsmap = std::make_shared<PrecompiledCharsmap>(
        cm.is_string() ? base64_decode(cm.get<std::string>(), w) : std::string(), w);
    spec.normalizers.push_back(s);
  } else if (t == "BertNormalizer") {
    NormalizerStep s{NormalizerStep::Bert, "", "", nullptr};
    auto flag = [&](const char* k, bool dflt) { return j.contains(k) && !j[k].is_null() ? j[k].get<bool>() : dflt; };
    s.bert.clean_text = flag("clean_text", true);
    s.bert.handle_chinese_chars = flag("handle_chinese_chars", true);
    s.bert.lowercase = flag("lowercase", true);
    s.bert.strip_accents = flag("strip_accents", s.bert.lowercase);  // null: follows lowercase
    spec.normalizers.push_back(s);
  } else {
    unsupported(where, "normalizer", t, "Sequence, Prepend, Replace, Strip, StripAccents, NFC, NFD, NFKC, NFKD, Lowercase, BertNormalizer, "
                "Precompiled");
  }
}

void add_pretokenizer(const json& j, const std::string& where, PipelineSpec& spec) {
  if (j.is_null()) return;
  std::string t = type_of(j, where);
  PreTokStep p{};
  if (t == "Sequence") {
    for (const auto& n : j.at("pretokenizers")) add_pretokenizer(n, where, spec);
    return;
  } else if (t == "ByteLevel") {
    p.kind = PreTokStep::ByteLevel;
    p.add_prefix_space = j.value("add_prefix_space", false);
    p.use_regex = j.value("use_regex", true);
    if (p.use_regex) p.re = std::make_shared<Regex>(kGpt2Pattern, where + " ByteLevel");
    spec.display = DisplayMode::ByteLevel;
  } else if (t == "Split") {
    p.kind = PreTokStep::Split;
    p.re = pattern_regex(j.at("pattern"), where + " Split pre-tokenizer");
    p.behavior = parse_behavior(j.at("behavior"), where);
    p.invert = j.value("invert", false);
  } else if (t == "Metaspace") {
    p.kind = PreTokStep::Metaspace;
    p.replacement = j.contains("replacement") ? j["replacement"].get<std::string>() : std::string(kSpmSpace);
    p.prepend_scheme = parse_scheme(j, where);
    p.split = j.value("split", true);
    spec.display = DisplayMode::Spm;
  } else if (t == "Digits") {
    p.kind = PreTokStep::Digits;
    p.re = std::make_shared<Regex>(R"(\p{N})", where + " Digits");
    p.behavior = j.value("individual_digits", false) ? SplitBehavior::Isolated : SplitBehavior::Contiguous;
  } else if (t == "WhitespaceSplit") {
    p.kind = PreTokStep::WhitespaceSplit;
    p.re = std::make_shared<Regex>(R"(\p{White_Space}+)", where + " WhitespaceSplit");  // Rust's char::is_whitespace
    p.behavior = SplitBehavior::Removed;
  } else if (t == "Whitespace") {
    p.kind = PreTokStep::Split;
    // HF's \w+|[^\w\s]+ in Rust's regex crate, where \w is Alphabetic, marks, decimal digits, connector
    // punctuation and the joiners (PCRE2's \w is letters, digits and '_' only) and \s is White_Space.
    p.re = std::make_shared<Regex>(
        R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\p{White_Space}]+)",
        where + " Whitespace");
    p.behavior = SplitBehavior::Removed;
    p.invert = true;
  } else if (t == "BertPreTokenizer") {
    p.kind = PreTokStep::BertPre;
  } else if (t == "Punctuation") {
    p.kind = PreTokStep::Punctuation;
    p.behavior = j.contains("behavior") ? parse_behavior(j["behavior"], where) : SplitBehavior::Isolated;
  } else {
    unsupported(where, "pre-tokenizer", t,
                "Sequence, ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation");
  }
  spec.pretokenizers.push_back(std::move(p));
}

void add_decoder(const json& j, const std::string& where, PipelineSpec& spec) {
  if (j.is_null()) return;
  spec.has_decoder = true;
  std::string t = type_of(j, where);
  DecoderStep d{};
  if (t == "Sequence") {
    for (const auto& n : j.at("decoders")) add_decoder(n, where, spec);
    return;
  } else if (t == "ByteLevel") {
    d.kind = DecoderStep::ByteLevel;
  } else if (t == "Replace") {
    d.kind = DecoderStep::Replace;
    const json& p = j.at("pattern");
    MLXTERP_CHECK(p.contains("String"), where, ": a Replace decoder with a regex pattern is not supported; expected "
                                               "{\"String\": ...}");
    d.a = p["String"].get<std::string>();
    d.b = j.at("content").get<std::string>();
    MLXTERP_CHECK(!d.a.empty(), where, ": Replace decoder with an empty pattern");
  } else if (t == "ByteFallback") {
    d.kind = DecoderStep::ByteFallback;
  } else if (t == "Fuse") {
    d.kind = DecoderStep::Fuse;
  } else if (t == "Strip") {
    d.kind = DecoderStep::Strip;
    d.a = j.at("content").get<std::string>();
    d.start = j.value("start", 0);
    d.stop = j.value("stop", 0);
  } else if (t == "Metaspace") {
    d.kind = DecoderStep::Metaspace;
    d.a = j.contains("replacement") ? j["replacement"].get<std::string>() : std::string(kSpmSpace);
    d.prepend_scheme = parse_scheme(j, where);
  } else if (t == "BPEDecoder") {
    d.kind = DecoderStep::BpeSuffix;
    d.a = j.value("suffix", std::string("</w>"));
  } else if (t == "WordPiece") {
    d.kind = DecoderStep::WordPiece;
    d.a = j.value("prefix", std::string("##"));
    d.cleanup = j.value("cleanup", true);
  } else {
    unsupported(where, "decoder", t, "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece, BPEDecoder");
  }
  spec.decoders.push_back(std::move(d));
}

int32_t token_id(const PipelineSpec& spec, const StringIdMap& ids, const std::string& content, const std::string& where) {
  int32_t id = find_id(ids, content);
  MLXTERP_CHECK(id >= 0, where, ": the post-processor names the token ", quote(content),
                ", which is not in the vocabulary");
  return id;
}

void add_post(const json& j, const std::string& where, PipelineSpec& spec, const StringIdMap& ids) {
  if (j.is_null()) return;
  std::string t = type_of(j, where);
  if (t == "Sequence") {
    for (const auto& n : j.at("processors")) add_post(n, where, spec, ids);
  } else if (t == "ByteLevel") {
    // Only adjusts offsets: ids are unchanged.
  } else if (t == "TemplateProcessing") {
    const json& special = j.contains("special_tokens") ? j["special_tokens"] : json::object();
    bool seen_a = false;
    for (const auto& item : j.at("single")) {
      if (item.contains("Sequence")) {
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        std::string name = item["SpecialToken"].at("id").get<std::string>();
        std::vector<int32_t> tids;
        if (special.contains(name)) {
          for (const auto& v : special[name].at("ids")) tids.push_back(v.get<int32_t>());
        } else {
          tids.push_back(token_id(spec, ids, name, where));
        }
        auto& dst = seen_a ? spec.suffix : spec.prefix;
        dst.insert(dst.end(), tids.begin(), tids.end());
      } else {
        MLXTERP_FAIL(where, ": TemplateProcessing item ", item.dump(), " is neither SpecialToken nor Sequence");
      }
    }
  } else if (t == "RobertaProcessing" || t == "BertProcessing") {
    spec.prefix.push_back(j.at("cls").at(1).get<int32_t>());
    spec.suffix.push_back(j.at("sep").at(1).get<int32_t>());
  } else {
    unsupported(where, "post-processor", t, "Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing");
  }
}

// Special ids from tokenizer_config.json beside the file, else from the template and common names.
void find_special_ids(PipelineSpec& spec, const StringIdMap& ids, const std::string& path) {
  auto by_name = [&](std::initializer_list<const char*> names) -> int32_t {
    for (const char* n : names) {
      int32_t id = find_id(ids, n);
      if (id >= 0) return id;
    }
    return -1;
  };
  SpecialIds& s = spec.special;
  if (!spec.prefix.empty()) s.bos = spec.prefix.front();
  std::string cfg = join_path(dirname(path).empty() ? "." : dirname(path), "tokenizer_config.json");
  if (file_exists(cfg)) {
    try {
      json c = json::parse(read_file(cfg));
      auto get = [&](const char* key) -> int32_t {
        if (!c.contains(key) || c[key].is_null()) return -1;
        const json& v = c[key];
        std::string content = v.is_string() ? v.get<std::string>() : v.value("content", std::string());
        return find_id(ids, content);
      };
      if (int32_t b = get("bos_token"); b >= 0 && s.bos < 0) s.bos = b;
      s.eos = get("eos_token");
      s.pad = get("pad_token");
      s.unk = get("unk_token");
    } catch (const json::exception&) {
      // A broken tokenizer_config.json only loses the special-id hints; the tokenizer itself is intact.
    }
  }
  if (s.bos < 0) s.bos = by_name({"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
  if (s.eos < 0) s.eos = by_name({"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>"});
  if (s.unk < 0) s.unk = spec.unk_id;
}

// The BPE model's merges and options (the vocabulary is read by the caller).
void parse_bpe(const json& m, const std::string& path, PipelineSpec& spec) {
  MLXTERP_CHECK(!m.contains("dropout") || m["dropout"].is_null() || m["dropout"].get<double>() == 0.0, path,
                ": BPE dropout is set; expected null (dropout makes encoding random)");
  auto affix = [&](const char* k) {
    if (!m.contains(k) || m[k].is_null()) return std::string();
    MLXTERP_CHECK(m[k].is_string(), path, ": BPE ", k, " is ", m[k].type_name(), "; expected a string or null");
    return m[k].get<std::string>();
  };
  spec.merge_options.continuing_prefix = affix("continuing_subword_prefix");
  spec.merge_options.end_suffix = affix("end_of_word_suffix");
  for (const auto& mg : m.at("merges")) {
    if (mg.is_array()) {
      MLXTERP_CHECK(mg.size() == 2, path, ": merge ", mg.dump(), " is not a pair");
      spec.merges.emplace_back(mg[0].get<std::string>(), mg[1].get<std::string>());
    } else {
      std::string s = mg.get<std::string>();
      size_t sp = s.find(' ', 1);
      MLXTERP_CHECK(sp != std::string::npos, path, ": merge ", quote(s), " has no space; expected \"left right\"");
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    }
  }
  spec.merge_options.byte_fallback = m.value("byte_fallback", false);
  spec.merge_options.fuse_unk = m.value("fuse_unk", false);
  spec.merge_options.ignore_merges = m.value("ignore_merges", false);
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    std::string unk = m["unk_token"].get<std::string>();
    spec.unk_id = find_id(spec.model_vocab, unk);
    MLXTERP_CHECK(spec.unk_id >= 0, path, ": unk_token ", quote(unk), " is not in the vocabulary");
  }
}

}  // namespace

std::shared_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path) {
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    MLXTERP_FAIL(path, ": not valid JSON (", e.what(), "); expected a Hugging Face tokenizer.json");
  }
  MLXTERP_CHECK(j.is_object() && j.contains("model"), path,
                ": no \"model\" field; expected a Hugging Face tokenizer.json");
  PipelineSpec spec;
  spec.source = path;
  const json& m = j["model"];
  std::string mtype = m.contains("type") ? m["type"].get<std::string>() : (m.contains("merges") ? "BPE" : "?");
  if (mtype != "BPE" && mtype != "Unigram" && mtype != "WordPiece" && mtype != "WordLevel")
    unsupported(path, "model", mtype, "BPE, Unigram, WordPiece, WordLevel");
  // Vocabulary: the model's, then the added tokens.
  int32_t max_id = -1;
  if (mtype == "Unigram") {
    // [[piece, score], ...]: ids are positions.
    const json& v = m.at("vocab");
    MLXTERP_CHECK(v.is_array(), path, ": the Unigram vocab is ", v.type_name(), "; expected [[piece, score], ...]");
    for (const auto& e : v) {
      MLXTERP_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_number(), path, ": Unigram vocab entry ",
                    e.dump(), "; expected [piece, score]");
      spec.model_vocab[e[0].get<std::string>()] = int32_t(spec.vocab.size());
      spec.vocab.push_back(e[0].get<std::string>());  // by position: equal pieces keep their own ids
      spec.unigram_scores.push_back(e[1].get<double>());
    }
    max_id = int32_t(spec.unigram_scores.size()) - 1;
  } else {
    for (const auto& [piece, id] : m.at("vocab").items()) {
      int32_t i = id.get<int32_t>();
      MLXTERP_CHECK(i >= 0, path, ": vocabulary entry ", quote(piece), " has negative id ", i);
      spec.model_vocab.emplace(piece, i);
      max_id = std::max(max_id, i);
    }
  }
  if (j.contains("added_tokens")) {
    for (const auto& a : j["added_tokens"]) {
      AddedToken t;
      t.id = a.at("id").get<int32_t>();
      t.content = a.at("content").get<std::string>();
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.normalized = a.value("normalized", !t.special);
      t.single_word = a.value("single_word", false);
      max_id = std::max(max_id, t.id);
      spec.added.push_back(std::move(t));
    }
  }
  spec.vocab.resize(size_t(max_id + 1));  // a Unigram vocabulary is already in place (ids are positions)
  if (mtype != "Unigram")
    for (const auto& [piece, id] : spec.model_vocab) spec.vocab[id] = piece;
  for (const auto& a : spec.added) spec.vocab[a.id] = a.content;
  StringIdMap ids = spec.model_vocab;
  for (const auto& a : spec.added) ids[a.content] = a.id;

  if (mtype == "BPE") {
    parse_bpe(m, path, spec);
  } else if (mtype == "Unigram") {
    spec.unigram = true;
    spec.merge_options.byte_fallback = m.value("byte_fallback", false);
    if (m.contains("unk_id") && !m["unk_id"].is_null()) {
      spec.unk_id = m["unk_id"].get<int32_t>();
      MLXTERP_CHECK(spec.unk_id >= 0 && size_t(spec.unk_id) < spec.unigram_scores.size(), path, ": Unigram unk_id ",
                    spec.unk_id, " is outside the vocabulary; expected 0 <= unk_id < ", spec.unigram_scores.size());
    }
  } else if (mtype == "WordLevel") {
    spec.wordlevel = true;
    if (m.contains("unk_token") && !m["unk_token"].is_null())
      spec.unk_id = find_id(spec.model_vocab, m["unk_token"].get<std::string>());  // absent: an error per unknown word
  } else {
    spec.wordpiece = true;
    spec.wordpiece_unk = m.value("unk_token", std::string("[UNK]"));
    spec.wordpiece_prefix = m.value("continuing_subword_prefix", std::string("##"));
    const int64_t mx = m.value("max_input_chars_per_word", int64_t(100));
    MLXTERP_CHECK(mx >= 0, path, ": WordPiece max_input_chars_per_word is ", mx, "; expected >= 0");
    spec.wordpiece_max_chars = size_t(mx);
    spec.unk_id = find_id(spec.model_vocab, spec.wordpiece_unk);
  }

  add_normalizer(j.value("normalizer", json()), path, spec);
  add_pretokenizer(j.value("pre_tokenizer", json()), path, spec);
  add_post(j.value("post_processor", json()), path, spec, ids);
  add_decoder(j.value("decoder", json()), path, spec);
  if (spec.display == DisplayMode::Raw) {
    // SentencePiece-style vocabularies without a Metaspace pre-tokenizer (Prepend + Replace normalizers).
    for (const auto& n : spec.normalizers)
      if (n.kind == NormalizerStep::Replace && n.b == kSpmSpace) spec.display = DisplayMode::Spm;
  }
  spec.kind = spec.unigram    ? "hf-unigram"
              : spec.wordpiece ? "hf-wordpiece"
              : spec.wordlevel ? "hf-wordlevel"
              : spec.display == DisplayMode::ByteLevel ? "hf-bpe"
                                                       : (spec.merge_options.byte_fallback ? "hf-spm-bpe" : "hf-bpe");
  find_special_ids(spec, ids, path);
  return std::make_shared<PipelineTokenizer>(std::move(spec));
}

}  // namespace mlxterp::tok

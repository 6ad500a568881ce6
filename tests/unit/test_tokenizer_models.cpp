// The Unigram and WordPiece models and the Unicode normalizers of tokenizer.json, on small hand-written
// files whose results follow from the algorithms' definitions (the Unigram cases are the worked examples
// of HF tokenizers' own documentation). The reference comparisons on real text are in
// test_tokenizer_goldens.cpp (TokenizerVariant).
#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;
using nlohmann::json;

namespace {

std::shared_ptr<Tokenizer> load_json(const TempDir& tmp, const json& j) {
  const std::string path = tmp.file("tokenizer.json");
  write_file_atomic(path, j.dump());
  return load_tokenizer(path);
}

json unigram(const std::vector<std::pair<std::string, double>>& pieces, json unk_id, bool byte_fallback = false) {
  json v = json::array();
  for (const auto& [p, s] : pieces) v.push_back({p, s});
  return {{"model", {{"type", "Unigram"}, {"unk_id", unk_id}, {"vocab", v}, {"byte_fallback", byte_fallback}}}};
}

TEST(TokenizerModels, UnigramTakesTheBestScoringPathAndFusesUnknowns) {
  TempDir tmp;
  auto tok = load_json(tmp, unigram({{"<unk>", 0}, {"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"cd", 1}, {"ab", 2},
                                     {"abc", 5}, {"abcd", 10}},
                                    0));
  EXPECT_EQ(tok->kind(), "hf-unigram");
  // abcd (10) beats abc + d (5) and ab + cd (3); "xx" is two unknown characters fused into one <unk>.
  EXPECT_EQ(tok->encode("abcdacdxx"), (std::vector<int32_t>{8, 1, 5, 0}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{8, 1, 5}), "abcd a cd");  // no decoder: pieces joined by spaces

  auto t2 = load_json(tmp, unigram({{"<unk>", 0}, {"ab", 0}, {"cd", -0.1}, {"abc", -0.2}, {"a", -0.3}, {"b", -0.4},
                                    {"c", -0.5}},
                                   0));
  EXPECT_EQ(t2->encode("abcd"), (std::vector<int32_t>{1, 2}));  // ab + cd = -0.1 beats abc + <unk> (d)
  EXPECT_EQ(t2->encode("abcc"), (std::vector<int32_t>{3, 6}));   // abc + c = -0.7 beats ab + c + c = -1.0
  EXPECT_EQ(t2->encode("xabc"), (std::vector<int32_t>{0, 3}));
}

TEST(TokenizerModels, UnigramByteFallbackAndMissingUnk) {
  TempDir tmp;
  std::vector<std::pair<std::string, double>> pieces{{"<unk>", 0}, {"a", -1}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.emplace_back(name, -5);
  }
  auto tok = load_json(tmp, unigram(pieces, 0, true));
  // "é" (C3 A9) is not a piece: its bytes instead of <unk>.
  EXPECT_EQ(tok->encode("a\xC3\xA9"), (std::vector<int32_t>{1, 2 + 0xC3, 2 + 0xA9}));

  auto no_unk = load_json(tmp, unigram({{"a", 0}, {"b", -1}}, json()));
  EXPECT_EQ(no_unk->encode("ab"), (std::vector<int32_t>{0, 1}));
  const std::string err = error_of([&] { no_unk->encode("abz"); });
  EXPECT_NE(err.find("not in the Unigram vocabulary and the model has no unk_id"), std::string::npos) << err;

  const std::string bad = error_of([&] { load_json(tmp, unigram({{"a", 0}}, 3)); });
  EXPECT_NE(bad.find("unk_id 3 is outside the vocabulary"), std::string::npos) << bad;
  json broken = unigram({{"a", 0}}, 0);
  broken["model"]["vocab"][0] = "a";
  const std::string bad2 = error_of([&] { load_json(tmp, broken); });
  EXPECT_NE(bad2.find("expected [piece, score]"), std::string::npos) << bad2;
}

TEST(TokenizerModels, WordPieceGreedyLongestMatchFirst) {
  TempDir tmp;
  json j = {{"model",
             {{"type", "WordPiece"},
              {"unk_token", "[UNK]"},
              {"continuing_subword_prefix", "##"},
              {"max_input_chars_per_word", 12},
              {"vocab", {{"[UNK]", 0}, {"ba", 1}, {"##na", 2}, {"un", 3}, {"##aff", 4}, {"##able", 5}, {"unaff", 6},
                         {"!", 7}}}}},
            {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
            {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}}};
  auto tok = load_json(tmp, j);
  EXPECT_EQ(tok->kind(), "hf-wordpiece");
  EXPECT_EQ(tok->encode("banana"), (std::vector<int32_t>{1, 2, 2}));
  EXPECT_EQ(tok->encode("unaffable!"), (std::vector<int32_t>{6, 5, 7}));  // longest first: unaff, not un + ##aff
  EXPECT_EQ(tok->encode("nanana"), (std::vector<int32_t>{0}));            // no piece starts the word
  EXPECT_EQ(tok->encode("banan"), (std::vector<int32_t>{0}));             // a remainder nothing matches
  EXPECT_EQ(tok->encode("bananananana"), (std::vector<int32_t>{1, 2, 2, 2, 2, 2}));
  EXPECT_EQ(tok->encode("banananananana"), (std::vector<int32_t>{0}));  // 14 characters > 12
  EXPECT_EQ(tok->decode(std::vector<int32_t>{6, 5, 7, 1, 2}), "unaffable! bana");  // cleanup: " !" -> "!"

  j["model"]["unk_token"] = "[MISSING]";
  auto no_unk = load_json(tmp, j);
  const std::string err = error_of([&] { no_unk->encode("zzz"); });
  EXPECT_NE(err.find("unk_token \"[MISSING]\""), std::string::npos) << err;
}

TEST(TokenizerModels, UnicodeNormalizersBeforeTheModel) {
  TempDir tmp;
  // A WordLevel-like WordPiece vocabulary makes the normalized text visible in the ids.
  json j = {{"model",
             {{"type", "WordPiece"},
              {"unk_token", "[UNK]"},
              {"vocab", {{"[UNK]", 0}, {"\xC3\xA9", 1}, {"e", 2}, {"##\xCC\x81", 3}, {"fi", 4}, {"i\xCC\x87", 5}}}}},
            {"pre_tokenizer", {{"type", "WhitespaceSplit"}}}};
  auto with = [&](json norm) {
    j["normalizer"] = norm;
    return load_json(tmp, j);
  };
  const std::string composed = "\xC3\xA9", decomposed = "e\xCC\x81", ligature = "\xEF\xAC\x81";  // é, e + ´, ﬁ
  EXPECT_EQ(with({{"type", "NFC"}})->encode(decomposed), (std::vector<int32_t>{1}));
  EXPECT_EQ(with({{"type", "NFD"}})->encode(composed), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(with({{"type", "NFC"}})->encode(ligature), (std::vector<int32_t>{0}));  // canonical: ﬁ stays
  EXPECT_EQ(with({{"type", "NFKC"}})->encode(ligature), (std::vector<int32_t>{4}));
  EXPECT_EQ(with({{"type", "Lowercase"}})->encode("\xC4\xB0"), (std::vector<int32_t>{5}));  // İ -> i + dot above
  EXPECT_EQ(with({{"type", "BertNormalizer"}, {"lowercase", true}})->encode("\xC3\x89"),
            (std::vector<int32_t>{2}));  // É: accents stripped with lowercase (strip_accents unset)
  // StripAccents drops marks but does not decompose: only after NFD does é lose its accent.
  EXPECT_EQ(with({{"type", "StripAccents"}})->encode(composed), (std::vector<int32_t>{1}));
  EXPECT_EQ(with({{"type", "Sequence"}, {"normalizers", {{{"type", "NFD"}}, {{"type", "StripAccents"}}}}})
                ->encode(composed),
            (std::vector<int32_t>{2}));
  // Precompiled without a map changes nothing; a broken map is refused when loading, not while encoding.
  EXPECT_EQ(with({{"type", "Precompiled"}, {"precompiled_charsmap", ""}})->encode(decomposed),
            (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(with({{"type", "Precompiled"}, {"precompiled_charsmap", nullptr}})->encode(composed),
            (std::vector<int32_t>{1}));
  std::string err = error_of([&] { with({{"type", "Precompiled"}, {"precompiled_charsmap", "ab$d"}}); });
  EXPECT_NE(err.find("invalid base64 character at offset 2"), std::string::npos) << err;
  // 0xE8 0x03 0 0: a trie of 1000 bytes declared in a 4-byte map.
  err = error_of([&] { with({{"type", "Precompiled"}, {"precompiled_charsmap", "6AMAAA=="}}); });
  EXPECT_NE(err.find("declares a trie of 1000 bytes in a map of 4"), std::string::npos) << err;
  err = error_of([&] { with({{"type", "Precompiled"}, {"precompiled_charsmap", 7}}); });
  EXPECT_NE(err.find("must be a base64 string"), std::string::npos) << err;
  err = error_of([&] { with({{"type", "Nmt"}}); });
  EXPECT_NE(err.find("normalizer"), std::string::npos) << err;
}

// BPE with HF's end_of_word_suffix (CLIP, OpenAI GPT) and continuing_subword_prefix, from the model's definition:
// a word's last character is looked up as char + suffix, every other but the first as prefix + char, and merge
// (a, b) makes a + b without b's prefix.
TEST(TokenizerModels, BpeWordSuffixAndSubwordPrefix) {
  TempDir tmp;
  json clip = {{"model",
                {{"type", "BPE"},
                 {"vocab", {{"l", 0}, {"o", 1}, {"w</w>", 2}, {"lo", 3}, {"low</w>", 4}, {"o</w>", 5}, {"<unk>", 6}}},
                 {"merges", json::array({json::array({"l", "o"}), json::array({"lo", "w</w>"})})},
                 {"unk_token", "<unk>"},
                 {"end_of_word_suffix", "</w>"}}},
               {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
               {"decoder", {{"type", "BPEDecoder"}, {"suffix", "</w>"}}}};
  auto tok = load_json(tmp, clip);
  // low: l o w</w> -> lo w</w> -> low</w>; lo: l o</w> (no merge makes "lo</w>"); x: <unk>.
  EXPECT_EQ(tok->encode("low lo x"), (std::vector<int32_t>{4, 0, 5, 6}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{4, 0, 5}), "low lo");  // the suffix ends a word, except the last

  auto pairs = [](std::vector<std::pair<std::string, std::string>> ps) {  // [[a, b], ...], not an object
    json a = json::array();
    for (const auto& [x, y] : ps) a.push_back(json::array({x, y}));
    return a;
  };
  auto with_prefix = [&](json merges) {
    json j = {{"model",
               {{"type", "BPE"},
                {"vocab", {{"a", 0}, {"##b", 1}, {"##c", 2}, {"ab", 3}, {"abc", 4}, {"##bc", 5}}},
                {"merges", merges},
                {"continuing_subword_prefix", "##"}}},
              {"pre_tokenizer", {{"type", "WhitespaceSplit"}}}};
    return load_json(tmp, j);
  };
  // a ##b ##c: merge (a, ##b) makes "ab", then (ab, ##c) "abc"; ranked the other way ##b ##c -> "##bc" first.
  EXPECT_EQ(with_prefix(pairs({{"a", "##b"}, {"ab", "##c"}, {"##b", "##c"}}))->encode("abc"), (std::vector<int32_t>{4}));
  EXPECT_EQ(with_prefix(pairs({{"##b", "##c"}, {"a", "##b"}, {"ab", "##c"}}))->encode("abc"), (std::vector<int32_t>{0, 5}));
  // A merge whose product (prefix dropped from its right half) is missing is refused at load.
  const std::string err = error_of([&] { with_prefix(pairs({{"##b", "##b"}})); });
  EXPECT_NE(err.find("makes \"##bb\", which is missing"), std::string::npos) << err;
}

// WordLevel: each pre-token is one vocabulary entry or the unknown token.
TEST(TokenizerModels, WordLevelLooksUpWholeWords) {
  TempDir tmp;
  json j = {{"model", {{"type", "WordLevel"}, {"vocab", {{"[UNK]", 0}, {"hello", 1}, {"world", 2}}}, {"unk_token", "[UNK]"}}},
            {"pre_tokenizer", {{"type", "WhitespaceSplit"}}}};
  auto tok = load_json(tmp, j);
  EXPECT_EQ(tok->kind(), "hf-wordlevel");
  EXPECT_EQ(tok->encode("hello there world"), (std::vector<int32_t>{1, 0, 2}));
  EXPECT_EQ(tok->encode("helloworld"), (std::vector<int32_t>{0}));  // no splitting inside a word
  j["model"]["unk_token"] = "<missing>";
  auto no_unk = load_json(tmp, j);
  EXPECT_EQ(no_unk->encode("world hello"), (std::vector<int32_t>{2, 1}));
  const std::string err = error_of([&] { no_unk->encode("hello there"); });
  EXPECT_NE(err.find("\"there\" is not in the WordLevel vocabulary"), std::string::npos) << err;
}

// HF's Whitespace pre-tokenizer is \w+|[^\w\s]+ in Rust's regex crate, and Split patterns are Oniguruma's:
// both count marks as word characters (PCRE2's \w does not), so a word with combining marks or a Devanagari
// word stays one piece, and U+FE0F (a variation selector, Mn) after a symbol is a word of its own.
TEST(TokenizerModels, WordCharactersIncludeMarksAsInHf) {
  TempDir tmp;
  json vocab = {{"[UNK]", 0}, {"\u0928\u092e\u0938\u094d\u0924\u0947", 1}, {"\u2764", 2}, {"\ufe0f", 3},
                {"e\u0301te", 4}, {"!", 5}, {"a_b", 6}};
  json j = {{"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}}},
            {"pre_tokenizer", {{"type", "Whitespace"}}}};
  auto ws = load_json(tmp, j);
  EXPECT_EQ(ws->encode("\u0928\u092e\u0938\u094d\u0924\u0947 \u2764\ufe0f e\u0301te! a_b"),
            (std::vector<int32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(ws->encode("a_b\u00a0!\u0085!"), (std::vector<int32_t>{6, 5, 5}));  // NBSP and NEL are whitespace

  // The same words through an Oniguruma Split pattern: \w inside a class and \W outside one.
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "[\\w]+|\\W"}}}, {"behavior", "Isolated"},
                        {"invert", false}};
  vocab[" "] = 7;
  j["model"]["vocab"] = vocab;
  auto split = load_json(tmp, j);
  EXPECT_EQ(split->encode("e\u0301te! \u0928\u092e\u0938\u094d\u0924\u0947"), (std::vector<int32_t>{4, 5, 7, 1}));
  // \W inside a class has no PCRE2 form with Oniguruma's meaning: refused when loading, with the reason.
  j["pre_tokenizer"]["pattern"] = {{"Regex", "[\\W\\d]+"}};
  const std::string err = error_of([&] { load_json(tmp, j); });
  EXPECT_NE(err.find("\\W inside a character class"), std::string::npos) << err;
}

// Oniguruma nests classes ([a[bc]] is [abc]); BLOOM's Split pattern relies on it. PCRE2 reads such a '[' as a
// literal, so the class is flattened before compiling; what cannot be flattened is refused.
TEST(TokenizerModels, NestedCharacterClassesAsInOniguruma) {
  TempDir tmp;
  json vocab = {{"[UNK]", 0}, {"hello", 1}, {",", 2}, {" world", 3}, {"!", 4}, {" (a|b)", 5}};
  json j = {{"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}}},
            {"pre_tokenizer", {{"type", "Split"},
                               {"pattern", {{"Regex", " ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+"}}},
                               {"behavior", "Isolated"},
                               {"invert", false}}}};
  auto tok = load_json(tmp, j);
  // '(' '|' ')' are in the class too (literals), so " (a|b)" is not one piece.
  EXPECT_EQ(tok->encode("hello, world!"), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(tok->encode(" (a|b)"), (std::vector<int32_t>{0, 0, 0, 0, 0}));  // " (", a, |, b, )
  for (const char* bad : {"[a[^b]]", "[a-z&&[^aeiou]]"}) {
    j["pre_tokenizer"]["pattern"] = {{"Regex", bad}};
    const std::string err = error_of([&] { load_json(tmp, j); });
    EXPECT_NE(err.find("refused"), std::string::npos) << bad << ": " << err;
  }
}

}  // namespace


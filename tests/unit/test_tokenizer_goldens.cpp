// Every tokenizer in ../shared/data against the reference implementations (HF tokenizers,
// sentencepiece) on the strings of tests/golden/tokenizers/strings.json: the ids must be identical,
// and decode(ids) must equal the reference's decode (which is the string itself wherever the
// reference round-trips). Regenerate with tests/reference/make_tokenizer_goldens.py (see README).
#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"
#include "mlxterp/io.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

std::string show(const std::string& s) { return nlohmann::json(s).dump(); }

std::string show_ids(const std::vector<int32_t>& v) { return nlohmann::json(v).dump(); }

const std::vector<std::string>& strings() {
  static const std::vector<std::string> s =
      nlohmann::json::parse(read_file(golden_path("tokenizers/strings.json"))).get<std::vector<std::string>>();
  return s;
}

// Every string's ids equal the golden's, and decode(ids) its "decoded" entry (else the string itself).
void expect_ids_and_decodes(const Tokenizer& tok, const nlohmann::json& golden, const std::vector<std::string>& strs,
                            const std::string& name) {
  size_t id_failures = 0, decode_failures = 0;
  for (size_t i = 0; i < strs.size(); ++i) {
    const auto expected = golden["ids"][i].get<std::vector<int32_t>>();
    const auto got = tok.encode(strs[i], {.add_special = false});
    if (got != expected) {
      if (++id_failures <= 10)
        ADD_FAILURE() << name << " string " << i << " " << show(strs[i]) << "\n  expected " << show_ids(expected)
                      << "\n  got      " << show_ids(got);
      continue;
    }
    const std::string key = std::to_string(i);
    const std::string want = golden["decoded"].contains(key) ? golden["decoded"][key].get<std::string>() : strs[i];
    const std::string dec = tok.decode(got);
    if (dec != want && ++decode_failures <= 10)
      ADD_FAILURE() << name << " decode of string " << i << " " << show(strs[i]) << "\n  expected " << show(want)
                    << "\n  got      " << show(dec);
  }
  EXPECT_EQ(id_failures, 0u) << "strings whose ids differ from the reference";
  EXPECT_EQ(decode_failures, 0u) << "strings whose decode differs from the reference";
}

// A gtest-safe name for a golden's file name ("gpt2-json" -> "gpt2_json").
std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (auto& c : s)
    if (!isalnum(uint8_t(c))) c = '_';
  return s;
}

class TokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGolden, IdsAndDecodeMatchReference) {
  const auto golden = nlohmann::json::parse(read_file(golden_path("tokenizers/" + GetParam() + ".json")));
  const std::string file = golden["tokenizer"].get<std::string>();
  MLXTERP_REQUIRE_DATA(file);
  auto tok = load_tokenizer(data_path(file));
  const auto& strs = strings();
  ASSERT_EQ(golden["ids"].size(), strs.size()) << "golden and strings.json disagree; regenerate both";
  ASSERT_EQ(golden["n_strings"].get<size_t>(), strs.size());
  expect_ids_and_decodes(*tok, golden, strs, GetParam());
  if (!golden["with_special"].is_null()) {
    const auto& ws = golden["with_special"];
    EXPECT_EQ(tok->encode(ws["text"].get<std::string>()), ws["ids"].get<std::vector<int32_t>>())
        << "the post-processor template (BOS...) differs from the reference";
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, TokenizerGolden,
                         ::testing::Values("gpt2-json", "llama3-json", "llama2-json", "mistral-v1-json", "llama2-model",
                                           "llama2-bin", "mistral-v1-model", "mistral-v3-model", "unigram-model",
                                           "gguf-gpt2", "gguf-llama-spm", "gguf-phi3", "stories260K-json",
                                           "stories260K-tok512", "stories260K-gguf"),
                         param_name);

// tokenizer.json layouts beyond the shared files (tests/golden/tokenizers/variants, made by
// tests/reference/make_tokenizer_variants.py with HF tokenizers): Unicode normalizers on the shared
// vocabularies (the golden names the base file and the top-level fields it replaces), and small trained
// WordPiece, Unigram, BPE (CLIP's "</w>", "##" prefixes) and WordLevel tokenizers committed beside their goldens.
const std::vector<std::string>& variant_strings() {
  static const std::vector<std::string> s = [] {
    auto v = strings();
    auto extra = nlohmann::json::parse(read_file(golden_path("tokenizers/variants/extra_strings.json")));
    for (const auto& x : extra) v.push_back(x.get<std::string>());
    return v;
  }();
  return s;
}

class TokenizerVariant : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerVariant, IdsAndDecodeMatchReference) {
  const auto golden = nlohmann::json::parse(read_file(golden_path("tokenizers/variants/" + GetParam() + ".json")));
  std::string src;
  if (golden.contains("base")) {
    const std::string base = golden["base"].get<std::string>();
    MLXTERP_REQUIRE_DATA(base);
    src = data_path(base);
  } else {
    src = golden_path("tokenizers/variants/" + golden["file"].get<std::string>());
  }
  auto j = nlohmann::json::parse(read_file(src));
  for (const auto& [k, v] : golden["edit"].items()) j[k] = v;
  TempDir tmp;
  const std::string path = tmp.file("tokenizer.json");
  write_file_atomic(path, j.dump());
  auto tok = load_tokenizer(path);
  const auto& strs = variant_strings();
  ASSERT_EQ(golden["ids"].size(), strs.size()) << "golden and the strings disagree; regenerate both";
  expect_ids_and_decodes(*tok, golden, strs, GetParam());
  const auto& ws = golden["with_special"];
  EXPECT_EQ(tok->encode(ws["text"].get<std::string>()), ws["ids"].get<std::vector<int32_t>>())
      << "the post-processor template differs from the reference";
}

INSTANTIATE_TEST_SUITE_P(Reference, TokenizerVariant,
                         ::testing::Values("gpt2-nfc", "gpt2-nfd", "gpt2-nfkc", "gpt2-nfkd-lower", "gpt2-bertnorm",
                                           "llama3-nfc", "llama2-nfkc-lower", "wordpiece-bert", "wordpiece-cased",
                                           "unigram", "unigram-bytes", "unigram-precompiled", "unigram-albert", "bpe-clip",
                                           "bpe-clip-bpedecoder", "bpe-prefix", "wordlevel", "wordlevel-wsplit",
                                           "gpt2-split-word", "gpt2-split-bloom"),
                         param_name);

// Every GGUF tokenizer.ggml.pre name we map to split regexes, on the shared gpt-2 vocabulary with the name
// rewritten: the ids of HF tokenizers running the same regexes on the same vocabulary (gguf-pre.json).
TEST(TokenizerVariant, GgufPreTokenizerNamesMatchReference) {
  const auto golden = nlohmann::json::parse(read_file(golden_path("tokenizers/variants/gguf-pre.json")));
  const std::string file = golden["gguf"].get<std::string>();
  MLXTERP_REQUIRE_DATA(file);
  const GGUFFile g = GGUFFile::open(data_path(file));
  std::vector<std::string> subset;
  for (size_t i = 0; i < variant_strings().size(); i += 3) subset.push_back(variant_strings()[i]);
  TempDir tmp;
  // The shared GGUF with tokenizer.ggml.pre rewritten to `name`, written to the scratch directory.
  auto with_pre = [&](const std::string& name) {
    GGUFBuilder b;
    for (const auto& [k, v] : g.metadata())
      if (k != "tokenizer.ggml.pre") b.add(k, v);
    b.add_str("tokenizer.ggml.pre", name);
    const std::string path = tmp.file(name + ".gguf");
    write_bytes(path, b.build());
    return path;
  };
  size_t names = 0;
  for (const auto& group : golden["groups"]) {
    ASSERT_EQ(group["ids"].size(), subset.size()) << "gguf-pre.json and the strings disagree; regenerate both";
    for (const auto& name_j : group["names"]) {
      const std::string name = name_j.get<std::string>();
      auto tok = load_tokenizer(with_pre(name));
      size_t failures = 0;
      for (size_t i = 0; i < subset.size(); ++i) {
        const auto expected = group["ids"][i].get<std::vector<int32_t>>();
        const auto got = tok->encode(subset[i], {.add_special = false});
        if (got != expected && ++failures <= 3)
          ADD_FAILURE() << "pre " << name << ": " << show(subset[i]) << "\n  expected " << show_ids(expected)
                        << "\n  got      " << show_ids(got);
      }
      EXPECT_EQ(failures, 0u) << "tokenizer.ggml.pre " << name;
      ++names;
    }
  }
  EXPECT_GE(names, 40u);
  // An unknown name is an error listing the known ones, not a silent fallback.
  try {
    load_tokenizer(with_pre("no-such-pre"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"no-such-pre\" is not supported; expected one of"), std::string::npos)
        << e.what();
  }
}

TEST(TokenizerGolden, EnoughVariedStrings) {
  const auto& s = strings();
  EXPECT_GE(s.size(), 200u);
  auto any = [&](auto pred) { return std::any_of(s.begin(), s.end(), pred); };
  EXPECT_TRUE(any([](const std::string& x) { return x.find('\t') != std::string::npos; }));
  EXPECT_TRUE(any([](const std::string& x) { return x.find("\n\n") != std::string::npos; }));
  EXPECT_TRUE(any([](const std::string& x) { return x.find("   ") != std::string::npos; }));
  EXPECT_TRUE(any([](const std::string& x) { return x.find("\xF0\x9F\x98\x80") != std::string::npos; }));  // emoji
  EXPECT_TRUE(any([](const std::string& x) { return x.find("\xE4\xBD\xA0") != std::string::npos; }));      // CJK
  EXPECT_TRUE(any([](const std::string& x) { return x.find("<|endoftext|>") != std::string::npos; }));
  EXPECT_TRUE(any([](const std::string& x) { return x.size() >= 300; }));
}

}  // namespace

// The tokenizers of the embedded default model (stories260K) and of Llama 2: every container agrees
// with llama2.c (llama2c_vectors.json, greedy_200_from_bos.txt) and with HF tokenizers
// (forward_reference.json's input ids are HF's encoding of its greedy text).
#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

nlohmann::json load_json(const std::string& rel) { return nlohmann::json::parse(read_file(data_path(rel))); }

std::vector<int32_t> ints(const nlohmann::json& j) {
  nlohmann::json a = j.is_string() ? nlohmann::json::parse(j.get<std::string>()) : j;
  return a.get<std::vector<int32_t>>();
}

class StoriesTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(StoriesTokenizer, DecodesGreedyIdsToGoldenText) {
  MLXTERP_REQUIRE_DATA("reference/stories260K/forward_reference.json");
  auto ref = load_json("reference/stories260K/forward_reference.json");
  auto tok = load_tokenizer(data_path(GetParam()));
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->special().bos, 1);
  EXPECT_EQ(tok->special().eos, 2);
  std::vector<int32_t> ids = ints(ref["greedy_tokens_from_bos"]);
  ASSERT_EQ(ids.front(), 1);
  EXPECT_EQ(tok->decode(ids, /*skip_special=*/true), ref["greedy_text"].get<std::string>());
  // llama2.c test_all.py's expected stdout (decoded greedy generation, byte for byte).
  EXPECT_EQ(tok->decode(ids, true), read_file(data_path("reference/stories260K/greedy_200_from_bos.txt")));
}

TEST_P(StoriesTokenizer, EncodesPromptLikeLlama2c) {
  MLXTERP_REQUIRE_DATA("reference/stories260K/forward_reference.json");
  auto ref = load_json("reference/stories260K/forward_reference.json");
  auto tok = load_tokenizer(data_path(GetParam()));
  // The greedy text re-encoded gives the greedy ids (the model generated canonical tokenizations).
  std::vector<int32_t> ids = ints(ref["greedy_tokens_from_bos"]);
  std::vector<int32_t> input = ints(ref["input_tokens"]);
  std::vector<int32_t> enc = tok->encode(ref["greedy_text"].get<std::string>());
  ASSERT_GE(enc.size(), input.size());
  EXPECT_EQ(std::vector<int32_t>(enc.begin(), enc.begin() + input.size()), input);
  EXPECT_EQ(enc, ids);
  EXPECT_TRUE(tok->adds_bos());
  EXPECT_EQ(tok->encode("Once", {.add_special = false}), std::vector<int32_t>({403}));
  EXPECT_EQ(tok->encode(""), std::vector<int32_t>({1}));
  EXPECT_TRUE(tok->encode("", {.add_special = false}).empty());
  EXPECT_EQ(tok->token_to_str(403), " Once");
}

INSTANTIATE_TEST_SUITE_P(Containers, StoriesTokenizer,
                         ::testing::Values("models/stories260K/tok512.bin", "models/stories260K/hf/tokenizer.json",
                                           "models/stories260K/hf", "models/stories260K/stories260K.gguf"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (!isalnum(uint8_t(c))) c = '_';
                           return s;
                         });

class Llama2Tokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(Llama2Tokenizer, MatchesLlama2cTestVectors) {
  MLXTERP_REQUIRE_DATA("reference/stories260K/llama2c_vectors.json");
  MLXTERP_REQUIRE_DATA(GetParam());
  auto ref = load_json("reference/stories260K/llama2c_vectors.json");
  auto tok = load_tokenizer(data_path(GetParam()));
  EXPECT_EQ(tok->vocab_size(), 32000);
  for (const auto& c : ref["llama2_tokenizer_cases"]["cases"]) {
    std::string prompt = c["prompt"].get<std::string>();
    EXPECT_EQ(tok->encode(prompt), ints(c["expected_ids_with_bos"])) << GetParam() << ": " << prompt;
    EXPECT_EQ(tok->decode(tok->encode(prompt), true), prompt) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Containers, Llama2Tokenizer,
                         ::testing::Values("tokenizers/llama2-spm/tokenizer.model", "tokenizers/llama2-spm/tokenizer.bin",
                                           "tokenizers/llama2-spm/tokenizer.json",
                                           "vocab-gguf/ggml-vocab-llama-spm.gguf"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (!isalnum(uint8_t(c))) c = '_';
                           return s;
                         });

TEST(Tokenizer, ParseTokenAcceptsDisplayFormAndId) {
  MLXTERP_REQUIRE_DATA("models/stories260K/tok512.bin");
  for (const char* p : {"models/stories260K/tok512.bin", "models/stories260K/hf", "models/stories260K/stories260K.gguf"}) {
    auto tok = load_tokenizer(data_path(p));
    EXPECT_EQ(parse_token(*tok, " Once"), 403) << p;
    EXPECT_EQ(parse_token(*tok, "#338"), 338) << p;
    EXPECT_THROW(parse_token(*tok, "#512"), Error) << p;
    EXPECT_THROW(parse_token(*tok, " Once upon"), Error) << p;
  }
}

TEST(Tokenizer, LoadErrorsNameThePath) {
  TempDir tmp;
  write_file_atomic(tmp.file("junk.bin"), "xy");
  try {
    load_tokenizer(tmp.file("junk.bin"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("junk.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_tokenizer(tmp.file("missing.json")), Error);
  EXPECT_THROW(load_tokenizer(tmp.path), Error);  // empty directory
}

TEST(Tokenizer, InvalidUtf8IsAnErrorNamingTheOffset) {
  MLXTERP_REQUIRE_DATA("models/stories260K/tok512.bin");
  for (const char* p : {"models/stories260K/tok512.bin", "models/stories260K/hf", "models/stories260K/stories260K.gguf"}) {
    auto tok = load_tokenizer(data_path(p));
    try {
      tok->encode("ab\xC3(");
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not valid UTF-8 at byte 2"), std::string::npos) << e.what();
    }
  }
}

}  // namespace

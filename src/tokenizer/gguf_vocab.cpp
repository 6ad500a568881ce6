// GGUF-embedded vocabularies (tokenizer.ggml.* metadata) -> PipelineTokenizer:
//   model "llama": SentencePiece BPE by score (Prepend "▁" + Replace " " -> "▁", byte fallback),
//   model "gpt2":  byte-level BPE with merges; the split regex from tokenizer.ggml.pre.
// Control, user-defined and unknown tokens are matched in the text before BPE (as the Hugging Face
// tokenizer.json of the same vocabulary does). Token types: 1 normal, 2 unknown, 3 control,
// 4 user-defined, 5 unused, 6 byte.
#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/loaders.hpp"
#include "tokenizer/pipeline.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {

enum TokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// tokenizer.ggml.pre (llama.cpp's names) -> the pre-tokenizer of the Hugging Face tokenizer.json the
// vocabulary was converted from: regexes applied in turn (each splits the pieces of the one before,
// keeping matches and the text between them), then the byte-level map. Where llama.cpp runs a rewritten
// regex for its own engine, the original tokenizer.json regex is used here (PCRE2 has the Unicode classes,
// case-insensitive groups and possessive quantifiers those need).
struct PreInfo {
  std::vector<const char*> patterns;
  bool ignore_merges = false;
  bool add_bos = false;
};
constexpr const char* kTekkenPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4oPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kSeedCoderPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kBailingPattern =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
constexpr const char* kDeepseekV3Pattern =
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// The DeepSeek LLM letter class (cased letters), CJK/Hangul and punctuation classes, as \x{...} escapes
// (literal characters would be at the mercy of any tool that normalizes Unicode text).
constexpr const char* kDeepseekLlmLetters =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6})"
    R"(-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
constexpr const char* kDeepseekPunct = R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)";
constexpr const char* kCjkHangul = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";
constexpr const char* kCjkKana = R"([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)";
constexpr const char* kPoroPattern = R"( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+)";

const std::map<std::string, const PreInfo*>& pre_table() {
  static const PreInfo gpt2{{kGpt2Pattern}}, llama3{{kLlama3Pattern}, true, true}, qwen2{{kQwen2Pattern}},
      dbrx{{kLlama3Pattern}}, starcoder{{R"(\p{N})", kGpt2Pattern}},
      falcon{{R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Pattern, "[0-9][0-9][0-9]"}},
      deepseek_coder{{"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjkHangul, R"(\p{N})"}},
      deepseek_llm{{"[\r\n]", kDeepseekLlmLetters, kDeepseekPunct, R"(\s+$)", kCjkHangul, R"(\p{N}+)"}},
      deepseek_v3{{R"(\p{N}{1,3})", kCjkKana, kDeepseekV3Pattern}}, poro{{kPoroPattern}},
      viking{{kPoroPattern, R"(\p{N})"}}, tekken{{kTekkenPattern}, true, true}, gpt4o{{kGpt4oPattern}},
      seed_coder{{kSeedCoderPattern}}, bailing{{kBailingPattern}};
  static const std::map<std::string, const PreInfo*> table = {
      {"default", &gpt2},       {"gpt-2", &gpt2},           {"gpt2", &gpt2},
      {"mpt", &gpt2},           {"olmo", &gpt2},            {"jais", &gpt2},
      {"phi-2", &gpt2},         {"trillion", &gpt2},        {"llama3", &llama3},
      {"llama-bpe", &llama3},   {"llama-v3", &llama3},      {"smaug-bpe", &dbrx},
      {"dbrx", &dbrx},          {"chatglm-bpe", &dbrx},     {"glm4", &dbrx},
      {"qwen2", &qwen2},        {"deepseek-r1-qwen", &qwen2}, {"stablelm2", &qwen2},
      {"megrez", &qwen2},       {"hunyuan", &qwen2},        {"grok-2", &qwen2},
      {"starcoder", &starcoder}, {"refact", &starcoder},    {"command-r", &starcoder},
      {"smollm", &starcoder},   {"codeshell", &starcoder},  {"exaone", &starcoder},
      {"minerva-7b", &starcoder}, {"falcon", &falcon},      {"deepseek-coder", &deepseek_coder},
      {"deepseek-llm", &deepseek_llm}, {"deepseek-v3", &deepseek_v3}, {"poro-chat", &poro},
      {"bloom", &poro},         {"gpt3-finnish", &poro},    {"viking", &viking},
      {"tekken", &tekken},      {"gpt-4o", &gpt4o},         {"llama4", &gpt4o},
      {"seed-coder", &seed_coder}, {"bailingmoe", &bailing}};
  return table;
}

const PreInfo* pre_info(const std::string& pre) {
  auto it = pre_table().find(pre);
  return it == pre_table().end() ? nullptr : it->second;
}

std::string supported_pre_names() {
  std::string names;
  for (const auto& [name, info] : pre_table()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

}  // namespace

std::shared_ptr<Tokenizer> load_gguf_vocab(const std::string& path) {
  GGUFFile g = GGUFFile::open(path);
  MLXTERP_CHECK(g.has("tokenizer.ggml.model"), path,
                ": no tokenizer.ggml.model metadata; expected a GGUF with an embedded vocabulary (or pass --tokenizer)");
  const std::string model = g.get_string("tokenizer.ggml.model");
  PipelineSpec spec;
  spec.source = path;
  spec.vocab = g.get_string_array("tokenizer.ggml.tokens");
  const size_t n = spec.vocab.size();
  MLXTERP_CHECK(n > 0, path, ": tokenizer.ggml.tokens is empty");
  std::vector<int64_t> types(n, kNormal);
  if (g.has("tokenizer.ggml.token_type")) {
    types = g.get_int_array("tokenizer.ggml.token_type");
    MLXTERP_CHECK(types.size() == n, path, ": tokenizer.ggml.token_type has ", types.size(), " entries; expected ", n,
                  " (one per token)");
  }
  auto special_id = [&](const char* key) -> int32_t {
    if (!g.has(key)) return -1;
    int64_t v = g.get_int(key);
    return v >= 0 && v < int64_t(n) ? int32_t(v) : -1;  // 0xFFFFFFFF = none
  };
  spec.special.bos = special_id("tokenizer.ggml.bos_token_id");
  spec.special.eos = special_id("tokenizer.ggml.eos_token_id");
  spec.special.unk = special_id("tokenizer.ggml.unknown_token_id");
  spec.special.pad = special_id("tokenizer.ggml.padding_token_id");
  for (size_t i = 0; i < n; ++i) {
    const int64_t t = types[i];
    if (t == kControl || t == kUserDefined || t == kUnknown) {
      AddedToken a;
      a.id = int32_t(i);
      a.content = spec.vocab[i];
      a.special = t != kUserDefined;
      spec.added.push_back(std::move(a));
    }
  }
  // llama.cpp's per-model token attributes: Phi-3's special tokens swallow the whitespace after them
  // (as the rstrip flags of its Hugging Face tokenizer.json do), except <unk>, <s> and <|endoftext|>.
  const std::string name = to_lower(g.has("general.name") ? g.get_string("general.name") : "");
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (auto& a : spec.added)
      a.rstrip = a.content != "<unk>" && a.content != "<s>" && a.content != "<|endoftext|>";
  }
  for (size_t i = 0; i < n; ++i)
    if (types[i] != kControl && types[i] != kUnknown) spec.model_vocab.emplace(spec.vocab[i], int32_t(i));
  const bool has_add_bos = g.has("tokenizer.ggml.add_bos_token");
  const bool has_add_eos = g.has("tokenizer.ggml.add_eos_token");

  if (model == "llama") {
    spec.kind = "gguf-llama";
    spec.score_bpe = true;
    std::vector<double> scores(n, 0.0);
    if (g.has("tokenizer.ggml.scores")) scores = g.get_float_array("tokenizer.ggml.scores");
    MLXTERP_CHECK(scores.size() == n, path, ": tokenizer.ggml.scores has ", scores.size(), " entries; expected ", n);
    spec.scores.assign(scores.begin(), scores.end());
    spec.mergeable.resize(n);
    for (size_t i = 0; i < n; ++i)
      spec.mergeable[i] = types[i] == kNormal || types[i] == kUserDefined || types[i] == kUnused;
    spec.unk_id = spec.special.unk >= 0 ? spec.special.unk : 0;
    bool space_prefix = !g.has("tokenizer.ggml.add_space_prefix") || g.get_bool("tokenizer.ggml.add_space_prefix");
    if (space_prefix) spec.normalizers.push_back({NormalizerStep::Prepend, std::string(kSpmSpace), "", nullptr});
    spec.normalizers.push_back({NormalizerStep::Replace, " ", std::string(kSpmSpace), nullptr});
    spec.has_decoder = true;
    spec.decoders.push_back({DecoderStep::Replace, std::string(kSpmSpace), " "});
    spec.decoders.push_back({DecoderStep::ByteFallback});
    spec.decoders.push_back({DecoderStep::Fuse});
    if (space_prefix) spec.decoders.push_back({DecoderStep::Strip, " ", "", 1, 0});
    spec.display = DisplayMode::Spm;
    bool add_bos = has_add_bos ? g.get_bool("tokenizer.ggml.add_bos_token") : true;
    if (add_bos && spec.special.bos >= 0) spec.prefix.push_back(spec.special.bos);
  } else if (model == "gpt2") {
    spec.kind = "gguf-gpt2";
    const std::string pre = g.has("tokenizer.ggml.pre") ? g.get_string("tokenizer.ggml.pre") : "default";
    const PreInfo* info = pre_info(pre);
    MLXTERP_CHECK(info, path, ": tokenizer.ggml.pre ", quote(pre), " is not supported; expected one of ",
                  supported_pre_names(), " (another split regex would give different ids)");
    MLXTERP_CHECK(g.has("tokenizer.ggml.merges"), path, ": a gpt2 vocabulary without tokenizer.ggml.merges");
    for (const auto& m : g.get_string_array("tokenizer.ggml.merges")) {
      size_t sp = m.find(' ', 1);
      MLXTERP_CHECK(sp != std::string::npos, path, ": merge ", quote(m), " has no space; expected \"left right\"");
      spec.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
    spec.merge_options.ignore_merges = info->ignore_merges;
    for (const char* pattern : info->patterns) {
      PreTokStep split{};
      split.kind = PreTokStep::Split;
      split.re = std::make_shared<Regex>(pattern, path + " (tokenizer.ggml.pre " + pre + ")");
      split.behavior = SplitBehavior::Isolated;
      spec.pretokenizers.push_back(std::move(split));
    }
    PreTokStep bl{};
    bl.kind = PreTokStep::ByteLevel;
    bl.use_regex = false;
    spec.pretokenizers.push_back(std::move(bl));
    spec.has_decoder = true;
    spec.decoders.push_back({DecoderStep::ByteLevel});
    spec.display = DisplayMode::ByteLevel;
    bool add_bos = has_add_bos ? g.get_bool("tokenizer.ggml.add_bos_token") : info->add_bos;
    if (add_bos && spec.special.bos >= 0) spec.prefix.push_back(spec.special.bos);
  } else {
    MLXTERP_FAIL(path, ": tokenizer.ggml.model ", quote(model),
                 " is not supported; expected llama (SentencePiece) or gpt2 (byte-level BPE)");
  }
  if (has_add_eos && g.get_bool("tokenizer.ggml.add_eos_token") && spec.special.eos >= 0)
    spec.suffix.push_back(spec.special.eos);
  return std::make_shared<PipelineTokenizer>(std::move(spec));
}

}  // namespace mlxterp::tok

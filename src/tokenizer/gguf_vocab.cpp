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

// tokenizer.ggml.pre -> split regex (llama.cpp's names). nullptr: GPT-2's ByteLevel regex.
struct PreInfo {
  const char* pattern;
  bool ignore_merges;
  bool add_bos;
};
const PreInfo* pre_info(const std::string& pre) {
  static const PreInfo gpt2{nullptr, false, false}, llama3{kLlama3Pattern, true, true}, qwen2{kQwen2Pattern, false, false};
  static const std::map<std::string, const PreInfo*> table = {
      {"default", &gpt2}, {"gpt-2", &gpt2},  {"gpt2", &gpt2},        {"llama3", &llama3},
      {"llama-bpe", &llama3}, {"llama-v3", &llama3}, {"smaug-bpe", &llama3}, {"qwen2", &qwen2},
      {"deepseek-r1-qwen", &qwen2}};
  auto it = table.find(pre);
  return it == table.end() ? nullptr : it->second;
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
    MLXTERP_CHECK(info, path, ": tokenizer.ggml.pre ", quote(pre),
                  " is not supported; expected one of default, gpt-2, llama3, llama-bpe, smaug-bpe, qwen2, "
                  "deepseek-r1-qwen (another split regex would give different ids)");
    MLXTERP_CHECK(g.has("tokenizer.ggml.merges"), path, ": a gpt2 vocabulary without tokenizer.ggml.merges");
    for (const auto& m : g.get_string_array("tokenizer.ggml.merges")) {
      size_t sp = m.find(' ', 1);
      MLXTERP_CHECK(sp != std::string::npos, path, ": merge ", quote(m), " has no space; expected \"left right\"");
      spec.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
    spec.merge_options.ignore_merges = info->ignore_merges;
    PreTokStep bl{};
    bl.kind = PreTokStep::ByteLevel;
    if (info->pattern) {
      PreTokStep split{};
      split.kind = PreTokStep::Split;
      split.re = std::make_shared<Regex>(info->pattern, path + " (tokenizer.ggml.pre " + pre + ")");
      split.behavior = SplitBehavior::Isolated;
      spec.pretokenizers.push_back(std::move(split));
      bl.use_regex = false;
    } else {
      bl.re = std::make_shared<Regex>(kGpt2Pattern, path);
    }
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

// Tokenizer factory (load_tokenizer) and parse_token.
#include <cstring>

#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/loaders.hpp"

namespace mlxterp {

namespace {

bool looks_like_sentencepiece_name(const std::string& name) {
  // tokenizer.model, tokenizer.model.v3, spm.model, ...
  return ends_with(name, ".model") || name.find(".model.") != std::string::npos;
}

std::shared_ptr<Tokenizer> load_file(const std::string& path) {
  const std::string name = to_lower(basename(path));
  auto f = MappedFile::open(path);
  const bool gguf = f->size() >= 4 && std::memcmp(f->data(), "GGUF", 4) == 0;
  if (gguf) return tok::load_gguf_vocab(path);
  if (ends_with(name, ".json")) return tok::load_hf_tokenizer_json(path);
  if (looks_like_sentencepiece_name(name)) return tok::load_sentencepiece(path);
  if (ends_with(name, ".bin")) return tok::load_llama2c_vocab(path);
  // Unknown name: sniff the content.
  size_t i = 0;
  while (i < f->size() && std::isspace(f->data()[i])) ++i;
  if (i < f->size() && f->data()[i] == '{') return tok::load_hf_tokenizer_json(path);
  MLXTERP_FAIL(path, ": cannot tell which kind of tokenizer this is; expected a tokenizer.json, a SentencePiece "
                     ".model, a .gguf or a llama2.c tokenizer .bin (name the file accordingly)");
}

}  // namespace

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  MLXTERP_CHECK(file_exists(path), path, ": no such file or directory; expected a tokenizer.json, tokenizer.model, "
                                         ".gguf, llama2.c tokenizer .bin, or a directory holding one");
  if (!is_directory(path)) return load_file(path);
  for (const char* cand : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
    std::string p = join_path(path, cand);
    if (file_exists(p)) return load_file(p);
  }
  // llama2.c tok*.bin, then a lone .gguf.
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(path)) {
    std::string n = e.path().filename().string();
    if (e.is_regular_file() && starts_with(n, "tok") && ends_with(n, ".bin")) found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  if (!found.empty()) return load_file(found.front());
  for (const auto& e : std::filesystem::directory_iterator(path)) {
    if (e.is_regular_file() && ends_with(to_lower(e.path().filename().string()), ".gguf")) found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  if (found.size() == 1) return load_file(found.front());
  MLXTERP_FAIL(path, ": no tokenizer in this directory; expected tokenizer.json, tokenizer.model, tokenizer.bin, "
                     "tok*.bin or a single .gguf (pass the file itself with --tokenizer)");
}

int32_t parse_token(const Tokenizer& tok, std::string_view spec) {
  MLXTERP_CHECK(!spec.empty(), "token: empty; expected one vocabulary entry such as \" She\" or #ID such as #338");
  if (spec[0] == '#' && spec.size() > 1 &&
      std::all_of(spec.begin() + 1, spec.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    int64_t id = parse_int(spec.substr(1), "token id");
    MLXTERP_CHECK(id >= 0 && id < tok.vocab_size(), "token ", quote(spec), ": id ", id,
                  " is out of range; expected 0 <= id < ", tok.vocab_size(), " (the vocabulary size)");
    return int32_t(id);
  }
  // The display form (what `tokenize --json` decodes a token to), else the raw piece.
  if (auto id = tok.piece_to_id(spec); id && tok.token_to_str(*id) == spec) return *id;
  std::vector<int32_t> hits;
  for (int32_t i = 0; i < tok.vocab_size(); ++i)
    if (tok.token_to_str(i) == spec) hits.push_back(i);
  if (hits.size() == 1) return hits[0];
  if (hits.size() > 1) {
    std::string ids;
    for (int32_t h : hits) ids += cat(" #", h);
    MLXTERP_FAIL("token ", quote(spec), " is ambiguous: entries", ids, " all show as it; expected one of them as #ID");
  }
  if (auto id = tok.piece_to_id(spec)) return *id;
  std::string shown;
  try {
    auto ids = tok.encode(spec, {.add_special = false});
    for (int32_t i : ids) shown += cat(" ", quote(tok.token_to_str(i)), "=#", i);
    shown = cat("; it encodes to ", ids.size(), " tokens:", shown);
  } catch (const Error&) {
  }
  MLXTERP_FAIL("token ", quote(spec), " is not one vocabulary entry", shown,
               " (expected one entry as `tokenize --json` shows it, e.g. \" She\", or #ID)");
}

}  // namespace mlxterp

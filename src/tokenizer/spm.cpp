// SentencePiece .model files through libsentencepiece, reached via the dlopen()ed shim module
// libmlxterp_spm.so (see spm_shim/spm_shim.h for why it is isolated).
//
// The shim is looked up: $MLXTERP_SPM_SHIM, then beside libmlxterp.so, then the build-tree path
// compiled in. encode() adds BOS when the model defines one (what Llama/Mistral tokenizers do);
// the ids after it are exactly SentencePieceProcessor::Encode's.
#include <dlfcn.h>

#include <mutex>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "tokenizer/loaders.hpp"
#include "tokenizer/spm_shim/spm_shim.h"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

namespace {

struct ShimApi {
  decltype(&mlxterp_spm_abi) abi;
  decltype(&mlxterp_spm_load) load;
  decltype(&mlxterp_spm_destroy) destroy;
  decltype(&mlxterp_spm_encode) encode;
  decltype(&mlxterp_spm_decode) decode;
  decltype(&mlxterp_spm_free_buffer) free_buffer;
  decltype(&mlxterp_spm_piece_size) piece_size;
  decltype(&mlxterp_spm_id_to_piece) id_to_piece;
  decltype(&mlxterp_spm_piece_to_id) piece_to_id;
  decltype(&mlxterp_spm_score) score;
  decltype(&mlxterp_spm_flags) flags;
  decltype(&mlxterp_spm_special_id) special_id;
};

std::vector<std::string> shim_candidates() {
  std::vector<std::string> c;
  if (const char* env = std::getenv("MLXTERP_SPM_SHIM"); env && *env) c.emplace_back(env);
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&shim_candidates), &info) && info.dli_fname) {
    std::string dir = dirname(info.dli_fname);
    c.push_back(join_path(dir.empty() ? "." : dir, "libmlxterp_spm.so"));
  }
#ifdef MLXTERP_SPM_SHIM_PATH
  c.emplace_back(MLXTERP_SPM_SHIM_PATH);
#endif
  return c;
}

const ShimApi& shim() {
  static std::once_flag once;
  static ShimApi api{};
  static std::string error;
  std::call_once(once, [] {
#ifdef MLXTERP_NO_SENTENCEPIECE
    error = "this build of mlxterp has no SentencePiece support (libsentencepiece was not found at configure time)";
    return;
#endif
    int flags = RTLD_NOW | RTLD_LOCAL;
#if !defined(__SANITIZE_ADDRESS__)
    flags |= RTLD_DEEPBIND;  // sentencepiece binds to its own bundled protobuf, not libtorch's
#endif
    void* h = nullptr;
    std::string tried;
    for (const auto& p : shim_candidates()) {
      if (!file_exists(p)) {
        tried += " " + p + " (absent)";
        continue;
      }
      h = dlopen(p.c_str(), flags);
      if (h) break;
      tried += " " + p + " (" + dlerror() + ")";
    }
    if (!h) {
      error = "cannot load the SentencePiece module libmlxterp_spm.so; tried:" + tried +
              " (build the mlxterp_spm target, or set MLXTERP_SPM_SHIM to its path)";
      return;
    }
    auto sym = [&](const char* name) {
      void* s = dlsym(h, name);
      if (!s && error.empty()) error = std::string("libmlxterp_spm.so lacks the symbol ") + name;
      return s;
    };
#define MLXTERP_SHIM_SYM(field, name) api.field = reinterpret_cast<decltype(api.field)>(sym(name))
    MLXTERP_SHIM_SYM(abi, "mlxterp_spm_abi");
    MLXTERP_SHIM_SYM(load, "mlxterp_spm_load");
    MLXTERP_SHIM_SYM(destroy, "mlxterp_spm_destroy");
    MLXTERP_SHIM_SYM(encode, "mlxterp_spm_encode");
    MLXTERP_SHIM_SYM(decode, "mlxterp_spm_decode");
    MLXTERP_SHIM_SYM(free_buffer, "mlxterp_spm_free_buffer");
    MLXTERP_SHIM_SYM(piece_size, "mlxterp_spm_piece_size");
    MLXTERP_SHIM_SYM(id_to_piece, "mlxterp_spm_id_to_piece");
    MLXTERP_SHIM_SYM(piece_to_id, "mlxterp_spm_piece_to_id");
    MLXTERP_SHIM_SYM(score, "mlxterp_spm_score");
    MLXTERP_SHIM_SYM(flags, "mlxterp_spm_flags");
    MLXTERP_SHIM_SYM(special_id, "mlxterp_spm_special_id");
#undef MLXTERP_SHIM_SYM
    if (error.empty() && api.abi() != MLXTERP_SPM_ABI)
      error = cat("libmlxterp_spm.so has ABI ", api.abi(), "; expected ", MLXTERP_SPM_ABI, " (a stale build?)");
  });
  MLXTERP_CHECK(error.empty(), error);
  return api;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path), api_(shim()) {
    char err[512] = {0};
    h_ = api_.load(path.c_str(), err, sizeof err);
    MLXTERP_CHECK(h_, path, ": not a SentencePiece model: ", err, " (expected a tokenizer.model protobuf)");
    n_ = api_.piece_size(h_);
    special_.unk = api_.special_id(h_, 0);
    special_.bos = api_.special_id(h_, 1);
    special_.eos = api_.special_id(h_, 2);
    special_.pad = api_.special_id(h_, 3);
    flags_.resize(size_t(n_));
    for (int i = 0; i < n_; ++i) flags_[i] = uint8_t(api_.flags(h_, i));
  }
  ~SentencePieceTokenizer() override {
    if (h_) api_.destroy(h_);
  }

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options) const override {
    check_utf8(text, path_);
    std::vector<int32_t> out;
    if (options.add_special && special_.bos >= 0) out.push_back(special_.bos);
    int32_t* ids = nullptr;
    size_t n = 0;
    char err[512] = {0};
    MLXTERP_CHECK(api_.encode(h_, text.data(), text.size(), &ids, &n, err, sizeof err) == 0, path_,
                  ": SentencePiece encode failed: ", err);
    out.insert(out.end(), ids, ids + n);
    api_.free_buffer(ids);
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    // SentencePiece drops control tokens when decoding; unless asked to skip them we show them by
    // their piece text between the decoded runs.
    std::string out;
    std::vector<int32_t> run;
    auto flush = [&] {
      if (run.empty()) return;
      char* text = nullptr;
      size_t len = 0;
      char err[512] = {0};
      MLXTERP_CHECK(api_.decode(h_, run.data(), run.size(), &text, &len, err, sizeof err) == 0, path_,
                    ": SentencePiece decode failed: ", err);
      out.append(text, len);
      api_.free_buffer(text);
      run.clear();
    };
    for (int32_t id : ids) {
      check_id(id);
      if (flags_[id] & MLXTERP_SPM_CONTROL) {
        if (skip_special) continue;
        flush();
        out += id_to_piece(id);
        continue;
      }
      run.push_back(id);
    }
    flush();
    return out;
  }

  std::string token_to_str(int32_t id) const override {
    std::string p = id_to_piece(id);
    if (flags_[id] & (MLXTERP_SPM_BYTE | MLXTERP_SPM_CONTROL | MLXTERP_SPM_UNKNOWN)) return p;
    return replace_all(p, kSpmSpace, " ");
  }
  std::string id_to_piece(int32_t id) const override {
    check_id(id);
    size_t len = 0;
    const char* p = api_.id_to_piece(h_, id, &len);
    return std::string(p, len);
  }
  std::optional<int32_t> piece_to_id(std::string_view piece) const override {
    int id = api_.piece_to_id(h_, piece.data(), piece.size());
    if (id < 0 || id >= n_ || id_to_piece(id) != piece) return std::nullopt;
    return id;
  }
  int32_t vocab_size() const override { return n_; }
  bool is_special(int32_t id) const override {
    check_id(id);
    return (flags_[id] & (MLXTERP_SPM_CONTROL | MLXTERP_SPM_UNKNOWN)) != 0;
  }
  bool adds_bos() const override { return special_.bos >= 0; }
  std::string kind() const override { return "sentencepiece"; }

 private:
  void check_id(int32_t id) const {
    MLXTERP_CHECK(id >= 0 && id < n_, path_, ": token id ", id, " is out of range; expected 0 <= id < ", n_,
                  " (the vocabulary size)");
  }
  std::string path_;
  const ShimApi& api_;
  mlxterp_spm* h_ = nullptr;
  int32_t n_ = 0;
  std::vector<uint8_t> flags_;
};

}  // namespace

std::shared_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
  return std::make_shared<SentencePieceTokenizer>(path);
}

}  // namespace mlxterp::tok

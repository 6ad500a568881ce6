// The libsentencepiece shim (see spm_shim.h). No exception crosses the C boundary.
#include "spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct mlxterp_spm {
  sentencepiece::SentencePieceProcessor sp;
};

namespace {
void set_err(char* err, size_t len, const std::string& msg) {
  if (!err || len == 0) return;
  std::strncpy(err, msg.c_str(), len - 1);
  err[len - 1] = '\0';
}
}  // namespace

extern "C" {

int mlxterp_spm_abi(void) { return MLXTERP_SPM_ABI; }

mlxterp_spm* mlxterp_spm_load(const char* path, char* err, size_t err_len) {
  try {
    auto* h = new mlxterp_spm;
    auto st = h->sp.Load(path);
    if (!st.ok()) {
      set_err(err, err_len, st.ToString());
      delete h;
      return nullptr;
    }
    return h;
  } catch (const std::exception& e) {
    set_err(err, err_len, e.what());
    return nullptr;
  }
}

void mlxterp_spm_destroy(mlxterp_spm* h) { delete h; }

int mlxterp_spm_encode(const mlxterp_spm* h, const char* text, size_t len, int32_t** ids, size_t* n_ids, char* err,
                       size_t err_len) {
  try {
    std::vector<int> v;
    auto st = h->sp.Encode(std::string(text, len), &v);
    if (!st.ok()) {
      set_err(err, err_len, st.ToString());
      return 1;
    }
    *n_ids = v.size();
    *ids = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * (v.size() + 1)));
    if (!*ids) {
      set_err(err, err_len, "out of memory");
      return 1;
    }
    for (size_t i = 0; i < v.size(); ++i) (*ids)[i] = v[i];
    return 0;
  } catch (const std::exception& e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

int mlxterp_spm_decode(const mlxterp_spm* h, const int32_t* ids, size_t n_ids, char** text, size_t* len, char* err,
                       size_t err_len) {
  try {
    std::vector<int> v(ids, ids + n_ids);
    std::string out;
    auto st = h->sp.Decode(v, &out);
    if (!st.ok()) {
      set_err(err, err_len, st.ToString());
      return 1;
    }
    *len = out.size();
    *text = static_cast<char*>(std::malloc(out.size() + 1));
    if (!*text) {
      set_err(err, err_len, "out of memory");
      return 1;
    }
    std::memcpy(*text, out.data(), out.size());
    (*text)[out.size()] = '\0';
    return 0;
  } catch (const std::exception& e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

void mlxterp_spm_free_buffer(void* p) { std::free(p); }

int mlxterp_spm_piece_size(const mlxterp_spm* h) { return h->sp.GetPieceSize(); }

const char* mlxterp_spm_id_to_piece(const mlxterp_spm* h, int id, size_t* len) {
  const std::string& p = h->sp.IdToPiece(id);
  *len = p.size();
  return p.c_str();
}

int mlxterp_spm_piece_to_id(const mlxterp_spm* h, const char* piece, size_t len) {
  return h->sp.PieceToId(std::string(piece, len));
}

float mlxterp_spm_score(const mlxterp_spm* h, int id) { return h->sp.GetScore(id); }

int mlxterp_spm_flags(const mlxterp_spm* h, int id) {
  int f = 0;
  if (h->sp.IsUnknown(id)) f |= MLXTERP_SPM_UNKNOWN;
  if (h->sp.IsControl(id)) f |= MLXTERP_SPM_CONTROL;
  if (h->sp.IsUnused(id)) f |= MLXTERP_SPM_UNUSED;
  if (h->sp.IsByte(id)) f |= MLXTERP_SPM_BYTE;
  return f;
}

int mlxterp_spm_special_id(const mlxterp_spm* h, int which) {
  switch (which) {
    case 0: return h->sp.unk_id();
    case 1: return h->sp.bos_id();
    case 2: return h->sp.eos_id();
    case 3: return h->sp.pad_id();
    default: return -1;
  }
}

}  // extern "C"

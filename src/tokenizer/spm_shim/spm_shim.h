/* mlxterp_spm — a C interface over libsentencepiece, built as its own module (libmlxterp_spm.so) and
 * dlopen()ed by libmlxterp with RTLD_LOCAL | RTLD_DEEPBIND.
 *
 * Why a separate module: Debian's libsentencepiece bundles protobuf-lite and exports its symbols;
 * linked into a process that also loads libprotobuf (libtorch does), the two copies interpose and the
 * process crashes during static initialisation. Loaded locally and deep-bound, sentencepiece only
 * ever sees its own copy. Buffers returned by the shim are malloc()ed: release with mlxterp_spm_free_buffer.
 */
#ifndef MLXTERP_SPM_SHIM_H
#define MLXTERP_SPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MLXTERP_SPM_ABI 1

typedef struct mlxterp_spm mlxterp_spm;

enum { MLXTERP_SPM_UNKNOWN = 1, MLXTERP_SPM_CONTROL = 2, MLXTERP_SPM_UNUSED = 4, MLXTERP_SPM_BYTE = 8 };

int mlxterp_spm_abi(void);
/* NULL on failure, with the reason in err. */
mlxterp_spm* mlxterp_spm_load(const char* path, char* err, size_t err_len);
void mlxterp_spm_destroy(mlxterp_spm* h);
/* 0 on success. */
int mlxterp_spm_encode(const mlxterp_spm* h, const char* text, size_t len, int32_t** ids, size_t* n_ids, char* err,
                       size_t err_len);
int mlxterp_spm_decode(const mlxterp_spm* h, const int32_t* ids, size_t n_ids, char** text, size_t* len, char* err,
                       size_t err_len);
void mlxterp_spm_free_buffer(void* p);
int mlxterp_spm_piece_size(const mlxterp_spm* h);
/* Valid while h lives. */
const char* mlxterp_spm_id_to_piece(const mlxterp_spm* h, int id, size_t* len);
int mlxterp_spm_piece_to_id(const mlxterp_spm* h, const char* piece, size_t len);
float mlxterp_spm_score(const mlxterp_spm* h, int id);
int mlxterp_spm_flags(const mlxterp_spm* h, int id);
/* which: 0 unk, 1 bos, 2 eos, 3 pad (-1 = none). */
int mlxterp_spm_special_id(const mlxterp_spm* h, int which);

#ifdef __cplusplus
}
#endif

#endif

// Launchers for the SAE CUDA kernels: raw pointers, sizes and a stream; no libtorch. Included by the .cu
// files that define them and by sae_step_cuda.cpp, which binds them to at::Tensors.
//
// Conventions: bf16 arrays are passed as `const void*` / `void*` (row-major, 16-byte aligned rows);
// latent and token ids are int32; every launcher is asynchronous on `stream` and returns the launch's
// cudaError_t (cudaGetLastError right after the launch).
#pragma once

#ifdef MLXTERP_CUDA_EMULATE
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime_api.h>
#endif

#include <cstddef>
#include <cstdint>

namespace mlxterp::cuda_kernels {

// torch.optim.AdamW's constants for step t, folded on the host.
struct AdamArgs {
  float beta1, beta2, eps;
  float decay;         // 1 - lr * weight_decay
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};

// Limits of the kernels (the binding checks them and otherwise falls back to the reference).
constexpr int kTopkMaxK = 1024;
constexpr int kMaxDim = 16384;  // d_in

// ---- selection ---------------------------------------------------------------------------------------

// Per row r of pre [rows, F] (bf16, row stride ld elements): the k largest of relu(pre + b_enc), ties to the
// lower latent, sorted by latent. Writes latents/values [rows, k] at row offset out_row0 (i.e. to
// latents + (out_row0 + r) * k) and tok[(out_row0 + r) * k + j] = out_row0 + r.  F % 8 == 0, ld % 8 == 0.
cudaError_t topk_rows(const void* pre, int64_t ld, const float* b_enc, int rows, int F, int k, int out_row0,
                      int* latents, float* values, int* tok, cudaStream_t stream);

// BatchTopK over pre [N, F]: the N*k largest of relu(pre + b_enc), ties to the earlier (row, latent).
// Step 1 finds the threshold on the device (state: 8 ints of scratch, hist: 4096 uint32 of scratch, both
// zeroed by the launcher), step 2 counts per row, step 3 (after the caller turns counts into row_ptr
// and `take`) writes the CSR selections in (row, latent) order.
cudaError_t batch_topk_threshold(const void* pre, int64_t ld, const float* b_enc, int N, int F, int64_t total_k,
                                 int* state, unsigned* hist, cudaStream_t stream);
// cnt_gt[n] = #(key > T), cnt_eq[n] = #(key == T) for the threshold key T in state.
cudaError_t batch_topk_count(const void* pre, int64_t ld, const float* b_enc, int N, int F, const int* state,
                             int* cnt_gt, int* cnt_eq, cudaStream_t stream);
// Row n takes every key > T and its first take[n] keys == T; writes from row_ptr[n].
cudaError_t batch_topk_collect(const void* pre, int64_t ld, const float* b_enc, int N, int F, const int* state,
                               const int64_t* row_ptr, const int64_t* take, int* latents, float* values, int* tok,
                               cudaStream_t stream);
// Index into `state` of: the threshold key (as uint32 bits of the float), and the number of keys == T to take.
constexpr int kStateThreshold = 4;
constexpr int kStateNeededEq = 5;

// ---- decoder -----------------------------------------------------------------------------------------

// Per token n: e = b_dec + sum_{p in row n} values[p] * W[latents[p]] - x[n]  (fp32 accumulation).
// row_ptr null: rows are [n*k, (n+1)*k). W bf16 [F, d]; x float32 (x_is_bf16 = false) or bf16 [N, d].
// Writes e32 [N, d] float32, e16 [N, d] bf16 and err2[n] = sum_j e[n, j]^2.
cudaError_t sparse_decode(int N, int d, int k, const int64_t* row_ptr, const int* latents, const float* values,
                          const void* W, const float* b_dec, const void* x, bool x_is_bf16, float* e32, void* e16,
                          float* err2, cudaStream_t stream);

// ---- grouping by latent --------------------------------------------------------------------------------

// packed[p] = (uint64(tok[p]) << 32) | bits(values[p]): what the per-latent kernels read per pair.
cudaError_t pack_pairs(const int* tok, const float* values, int n, uint64_t* packed, cudaStream_t stream);
// Sorts (latent, packed pair) by latent; stable, so a latent's pairs stay in token order. Latents < F.
size_t sort_pairs_temp_bytes(int n, int F);
cudaError_t sort_pairs(void* temp, size_t temp_bytes, const int* keys_in, int* keys_out, const uint64_t* vals_in,
                       uint64_t* vals_out, int n, int F, cudaStream_t stream);
// offsets[f] = first position of latent f in the sorted keys (lower bound), offsets[F] = n.
cudaError_t segment_offsets(const int* sorted_keys, int n, int F, int* offsets, cudaStream_t stream);

// ---- fused per-latent backward + optimizer -------------------------------------------------------------

// Blocks the per-latent kernels launch (each loops over latents); partial buffers have this many rows.
int latent_grid_size(int d);

enum class LatentMode : int {
  Fused = 0,       // gradients and the update in one pass
  NormOnly = 1,    // gradients only: per-block sums of squares (for clipping); writes gval / b_dec partials
  UpdateOnly = 2,  // recompute gradients, apply the update (gval / b_dec partials from the NormOnly pass)
};

struct LatentPairs {
  const int* offsets;       // [F + 1]: latent f's pairs are sorted[offsets[f] .. offsets[f+1])
  const uint64_t* sorted;   // [P] packed (token, activation), grouped by latent
};

// Decoder side. For latent f with pairs p = (tok, val): g = coef * sum_p val * e16[tok];
// gval[p] = coef * (e16[tok] . W[f]) (p = sorted position; not written in UpdateOnly); g -= (g . W[f]) W[f] if remove_parallel;
// g *= clip; AdamW; W[f] /= ||W[f]|| + FLT_EPSILON if renorm; W16 = bf16(W).
// coef, clip: device scalars (clip may be null = 1). norm_partial[block] += |g|^2 (NormOnly).
cudaError_t decoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* e16, const float* coef,
                           float* W, void* W16, float* m, float* v, float* gval, AdamArgs adam, const float* clip,
                           bool remove_parallel, bool renorm, float* norm_partial, cudaStream_t stream);

// Encoder side. gpre[p] = val > 0 ? gval[p] : 0; g = sum_p gpre[p] * xc16[tok]; gb = sum_p gpre[p];
// bdec_partial[block] += gb * W[f] (old W; not in UpdateOnly); g *= clip; AdamW on W[f] and b_enc[f];
// W16 = bf16(W); since_fired[f] = fired ? 0 : since_fired[f] + n_tokens; fire_count[f] = #(val > 0).
// norm_partial[block] += |g|^2 + gb^2 (NormOnly). since_fired / fire_count may be null.
cudaError_t encoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* xc16, const float* gval,
                           float* W, void* W16, float* m, float* v, float* b, float* bm, float* bv, AdamArgs adam,
                           const float* clip, int64_t* since_fired, int* fire_count, int n_tokens,
                           float* bdec_partial, float* norm_partial, cudaStream_t stream);

// AdamW on a float32 vector with gradient g (times *clip when clip is not null).
cudaError_t adam_vector(int n, float* p, float* m, float* v, const float* g, AdamArgs adam, const float* clip,
                        cudaStream_t stream);

// bf16 copy of a float32 array (n % 8 == 0, 16-byte aligned).
cudaError_t to_bf16(const float* src, void* dst, int64_t n, cudaStream_t stream);

}  // namespace mlxterp::cuda_kernels

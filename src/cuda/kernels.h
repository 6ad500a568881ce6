// Launchers for the SAE CUDA kernels: raw pointers, sizes and a stream; no libtorch. Included by the .cu
// files that define them and by sae_kernels_cuda.cpp, which binds them to at::Tensors.
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
constexpr int kTopkMaxK = 8192;
constexpr int kMaxDim = 16384;  // d_in

// ---- selection ---------------------------------------------------------------------------------------

// Per row r of pre [rows, F] (bf16, row stride ld elements): the k largest of relu(pre + b_enc), ties to the
// lower latent, sorted by latent. Writes latents/values [rows, k] at row offset out_row0 (i.e. to
// latents + (out_row0 + r) * k) and tok[(out_row0 + r) * k + j] = out_row0 + r.  F % 8 == 0, ld % 8 == 0.
// mask (optional, [F] bytes, 8-byte aligned): latents with mask 0 count as 0 (AuxK: only dead latents).
// enabled (optional device int): when 0, every row gets latents 0..k-1 with value 0 without reading pre.
// guess (optional device float): a value a little below the rows' k-th largest; a row with between k and
// max(2048, k) keys above it is done in one read instead of two. Any guess gives the same result.
// kth_out (optional, [rows] device floats): each row's k-th largest relu(pre + b_enc) (0 if fewer positive).
cudaError_t topk_rows(const void* pre, int64_t ld, const float* b_enc, int rows, int F, int k, int out_row0,
                      int* latents, float* values, int* tok, cudaStream_t stream, const uint8_t* mask = nullptr,
                      const int* enabled = nullptr, const float* guess = nullptr, float* kth_out = nullptr);

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

// Per token n: e = b_dec + sum_{p in row n} values[p] * W[latents[p]] - x[n]  (fp32 accumulation; b_dec may
// be null = 0; zero values are skipped). row_ptr null: rows are [n*k, (n+1)*k). W bf16 [F, d]; x float32
// (x_is_bf16 = false) or bf16 [N, d].
// Writes e32 [N, d] float32, e16 [N, d] bf16 and err2[n] = sum_j e[n, j]^2.
cudaError_t sparse_decode(int N, int d, int k, const int64_t* row_ptr, const int* latents, const float* values,
                          const void* W, const float* b_dec, const void* x, bool x_is_bf16, float* e32, void* e16,
                          float* err2, cudaStream_t stream);

// ---- grouping by latent --------------------------------------------------------------------------------

// A (token, latent, activation) pair as the per-latent kernels read it: (uint64(tok + tok_offset) << 32) |
// bits(value). keys[p] = latent, or F (a sentinel sorted past every latent, so the pair is ignored) when
// sentinel_zero and the value is not > 0.
cudaError_t pack_pairs(const int* tok, const int* latents, const float* values, int n, int tok_offset,
                       bool sentinel_zero, int F, int* keys, uint64_t* packed, cudaStream_t stream);
// Sorts (key, packed pair) by key; stable, so a latent's pairs stay in input (token) order. Keys <= F.
size_t sort_pairs_temp_bytes(int n, int F);
cudaError_t sort_pairs(void* temp, size_t temp_bytes, const int* keys_in, int* keys_out, const uint64_t* vals_in,
                       uint64_t* vals_out, int n, int F, cudaStream_t stream);
// offsets[f] = first position of a key >= f in the sorted keys, for f = 0..F (so offsets[F] excludes sentinels).
cudaError_t segment_offsets(const int* sorted_keys, int n, int F, int* offsets, cudaStream_t stream);

// ---- fused per-latent backward + optimizer -------------------------------------------------------------

// Blocks the per-latent kernels launch (each loops over latents); partial buffers have this many rows.
int latent_grid_size(int d);

enum class LatentMode : int {
  Fused = 0,       // gradients and the update in one pass
  NormOnly = 1,    // gradients only (for clipping): gval, b_dec partials, squared norms; no update
  UpdateOnly = 2,  // recompute gradients, apply the clipped update (gval / b_dec partials from NormOnly)
};

// Pairs grouped by latent. A pair's token t < n_main is a main (TopK) selection: its gradient row is
// G16[t] = e (x_hat - x) with coefficient coef[0], its encoder input xc16[t]. t >= n_main is an AuxK
// selection of token t - n_main: gradient row G16[t] (e_hat - e_aux) with coefficient coef[1], encoder input
// xc16[t - n_main]. G16 is [2 * n_main, d] when AuxK is on, else [n_main, d].
struct LatentPairs {
  const int* offsets;      // [F + 1]: latent f's pairs are sorted[offsets[f] .. offsets[f+1])
  const uint64_t* sorted;  // [P] packed (token, activation), grouped by latent
  int n_main;
};

// AuxK's dead latents done as dense GEMMs by the caller (null slot = none): latent f with slot[f] = j >= 0 has,
// besides its pairs, the dense gradient rows dec[j] (sum over tokens of aux activation * G16 aux row; the
// decoder scales it by coef[1]) and enc[j] (sum over tokens of gpre * xc16 row, scaled), and gb[j] (its
// b_enc gradient, scaled). dec / enc are bf16 [cap, d] row-major, gb float32 [cap].
struct DenseRows {
  const int* slot = nullptr;  // [F]
  const uint16_t* dec = nullptr;
  const uint16_t* enc = nullptr;
  const float* gb = nullptr;
};

// A weight matrix's Adam moments [F, d]: float32, or bf16 (bf16 = true) computed in float32 and stored
// stochastically rounded with the bits of moment_hash(seed, flat index) (sae_kernels.hpp).
struct MomentArgs {
  void* m;
  void* v;
  bool bf16;
  uint32_t seed;
};

// Decoder side, per latent f (w = W[f] before the step):
//   gval[p] = coef_src * (G16[tok] . w)           (sorted position p; written in Fused and NormOnly)
//   g = sum_p coef_src * val * G16[tok]  (+ coef[1] * dense.dec[slot[f]])
//   g -= (g . w) w / max(|w|, 1e-12)^2            (remove_parallel)
//   norm_partial[block] += |g|^2                    (Fused, NormOnly)
//   if *gate (null = always) and not NormOnly: g *= *clip (null = 1); AdamW with weight decay;
//   w /= max(|w|, 1e-12) (renorm); W16 = bf16(W).
cudaError_t decoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* G16, const float* coef,
                           float* W, void* W16, MomentArgs mo, float* gval, AdamArgs adam, const float* clip,
                           const int* gate, bool remove_parallel, bool renorm, float* norm_partial,
                           DenseRows dense, cudaStream_t stream);

// Encoder side, per latent f (w = W[f] before the step):
//   gpre[p] = val > 0 ? gval[p] : 0;  g = sum_p gpre[p] * xc16[tok mod n_main];  gb = sum_p gpre[p]
//   (+ dense.enc[slot[f]] and dense.gb[slot[f]])
//   bdec_partial[block] += gb * w                   (Fused, NormOnly: every block writes its row)
//   norm_partial[block] += |g|^2 + gb^2             (Fused, NormOnly)
//   fire_count[f] = #(main pairs with val > fire_threshold)   (not NormOnly)
//   if *gate and not NormOnly: AdamW on W[f] (with weight decay) and b_enc[f] (bias_adam, no decay); W16 = bf16(W).
cudaError_t encoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* xc16, const float* gval,
                           float* W, void* W16, MomentArgs mo, float* b, float* bm, float* bv, AdamArgs adam,
                           AdamArgs bias_adam, const float* clip, const int* gate, float fire_threshold,
                           int* fire_count, float* bdec_partial, float* norm_partial, DenseRows dense,
                           cudaStream_t stream);

// AdamW on a float32 vector with gradient g (times *clip when clip is not null), if *gate (null = always).
cudaError_t adam_vector(int n, float* p, float* m, float* v, const float* g, AdamArgs adam, const float* clip,
                        const int* gate, cudaStream_t stream);

// bf16 copy of a float32 array (n % 8 == 0, 16-byte aligned).
cudaError_t to_bf16(const float* src, void* dst, int64_t n, cudaStream_t stream);

// ---- transformer forward (fused elementwise ops, bf16) ------------------------------------------------

// RMSNorm of x [rows, d] (bf16, contiguous, d % 8 == 0) with weight w [d] (bf16), HF's roundings:
//   plus_one = false (Llama): out = bf16(w * bf16(x * rsqrt(mean(x^2) + eps)))
//   plus_one = true (Gemma):  out = bf16(x * rsqrt(mean(x^2) + eps) * (1 + w))   (float32 product)
cudaError_t rms_norm_bf16(const void* x, const void* w, void* out, int64_t rows, int d, float eps, bool plus_one,
                          cudaStream_t stream);
// out = bf16(bf16(silu(g)) * u) over n elements (bf16, contiguous, 16-byte aligned; n % 8 == 0).
cudaError_t silu_mul_bf16(const void* g, const void* u, void* out, int64_t n, cudaStream_t stream);
// Rotary embedding of x [B, H, T, d] (bf16, last dim contiguous, any other strides) into out (same shape),
// with cos / sin [B, T, >= rot] float32 (last dim contiguous), as HF's x * cos + rotate_half(x) * sin over
// the first rot dimensions (cos / sin rounded to bf16 first, every product and the sum rounded to bf16);
// dimensions rot .. d are copied.
struct RopeShape {
  int64_t B, H, T;
  int d, rot;
  int64_t xs[3], os[3];  // strides (elements) of x and out over B, H, T
  int64_t cs[2];         // strides of cos and sin over B, T
};
cudaError_t rope_bf16(const void* x, void* out, const float* cos, const float* sin, const RopeShape& s,
                      cudaStream_t stream);

}  // namespace mlxterp::cuda_kernels

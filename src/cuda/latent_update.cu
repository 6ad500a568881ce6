// The sparse backward and the optimizer, fused per latent. A block owns one latent row at a time (a
// grid-stride loop over latents): it reads the row, its Adam moments and the latent's (token, activation)
// pairs, gathers the pairs' gradient rows (the residuals for W_dec, the centred inputs for W_enc; both
// small enough to stay in L2), forms the row's gradient in registers, and writes the updated row, moments
// and bf16 copy once. Grouping by latent means no atomics: a frequent latent is just a longer loop.
#include <algorithm>
#include <cfloat>

#include "cuda/common.cuh"

namespace mlxterp::cuda_kernels {
namespace {

constexpr int kPairBatch = 8;  // pairs gathered per round (their dot products share one block reduction)

__device__ __forceinline__ void unpack_pair(uint64_t p, int& tok, float& val) {
  tok = int(unsigned(p >> 32));
  val = __uint_as_float(unsigned(p & 0xffffffffull));
}

// Minimum blocks per multiprocessor for the launch bounds: two 512-thread blocks when a thread holds one
// chunk (8 elements each of row, moments and gradient), otherwise let the compiler have the registers.
template <int CH>
constexpr int min_blocks() {
  return CH == 1 ? 2 : 1;
}

// The pair's gradient-row source: main (token < n_main) or AuxK.
__device__ __forceinline__ int source_of(int tok, int n_main) { return tok < n_main ? 0 : 1; }

template <int CH>
__global__ void __launch_bounds__(512, min_blocks<CH>())
    decoder_kernel(LatentMode mode, int F, int d, LatentPairs P, const uint16_t* __restrict__ G16,
                   const float* __restrict__ coef_p, float* __restrict__ W, uint16_t* __restrict__ W16,
                   float* __restrict__ M, float* __restrict__ V, float* __restrict__ gval, AdamArgs adam,
                   const float* __restrict__ clip_p, const int* __restrict__ gate, bool remove_parallel,
                   bool renorm, float* __restrict__ norm_partial) {
  __shared__ float s_red[33 * kPairBatch + kPairBatch];
  const int t = threadIdx.x, T = blockDim.x;
  const float coef[2] = {coef_p[0], coef_p[1]};
  const float clip = clip_p ? *clip_p : 1.f;
  const bool update = mode != LatentMode::NormOnly && (!gate || *gate != 0);
  const bool want_gval = mode != LatentMode::UpdateOnly;
  float nacc = 0.f;

  for (int f = blockIdx.x; f < F; f += gridDim.x) {
    const int64_t row = int64_t(f) * d;
    float w[CH][8], m[CH][8], v[CH][8], g[CH][8];
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e0 = (c * T + t) * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) w[c][i] = m[c][i] = v[c][i] = g[c][i] = 0.f;
      if (e0 < d) {
        load_f8_stream(W + row + e0, w[c]);
        if (update) {
          load_f8_stream(M + row + e0, m[c]);
          load_f8_stream(V + row + e0, v[c]);
        }
      }
    }
    const int beg = P.offsets[f], end = P.offsets[f + 1];
    for (int p0 = beg; p0 < end; p0 += kPairBatch) {
      const int cnt = min(kPairBatch, end - p0);
      float dots[kPairBatch];
#pragma unroll
      for (int q = 0; q < kPairBatch; ++q) {
        dots[q] = 0.f;
        int n = 0;
        float a = 0.f;
        if (q < cnt) unpack_pair(P.sorted[p0 + q], n, a);
        if (a != 0.f) {  // a zero activation adds nothing and its gval is never used (relu' = 0)
          const float ca = coef[source_of(n, P.n_main)] * a;
          const uint16_t* gr = G16 + int64_t(n) * d;
#pragma unroll
          for (int c = 0; c < CH; ++c) {
            const int e0 = (c * T + t) * 8;
            if (e0 < d) {
              float gv[8];
              unpack_bf16x8(ld_ro(gr + e0), gv);
#pragma unroll
              for (int i = 0; i < 8; ++i) {
                dots[q] = fmaf(gv[i], w[c][i], dots[q]);
                g[c][i] = fmaf(ca, gv[i], g[c][i]);
              }
            }
          }
        }
      }
      if (want_gval) {
        block_sum<kPairBatch>(dots, s_red);
        float mine = 0.f;
#pragma unroll
        for (int q = 0; q < kPairBatch; ++q)
          if (q == t) mine = dots[q];
        if (t < cnt) {
          int n;
          float a;
          unpack_pair(P.sorted[p0 + t], n, a);
          gval[p0 + t] = coef[source_of(n, P.n_main)] * mine;
        }
      }
    }

    if (remove_parallel) {
      float r[2] = {0.f, 0.f};  // g . w, w . w
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          r[0] = fmaf(g[c][i], w[c][i], r[0]);
          r[1] = fmaf(w[c][i], w[c][i], r[1]);
        }
      block_sum<2>(r, s_red);
      const float pd = r[0] / fmaxf(r[1], 1e-24f);
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) g[c][i] = fmaf(-pd, w[c][i], g[c][i]);
    }
    if (mode != LatentMode::UpdateOnly) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) nacc = fmaf(g[c][i], g[c][i], nacc);
    }
    if (!update) continue;

    float n2 = 0.f;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e0 = (c * T + t) * 8;
      if (e0 < d) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          w[c][i] = adam_update(w[c][i], g[c][i] * clip, m[c][i], v[c][i], adam);
          n2 = fmaf(w[c][i], w[c][i], n2);
        }
      }
    }
    if (renorm) {
      n2 = block_sum1(n2, s_red);
      const float s = 1.f / fmaxf(sqrtf(n2), 1e-12f);
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) w[c][i] *= s;
    }
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e0 = (c * T + t) * 8;
      if (e0 < d) {
        store_f8_stream(W + row + e0, w[c]);
        store_f8_stream(M + row + e0, m[c]);
        store_f8_stream(V + row + e0, v[c]);
        st_stream_u4(W16 + row + e0, pack_bf16x8(w[c]));
      }
    }
  }
  if (mode != LatentMode::UpdateOnly) {
    nacc = block_sum1(nacc, s_red);
    if (t == 0) norm_partial[blockIdx.x] = nacc;
  }
}

template <int CH>
__global__ void __launch_bounds__(512, min_blocks<CH>())
    encoder_kernel(LatentMode mode, int F, int d, LatentPairs P, const uint16_t* __restrict__ xc16,
                   const float* __restrict__ gval, float* __restrict__ W, uint16_t* __restrict__ W16,
                   float* __restrict__ M, float* __restrict__ V, float* __restrict__ b, float* __restrict__ bm,
                   float* __restrict__ bv, AdamArgs adam, AdamArgs bias_adam, const float* __restrict__ clip_p,
                   const int* __restrict__ gate, float fire_threshold, int* __restrict__ fire_count,
                   float* __restrict__ bdec_partial, float* __restrict__ norm_partial) {
  __shared__ float s_red[34];
  const int t = threadIdx.x, T = blockDim.x;
  const float clip = clip_p ? *clip_p : 1.f;
  const bool update = mode != LatentMode::NormOnly && (!gate || *gate != 0);
  const bool first_pass = mode != LatentMode::UpdateOnly;  // b_dec partials and norms
  float bacc[CH][8];
#pragma unroll
  for (int c = 0; c < CH; ++c)
#pragma unroll
    for (int i = 0; i < 8; ++i) bacc[c][i] = 0.f;
  float nacc = 0.f;

  for (int f = blockIdx.x; f < F; f += gridDim.x) {
    const int64_t row = int64_t(f) * d;
    float w[CH][8], m[CH][8], v[CH][8], g[CH][8];
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e0 = (c * T + t) * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) w[c][i] = m[c][i] = v[c][i] = g[c][i] = 0.f;
      if (e0 < d) {
        load_f8_stream(W + row + e0, w[c]);
        if (update) {
          load_f8_stream(M + row + e0, m[c]);
          load_f8_stream(V + row + e0, v[c]);
        }
      }
    }
    const int beg = P.offsets[f], end = P.offsets[f + 1];
    float gb = 0.f;
    int fired = 0;
    for (int p0 = beg; p0 < end; p0 += kPairBatch) {
      const int cnt = min(kPairBatch, end - p0);
#pragma unroll
      for (int q = 0; q < kPairBatch; ++q) {
        if (q < cnt) {
          int n;
          float a;
          unpack_pair(P.sorted[p0 + q], n, a);
          const bool main = n < P.n_main;
          const float gp = a > 0.f ? gval[p0 + q] : 0.f;  // relu'(pre) = [val > 0]
          fired += main && a > fire_threshold;
          gb += gp;
          if (gp != 0.f) {
            const uint16_t* xr = xc16 + int64_t(main ? n : n - P.n_main) * d;
#pragma unroll
            for (int c = 0; c < CH; ++c) {
              const int e0 = (c * T + t) * 8;
              if (e0 < d) {
                float xv[8];
                unpack_bf16x8(ld_ro(xr + e0), xv);
#pragma unroll
                for (int i = 0; i < 8; ++i) g[c][i] = fmaf(gp, xv[i], g[c][i]);
              }
            }
          }
        }
      }
    }
    if (first_pass) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          bacc[c][i] = fmaf(gb, w[c][i], bacc[c][i]);
          nacc = fmaf(g[c][i], g[c][i], nacc);
        }
      if (t == 0) nacc = fmaf(gb, gb, nacc);
    }
    if (mode != LatentMode::NormOnly && t == 0 && fire_count) fire_count[f] = fired;
    if (!update) continue;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e0 = (c * T + t) * 8;
      if (e0 < d) {
#pragma unroll
        for (int i = 0; i < 8; ++i) w[c][i] = adam_update(w[c][i], g[c][i] * clip, m[c][i], v[c][i], adam);
        store_f8_stream(W + row + e0, w[c]);
        store_f8_stream(M + row + e0, m[c]);
        store_f8_stream(V + row + e0, v[c]);
        st_stream_u4(W16 + row + e0, pack_bf16x8(w[c]));
      }
    }
    if (t == 0) {
      float bmf = bm[f], bvf = bv[f];
      b[f] = adam_update(b[f], gb * clip, bmf, bvf, bias_adam);
      bm[f] = bmf;
      bv[f] = bvf;
    }
  }
  if (first_pass) {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e0 = (c * T + t) * 8;
      if (e0 < d) store_f8(bdec_partial + int64_t(blockIdx.x) * d + e0, bacc[c]);
    }
    nacc = block_sum1(nacc, s_red);
    if (t == 0) norm_partial[blockIdx.x] = nacc;
  }
}

struct GridCache {
  int device = -1, d = -1, grid = 0;
};

}  // namespace

int latent_grid_size(int d) {
  static thread_local GridCache cache;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cache.device == dev && cache.d == d) return cache.grid;
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const RowLayout L = row_layout(d);
  int per_sm_dec = 1, per_sm_enc = 1;
  switch (L.ch) {
    case 1:
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_dec, decoder_kernel<1>, L.threads, 0);
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_enc, encoder_kernel<1>, L.threads, 0);
      break;
    case 2:
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_dec, decoder_kernel<2>, L.threads, 0);
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_enc, encoder_kernel<2>, L.threads, 0);
      break;
    default:
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_dec, decoder_kernel<4>, L.threads, 0);
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_enc, encoder_kernel<4>, L.threads, 0);
      break;
  }
  const int per_sm = std::max(1, std::min(per_sm_dec, per_sm_enc));
  cache = {dev, d, std::max(1, sms) * per_sm};
  return cache.grid;
}

cudaError_t decoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* G16, const float* coef,
                           float* W, void* W16, float* m, float* v, float* gval, AdamArgs adam, const float* clip,
                           const int* gate, bool remove_parallel, bool renorm, float* norm_partial,
                           cudaStream_t stream) {
  if (F <= 0) return cudaSuccess;
  if (d % 8 || d > kMaxDim) return cudaErrorInvalidValue;
  const RowLayout L = row_layout(d);
  // Exactly latent_grid_size blocks: each writes its norm partial (blocks past F write zeros).
  const int grid = latent_grid_size(d);
  if (grid <= 0) return cudaErrorInvalidConfiguration;
  const auto* g16 = static_cast<const uint16_t*>(G16);
  auto* w16 = static_cast<uint16_t*>(W16);
  auto kernel = L.ch == 1 ? decoder_kernel<1> : (L.ch == 2 ? decoder_kernel<2> : decoder_kernel<4>);
  MLXTERP_LAUNCH(kernel, grid, L.threads, stream, mode, F, d, pairs, g16, coef, W, w16, m, v, gval, adam, clip, gate,
                 remove_parallel, renorm, norm_partial);
  return cudaGetLastError();
}

cudaError_t encoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* xc16, const float* gval,
                           float* W, void* W16, float* m, float* v, float* b, float* bm, float* bv, AdamArgs adam,
                           AdamArgs bias_adam, const float* clip, const int* gate, float fire_threshold,
                           int* fire_count, float* bdec_partial, float* norm_partial, cudaStream_t stream) {
  if (F <= 0) return cudaSuccess;
  if (d % 8 || d > kMaxDim) return cudaErrorInvalidValue;
  const RowLayout L = row_layout(d);
  // Exactly latent_grid_size blocks: every block writes its b_dec partial row and norm partial.
  const int grid = latent_grid_size(d);
  if (grid <= 0) return cudaErrorInvalidConfiguration;
  const auto* x = static_cast<const uint16_t*>(xc16);
  auto* w16 = static_cast<uint16_t*>(W16);
  auto kernel = L.ch == 1 ? encoder_kernel<1> : (L.ch == 2 ? encoder_kernel<2> : encoder_kernel<4>);
  MLXTERP_LAUNCH(kernel, grid, L.threads, stream, mode, F, d, pairs, x, gval, W, w16, m, v, b, bm, bv, adam,
                 bias_adam, clip, gate, fire_threshold, fire_count, bdec_partial, norm_partial);
  return cudaGetLastError();
}

}  // namespace mlxterp::cuda_kernels

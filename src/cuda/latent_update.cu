// The sparse backward and the optimizer, fused per latent. A block owns one latent row at a time (a
// grid-stride loop over latents): it reads the row, its Adam moments and the latent's (token, activation)
// pairs, gathers the pairs' gradient rows (the residuals for W_dec, the centred inputs for W_enc; both
// small enough to stay in L2), forms the row's gradient in registers, and writes the updated row, moments
// and bf16 copy once. Grouping by latent means no atomics: a frequent latent is just a longer loop.
// Memory-bound (26 bytes per parameter; 18 with bf16 moments, stored stochastically rounded): rows are read and written in the split layout (common.cuh), so
// each store fills whole 32-byte sectors (eight consecutive floats per thread made every 16-byte store
// half-fill its sectors: ~1.1 GB more DRAM reads per matrix per step at d=4096, F=131072); the
// streamed rows are evict-first and the gathered gradient rows evict-last in L2; the next row's pair
// offsets are read a row ahead; the decoder needs two block reductions per row (the pair batch's dot
// products with w . w, then the renormalisation), each with two barriers.
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

// g += scale * row (a bf16 row read once, e.g. a dense AuxK gradient row), in this thread's split layout.
template <int CH>
__device__ __forceinline__ void add_row_bf16(const uint16_t* row, int d, float scale, float (&g)[CH][8]) {
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    float v[8];
    gather_split_bf16(row, c, d, l2_evict_first(), v);
#pragma unroll
    for (int i = 0; i < 8; ++i) g[c][i] = fmaf(scale, v[i], g[c][i]);
  }
}

// The pair's gradient-row source: main (token < n_main) or AuxK.
__device__ __forceinline__ int source_of(int tok, int n_main) { return tok < n_main ? 0 : 1; }

// The block's latents' pair ranges [beg, end), each read one row ahead of its use (it is the head of the
// row's dependent chain offsets -> pairs -> gradient rows).
struct PairRanges {
  const int* offsets;
  int F, beg_next = 0, end_next = 0;
  __device__ PairRanges(const LatentPairs& P, int F_) : offsets(P.offsets), F(F_) {
    if (int(blockIdx.x) < F) {
      beg_next = offsets[blockIdx.x];
      end_next = offsets[blockIdx.x + 1];
    }
  }
  // Row f's range; fetches that of the block's next row, f + gridDim.x.
  __device__ void take(int f, int& beg, int& end) {
    beg = beg_next;
    end = end_next;
    const int fn = f + int(gridDim.x);
    if (fn < F) {
      beg_next = offsets[fn];
      end_next = offsets[fn + 1];
    }
  }
};

// This thread's elements of a weight row (split layout) into w; g (the row's gradient) zeroed.
template <int CH>
__device__ __forceinline__ void start_row(const float* row, int d, float (&w)[CH][8], float (&g)[CH][8]) {
#pragma unroll
  for (int c = 0; c < CH; ++c) {
#pragma unroll
    for (int i = 0; i < 8; ++i) g[c][i] = 0.f;
    load_split_stream(row, c, d, w[c]);
  }
}

// Adam moments of this thread's elements of row `row`: float32, or bf16 (BF) stored stochastically rounded.
template <bool BF>
__device__ __forceinline__ void load_moments(const MomentArgs& mo, int64_t row, int c, int d, float m[8],
                                             float v[8]) {
  if constexpr (BF) {
    load_split_bf16_stream(static_cast<const uint16_t*>(mo.m) + row, c, d, m);
    load_split_bf16_stream(static_cast<const uint16_t*>(mo.v) + row, c, d, v);
  } else {
    load_split_stream(static_cast<const float*>(mo.m) + row, c, d, m);
    load_split_stream(static_cast<const float*>(mo.v) + row, c, d, v);
  }
}
template <bool BF>
__device__ __forceinline__ void store_moments(const MomentArgs& mo, int64_t row, int c, int d, const float m[8],
                                              const float v[8]) {
  if constexpr (BF) {
    store_split_moments_bf16(static_cast<uint16_t*>(mo.m), static_cast<uint16_t*>(mo.v), row, c, d, m, v, mo.seed);
  } else {
    store_split_stream(static_cast<float*>(mo.m) + row, c, d, m);
    store_split_stream(static_cast<float*>(mo.v) + row, c, d, v);
  }
}

template <int CH, bool BF>
__global__ void __launch_bounds__(512, min_blocks<CH>())
    decoder_kernel(LatentMode mode, int F, int d, LatentPairs P, const uint16_t* __restrict__ G16,
                   const float* __restrict__ coef_p, float* __restrict__ W, uint16_t* __restrict__ W16,
                   MomentArgs mo, float* __restrict__ gval, AdamArgs adam,
                   const float* __restrict__ clip_p, const int* __restrict__ gate, bool remove_parallel,
                   bool renorm, float* __restrict__ norm_partial, DenseRows dense) {
  constexpr int NR = kPairBatch + 1;  // the pair batch's dot products + w . w
  __shared__ float s_pairs[33 * NR];
  __shared__ float s_norm[33];
  __shared__ float s_row[33 * 2];  // the row's g . w and w . w (its own smem: see block_sum_2sync)
  const int t = threadIdx.x;
  const float coef[2] = {coef_p[0], coef_p[1]};
  const float clip = clip_p ? *clip_p : 1.f;
  const bool update = mode != LatentMode::NormOnly && (!gate || *gate != 0);
  const bool want_gval = mode != LatentMode::UpdateOnly;
  const uint64_t keep = l2_evict_last();
  float nacc = 0.f;

  PairRanges ranges(P, F);
  for (int f = blockIdx.x; f < F; f += gridDim.x) {
    const int64_t row = int64_t(f) * d;
    int beg, end;
    ranges.take(f, beg, end);
    float w[CH][8], g[CH][8];
    start_row<CH>(W + row, d, w, g);

    // Gradient: g = sum over the latent's pairs of coef * a * G[n]. The block reduction of each batch of
    // pairs gives their dot products G[n] . w (the activations' gradients) and, on the first batch, w . w;
    // g . w (for the parallel-gradient removal) is the coef * a weighted sum of those dots.
    float gw = 0.f, ww = 0.f;
    for (int p0 = beg; p0 < end; p0 += kPairBatch) {
      const int cnt = min(kPairBatch, end - p0);
      float red[NR];
#pragma unroll
      for (int q = 0; q < kPairBatch; ++q) {
        red[q] = 0.f;
        int n = 0;
        float a = 0.f;
        if (q < cnt) unpack_pair(P.sorted[p0 + q], n, a);
        if (a != 0.f) {  // a zero activation adds nothing and its gval is never used (relu' = 0)
          const float ca = coef[source_of(n, P.n_main)] * a;
          const uint16_t* gr = G16 + int64_t(n) * d;
#pragma unroll
          for (int c = 0; c < CH; ++c) {
            float gv[8];
            gather_split_bf16(gr, c, d, keep, gv);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              red[q] = fmaf(gv[i], w[c][i], red[q]);
              g[c][i] = fmaf(ca, gv[i], g[c][i]);
            }
          }
        }
      }
      // Per pair batch, a block reduction gives the pairs' dot products G[n] . w: needed for gval, and then
      // also giving g . w. Without gval (UpdateOnly), or with a dense row added, g . w and w . w come from
      // one reduction of the finished row (below): an AuxK latent can have hundreds of pairs.
      if (!want_gval) continue;
      red[kPairBatch] = 0.f;
      if (p0 == beg && remove_parallel) {
#pragma unroll
        for (int c = 0; c < CH; ++c)
#pragma unroll
          for (int i = 0; i < 8; ++i) red[kPairBatch] = fmaf(w[c][i], w[c][i], red[kPairBatch]);
      }
      block_sum_2sync<NR>(red, s_pairs);
      if (p0 == beg) ww = red[kPairBatch];
      float mine = 0.f;
#pragma unroll
      for (int q = 0; q < kPairBatch; ++q) {
        if (q == t) mine = red[q];
        if (remove_parallel && q < cnt) {
          int n;
          float a;
          unpack_pair(P.sorted[p0 + q], n, a);
          gw = fmaf(coef[source_of(n, P.n_main)] * a, red[q], gw);
        }
      }
      if (want_gval && t < cnt) {
        int n;
        float a;
        unpack_pair(P.sorted[p0 + t], n, a);
        gval[p0 + t] = coef[source_of(n, P.n_main)] * mine;
      }
    }

    // Dead latent done densely: its AuxK gradient row (a block-uniform branch).
    const int slot = dense.slot ? dense.slot[f] : -1;
    if (slot >= 0) add_row_bf16<CH>(dense.dec + int64_t(slot) * d, d, coef[1], g);
    const bool has_grad = end > beg || slot >= 0;
    if (remove_parallel && has_grad && (!want_gval || slot >= 0)) {
      float r2[2] = {0.f, 0.f};
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          r2[0] = fmaf(g[c][i], w[c][i], r2[0]);
          r2[1] = fmaf(w[c][i], w[c][i], r2[1]);
        }
      block_sum_2sync<2>(r2, s_row);
      gw = r2[0];
      ww = r2[1];
    }
    if (remove_parallel && has_grad) {
      const float pd = gw / fmaxf(ww, 1e-24f);
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
    float m[CH][8], v[CH][8];
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      load_moments<BF>(mo, row, c, d, m[c], v[c]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {  // elements past d: w = g = m = v = 0 stay 0 and are not stored
        w[c][i] = adam_update(w[c][i], g[c][i] * clip, m[c][i], v[c][i], adam);
        n2 = fmaf(w[c][i], w[c][i], n2);
      }
    }
    if (renorm) {
      float r[1] = {n2};
      block_sum_2sync<1>(r, s_norm);
      const float s = 1.f / fmaxf(sqrtf(r[0]), 1e-12f);
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) w[c][i] *= s;
    }
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      store_split_stream(W + row, c, d, w[c]);
      store_moments<BF>(mo, row, c, d, m[c], v[c]);
      store_split_bf16_stream(W16 + row, c, d, w[c]);
    }
  }
  if (mode != LatentMode::UpdateOnly) {
    __syncthreads();  // block_sum1 reuses s_pairs: a barrier, rather than relying on block_sum_2sync's layout
    nacc = block_sum1(nacc, s_pairs);
    if (t == 0) norm_partial[blockIdx.x] = nacc;
  }
}

template <int CH, bool BF>
__global__ void __launch_bounds__(512, min_blocks<CH>())
    encoder_kernel(LatentMode mode, int F, int d, LatentPairs P, const uint16_t* __restrict__ xc16,
                   const float* __restrict__ gval, float* __restrict__ W, uint16_t* __restrict__ W16,
                   MomentArgs mo, float* __restrict__ b, float* __restrict__ bm,
                   float* __restrict__ bv, AdamArgs adam, AdamArgs bias_adam, const float* __restrict__ clip_p,
                   const int* __restrict__ gate, float fire_threshold, int* __restrict__ fire_count,
                   float* __restrict__ bdec_partial, float* __restrict__ norm_partial, DenseRows dense) {
  __shared__ float s_red[34];
  const int t = threadIdx.x;
  const float clip = clip_p ? *clip_p : 1.f;
  const bool update = mode != LatentMode::NormOnly && (!gate || *gate != 0);
  const bool first_pass = mode != LatentMode::UpdateOnly;  // b_dec partials and norms
  const uint64_t keep = l2_evict_last();
  float bacc[CH][8];
#pragma unroll
  for (int c = 0; c < CH; ++c)
#pragma unroll
    for (int i = 0; i < 8; ++i) bacc[c][i] = 0.f;
  float nacc = 0.f;

  PairRanges ranges(P, F);
  for (int f = blockIdx.x; f < F; f += gridDim.x) {
    const int64_t row = int64_t(f) * d;
    int beg, end;
    ranges.take(f, beg, end);
    float w[CH][8], g[CH][8];
    start_row<CH>(W + row, d, w, g);
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
              float xv[8];
              gather_split_bf16(xr, c, d, keep, xv);
#pragma unroll
              for (int i = 0; i < 8; ++i) g[c][i] = fmaf(gp, xv[i], g[c][i]);
            }
          }
        }
      }
    }
    if (const int slot = dense.slot ? dense.slot[f] : -1; slot >= 0) {  // dead latent done densely
      add_row_bf16<CH>(dense.enc + int64_t(slot) * d, d, 1.f, g);
      gb += dense.gb[slot];
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
      float m[8], v[8];
      load_moments<BF>(mo, row, c, d, m, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) w[c][i] = adam_update(w[c][i], g[c][i] * clip, m[i], v[i], adam);
      store_split_stream(W + row, c, d, w[c]);
      store_moments<BF>(mo, row, c, d, m, v);
      store_split_bf16_stream(W16 + row, c, d, w[c]);
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
    for (int c = 0; c < CH; ++c) store_split(bdec_partial + int64_t(blockIdx.x) * d, c, d, bacc[c]);
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
  // One grid for every variant: the fewest blocks per SM any of them can keep resident.
  auto fewest = [&](auto... kernels) {
    int n = 1 << 20;
    for (const void* k : {reinterpret_cast<const void*>(kernels)...}) {
      int b = 1;
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, k, L.threads, 0);
      n = std::min(n, b);
    }
    return n;
  };
  switch (L.ch) {
    case 1:
      per_sm_dec = fewest(decoder_kernel<1, false>, decoder_kernel<1, true>);
      per_sm_enc = fewest(encoder_kernel<1, false>, encoder_kernel<1, true>);
      break;
    case 2:
      per_sm_dec = fewest(decoder_kernel<2, false>, decoder_kernel<2, true>);
      per_sm_enc = fewest(encoder_kernel<2, false>, encoder_kernel<2, true>);
      break;
    default:
      per_sm_dec = fewest(decoder_kernel<4, false>, decoder_kernel<4, true>);
      per_sm_enc = fewest(encoder_kernel<4, false>, encoder_kernel<4, true>);
      break;
  }
  const int per_sm = std::max(1, std::min(per_sm_dec, per_sm_enc));
  cache = {dev, d, std::max(1, sms) * per_sm};
  return cache.grid;
}

cudaError_t decoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* G16, const float* coef,
                           float* W, void* W16, MomentArgs mo, float* gval, AdamArgs adam, const float* clip,
                           const int* gate, bool remove_parallel, bool renorm, float* norm_partial,
                           DenseRows dense, cudaStream_t stream) {
  if (F <= 0) return cudaSuccess;
  if (d % 8 || d > kMaxDim) return cudaErrorInvalidValue;
  const RowLayout L = row_layout(d);
  // Exactly latent_grid_size blocks: each writes its norm partial (blocks past F write zeros).
  const int grid = latent_grid_size(d);
  if (grid <= 0) return cudaErrorInvalidConfiguration;
  const auto* g16 = static_cast<const uint16_t*>(G16);
  auto* w16 = static_cast<uint16_t*>(W16);
  auto kernel = mo.bf16 ? (L.ch == 1 ? decoder_kernel<1, true> : (L.ch == 2 ? decoder_kernel<2, true> : decoder_kernel<4, true>))
                        : (L.ch == 1 ? decoder_kernel<1, false>
                                     : (L.ch == 2 ? decoder_kernel<2, false> : decoder_kernel<4, false>));
  MLXTERP_LAUNCH(kernel, grid, L.threads, stream, mode, F, d, pairs, g16, coef, W, w16, mo, gval, adam, clip, gate,
                 remove_parallel, renorm, norm_partial, dense);
  return cudaGetLastError();
}

cudaError_t encoder_update(LatentMode mode, int F, int d, LatentPairs pairs, const void* xc16, const float* gval,
                           float* W, void* W16, MomentArgs mo, float* b, float* bm, float* bv, AdamArgs adam,
                           AdamArgs bias_adam, const float* clip, const int* gate, float fire_threshold,
                           int* fire_count, float* bdec_partial, float* norm_partial, DenseRows dense,
                           cudaStream_t stream) {
  if (F <= 0) return cudaSuccess;
  if (d % 8 || d > kMaxDim) return cudaErrorInvalidValue;
  const RowLayout L = row_layout(d);
  // Exactly latent_grid_size blocks: every block writes its b_dec partial row and norm partial.
  const int grid = latent_grid_size(d);
  if (grid <= 0) return cudaErrorInvalidConfiguration;
  const auto* x = static_cast<const uint16_t*>(xc16);
  auto* w16 = static_cast<uint16_t*>(W16);
  auto kernel = mo.bf16 ? (L.ch == 1 ? encoder_kernel<1, true> : (L.ch == 2 ? encoder_kernel<2, true> : encoder_kernel<4, true>))
                        : (L.ch == 1 ? encoder_kernel<1, false>
                                     : (L.ch == 2 ? encoder_kernel<2, false> : encoder_kernel<4, false>));
  MLXTERP_LAUNCH(kernel, grid, L.threads, stream, mode, F, d, pairs, x, gval, W, w16, mo, b, bm, bv, adam,
                 bias_adam, clip, gate, fire_threshold, fire_count, bdec_partial, norm_partial, dense);
  return cudaGetLastError();
}

}  // namespace mlxterp::cuda_kernels

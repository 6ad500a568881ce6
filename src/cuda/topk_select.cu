// Top-k selection over the encoder output: per row (TopK) and over the whole batch (BatchTopK).
//
// Keys: relu(pre + b_enc) as float32 bits. Non-negative floats order like their bit patterns, so a radix
// select on the bits finds the k-th largest: 12 bits (30..19), then 12 (18..7), then 7 (6..0); zeros are
// counted apart (no shared-memory atomics on the hottest bin). The per-row kernel reads the row twice in the
// common case (histogram, then collect: elements above the chosen bin are in, the bin's elements are
// sorted in shared memory); a bin too full to sort goes one level deeper. Ties go to the lower latent.
#include "cuda/common.cuh"

namespace mlxterp::cuda_kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kBins = 4096;  // 12-bit digits; find_bin gives each of the 512 threads 8 bins
constexpr int kUnroll = 4;
static_assert(kBins == 8 * kThreads, "find_bin assumes 8 bins per thread");

// Candidates sorted in shared memory: at least 2048, and at least k (the buffer is reused for the final sort).
__host__ __device__ inline int cand_capacity(int k) {
  int c = 2048;
  while (c < k) c <<= 1;
  return c;
}
// Dynamic shared memory of topk_rows_kernel: histogram, candidates (u64), selections (idx + key).
inline size_t topk_smem_bytes(int k) {
  return kBins * sizeof(int) + size_t(cand_capacity(k)) * sizeof(unsigned long long) + size_t(k) * 8;
}

using u64 = unsigned long long;

__device__ __forceinline__ int lvl_shift(int l) { return l == 0 ? 19 : (l == 1 ? 7 : 0); }
__device__ __forceinline__ unsigned lvl_dmask(int l) { return l == 2 ? 0x7Fu : 0xFFFu; }
// Bits fixed by the levels before level l.
__device__ __forceinline__ unsigned lvl_pmask(int l) { return l == 0 ? 0u : (l == 1 ? 0xFFF80000u : 0xFFFFFF80u); }

__device__ __forceinline__ unsigned relu_key(float pre, float b) {
  const float v = pre + b;
  return v > 0.f ? __float_as_uint(v) : 0u;  // NaN and -0 count as 0
}

// mask (optional, [F] bytes): latents with mask[f] == 0 get key 0, i.e. are never chosen over a positive key.
__device__ __forceinline__ void apply_mask(const uint8_t* mask, int f0, unsigned key[8]) {
  if (!mask) return;
  const uint2 m = *reinterpret_cast<const uint2*>(mask + f0);  // 8 flags (f0 % 8 == 0)
  const uint32_t w[2] = {m.x, m.y};
#pragma unroll
  for (int i = 0; i < 8; ++i)
    if (((w[i >> 2] >> ((i & 3) * 8)) & 0xffu) == 0) key[i] = 0;
}

// fn(f, key) for every element of [begin, end) this thread owns: 8 consecutive per 16-byte load, the
// block striding by 8 * blockDim.x. begin, end multiples of 8.
template <class Fn>
__device__ __forceinline__ void for_each_key(const uint16_t* row, const float* b_enc, const uint8_t* mask, int begin,
                                             int end, Fn&& fn) {
  const int stride = blockDim.x * 8;
  for (int base = begin + threadIdx.x * 8; base < end; base += stride * kUnroll) {
    // The encoder output (from DRAM) is loaded kUnroll words ahead; the bias (every block reads it, so
    // it sits in L1/L2) only when it is needed, to keep the registers for loads in flight.
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int f = base + u * stride;
      if (f < end) raw[u] = ld_ro(row + f);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int f = base + u * stride;
      if (f < end) {
        float p[8], b[8];
        unsigned key[8];
        load_f8_ro(b_enc + f, b);
        unpack_bf16x8(raw[u], p);
#pragma unroll
        for (int i = 0; i < 8; ++i) key[i] = relu_key(p[i], b[i]);
        apply_mask(mask, f, key);
#pragma unroll
        for (int i = 0; i < 8; ++i) fn(f + i, key[i]);
      }
    }
  }
}

// The 8 keys of [f0, f0 + 8) (f0 < F).
__device__ __forceinline__ void keys8(const uint16_t* row, const float* b_enc, const uint8_t* mask, int f0,
                                     unsigned key[8]) {
  float p[8], b[8];
  unpack_bf16x8(ld_ro(row + f0), p);
  load_f8_ro(b_enc + f0, b);
#pragma unroll
  for (int i = 0; i < 8; ++i) key[i] = relu_key(p[i], b[i]);
  apply_mask(mask, f0, key);
}

// The bin holding the needed-th largest key: pick[0] = bin, pick[1] = count in higher bins (< needed),
// pick[2] = count in the bin (above + count >= needed). Needs sum(hist) >= needed. Ends with a barrier.
__device__ void find_bin(const int* hist, int needed, int* s_scan, int* pick) {
  const int t = threadIdx.x;
  int c[8], s = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    c[i] = hist[t * 8 + i];
    s += c[i];
  }
  int total;
  const int incl = block_inclusive_scan(s, s_scan, &total);
  int run = total - incl;  // keys in the bins of higher threads
#pragma unroll
  for (int i = 7; i >= 0; --i) {
    if (run < needed && run + c[i] >= needed) {
      pick[0] = t * 8 + i;
      pick[1] = run;
      pick[2] = c[i];
    }
    run += c[i];
  }
  __syncthreads();
}

// Sorts a[0, n) (n a power of two) in shared memory.
__device__ void bitonic_sort(u64* a, int n, bool descending) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool up = ((i & size) == 0) != descending;
          const u64 x = a[i], y = a[j];
          if ((x > y) == up) {
            a[i] = y;
            a[j] = x;
          }
        }
      }
      __syncthreads();
    }
  }
}

__device__ __forceinline__ int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Appends, in latent order, the first r keys equal to `target` to sel[base, base + r). Ends with a barrier.
__device__ void ordered_take(const uint16_t* row, const float* b_enc, const uint8_t* mask, int F, unsigned target,
                             int r, int base, int* sel_idx, unsigned* sel_key, int* s_scan) {
  int taken = 0;
  for (int tile = 0; tile < F && taken < r; tile += blockDim.x * 8) {
    const int f0 = tile + threadIdx.x * 8;
    unsigned bits = 0;
    if (f0 < F) {
      unsigned key[8];
      keys8(row, b_enc, mask, f0, key);
#pragma unroll
      for (int i = 0; i < 8; ++i) bits |= (key[i] == target ? 1u : 0u) << i;
    }
    const int cnt = __popc(bits);
    int total;
    int pos = taken + block_inclusive_scan(cnt, s_scan, &total) - cnt;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if ((bits >> i) & 1u) {
        if (pos < r) {
          sel_idx[base + pos] = f0 + i;
          sel_key[base + pos] = target;
        }
        ++pos;
      }
    }
    taken += total;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads, 2)
    topk_rows_kernel(const uint16_t* __restrict__ pre, int64_t ld, const float* __restrict__ b_enc,
                     const uint8_t* __restrict__ mask, const int* __restrict__ enabled, int F, int k, int out_row0,
                     int* __restrict__ latents, float* __restrict__ values, int* __restrict__ tok,
                     const float* __restrict__ guess, float* __restrict__ kth_out) {
  MLXTERP_DYNAMIC_SMEM(smem);
  const int kCand = cand_capacity(k);
  int* s_hist = reinterpret_cast<int*>(smem);                                      // [kBins]
  u64* s_cand = reinterpret_cast<u64*>(smem + kBins * sizeof(int));                // [kCand]
  int* s_sel_idx = reinterpret_cast<int*>(s_cand + kCand);                         // [k]
  unsigned* s_sel_key = reinterpret_cast<unsigned*>(s_sel_idx + k);                // [k]
  __shared__ int s_scan[33];
  __shared__ int s_pick[3];
  __shared__ int s_nsel, s_ncand;
  __shared__ unsigned s_kth;

  const int t = threadIdx.x;
  const int r = out_row0 + int(blockIdx.x);
  const int64_t o = int64_t(r) * k;
  if (enabled && *enabled == 0) {
    // Nothing to select (e.g. AuxK with no dead latent): the lowest k latents, all zero.
    for (int i = t; i < k; i += blockDim.x) {
      latents[o + i] = i;
      values[o + i] = 0.f;
      tok[o + i] = r;
    }
    if (kth_out && t == 0) kth_out[blockIdx.x] = 0.f;
    return;
  }
  const uint16_t* row = pre + int64_t(blockIdx.x) * ld;
  auto push = [&](int f, unsigned key) {
    const int slot = atomicAdd(&s_nsel, 1);
    s_sel_idx[slot] = f;
    s_sel_key[slot] = key;
  };

  for (int i = t; i < kBins; i += blockDim.x) s_hist[i] = 0;
  if (t == 0) {
    s_nsel = 0;
    s_ncand = 0;
    s_kth = ~0u;
  }
  __syncthreads();

  // With a guess: one pass keeps every key above it. At least k of them, and few enough to sort in shared
  // memory, means they hold the whole answer; otherwise the radix select below runs as without a guess.
  bool done = false;
  if (guess) {
    const unsigned tau = __float_as_uint(fmaxf(*guess, 0.f));
    for_each_key(row, b_enc, mask, 0, F, [&](int f, unsigned key) {
      if (key > tau) {
        const int c = atomicAdd(&s_ncand, 1);
        if (c < kCand) s_cand[c] = (u64(key) << 32) | u64(~unsigned(f));
      }
    });
    __syncthreads();
    const int nc = s_ncand;
    if (nc >= k && nc <= kCand) {
      const int n2 = next_pow2(nc);
      for (int i = nc + t; i < n2; i += blockDim.x) s_cand[i] = 0ull;
      __syncthreads();
      bitonic_sort(s_cand, n2, /*descending=*/true);
      for (int i = t; i < k; i += blockDim.x) {
        const u64 c = s_cand[i];
        s_sel_idx[i] = int(~unsigned(c & 0xffffffffull));
        s_sel_key[i] = unsigned(c >> 32);
      }
      done = true;
    }
    __syncthreads();
    if (t == 0) s_ncand = 0;
    __syncthreads();
  }

  if (!done) {
    // Level-0 histogram of the positive keys.
    int npos = 0;
    for_each_key(row, b_enc, mask, 0, F, [&](int, unsigned key) {
      if (key) {
        atomicAdd(&s_hist[key >> 19], 1);
        ++npos;
      }
    });
    int total_pos;
    block_inclusive_scan(npos, s_scan, &total_pos);

    if (total_pos <= k) {
      // Every positive key, then the lowest latents among the zeros.
      for_each_key(row, b_enc, mask, 0, F, [&](int f, unsigned key) {
        if (key) push(f, key);
      });
      __syncthreads();
      ordered_take(row, b_enc, mask, F, 0u, k - total_pos, total_pos, s_sel_idx, s_sel_key, s_scan);
    } else {
      int needed = k;
      unsigned prefix = 0;
      for (int level = 0;; ++level) {
        find_bin(s_hist, needed, s_scan, s_pick);
        const unsigned bin = unsigned(s_pick[0]);
        const int above = s_pick[1], eq = s_pick[2];
        const int sh = lvl_shift(level);
        const unsigned pm = lvl_pmask(level), dm = lvl_dmask(level);
        const unsigned new_prefix = prefix | (bin << sh);
        if (eq <= kCand) {
          // Above the bin: in. In the bin: candidates, sorted by (key desc, latent asc).
          for_each_key(row, b_enc, mask, 0, F, [&](int f, unsigned key) {
            if (key && (key & pm) == prefix) {
              const unsigned dg = (key >> sh) & dm;
              if (dg > bin) {
                push(f, key);
              } else if (dg == bin) {
                const int c = atomicAdd(&s_ncand, 1);
                s_cand[c] = (u64(key) << 32) | u64(~unsigned(f));
              }
            }
          });
          __syncthreads();
          const int nc = s_ncand, n2 = next_pow2(nc);
          for (int i = nc + t; i < n2; i += blockDim.x) s_cand[i] = 0ull;
          __syncthreads();
          bitonic_sort(s_cand, n2, /*descending=*/true);
          const int take = needed - above, base = s_nsel;
          for (int i = t; i < take; i += blockDim.x) {
            const u64 c = s_cand[i];
            s_sel_idx[base + i] = int(~unsigned(c & 0xffffffffull));
            s_sel_key[base + i] = unsigned(c >> 32);
          }
          break;
        }
        if (level == 2) {
          // More than kCand identical keys (== new_prefix): the lowest latents among them.
          for_each_key(row, b_enc, mask, 0, F, [&](int f, unsigned key) {
            if (key && (key & pm) == prefix && ((key >> sh) & dm) > bin) push(f, key);
          });
          __syncthreads();
          const int base = s_nsel;
          ordered_take(row, b_enc, mask, F, new_prefix, needed - above, base, s_sel_idx, s_sel_key, s_scan);
          break;
        }
        // One level deeper: take what is above the bin, histogram the next digit inside it.
        for (int i = t; i < kBins; i += blockDim.x) s_hist[i] = 0;
        __syncthreads();
        const int sh2 = lvl_shift(level + 1);
        const unsigned dm2 = lvl_dmask(level + 1);
        for_each_key(row, b_enc, mask, 0, F, [&](int f, unsigned key) {
          if (key && (key & pm) == prefix) {
            const unsigned dg = (key >> sh) & dm;
            if (dg > bin)
              push(f, key);
            else if (dg == bin)
              atomicAdd(&s_hist[(key >> sh2) & dm2], 1);
          }
        });
        __syncthreads();
        needed -= above;
        prefix = new_prefix;
      }
    }
  }
  __syncthreads();

  // The k selections sorted by latent; the smallest selected key is the row's k-th largest.
  const int n2 = next_pow2(k);
  for (int i = t; i < n2; i += blockDim.x) {
    s_cand[i] = i < k ? (u64(unsigned(s_sel_idx[i])) << 32) | u64(s_sel_key[i]) : ~0ull;
    if (kth_out && i < k) atomicMin(&s_kth, s_sel_key[i]);
  }
  __syncthreads();
  if (kth_out && t == 0) kth_out[blockIdx.x] = __uint_as_float(s_kth);
  bitonic_sort(s_cand, n2, /*descending=*/false);
  for (int i = t; i < k; i += blockDim.x) {
    const u64 c = s_cand[i];
    latents[o + i] = int(c >> 32);
    values[o + i] = __uint_as_float(unsigned(c & 0xffffffffull));
    tok[o + i] = r;
  }
}

// ---- BatchTopK -------------------------------------------------------------------------------------------
// state: [0] prefix bits, [1] still needed, [2] done, [3] positive count, [4] threshold key, [5] keys == T to take

__global__ void bt_init_kernel(int* state, int64_t total_k) {
  if (threadIdx.x == 0) {
    for (int i = 0; i < 8; ++i) state[i] = 0;
    state[1] = int(total_k);
  }
}

__global__ void __launch_bounds__(kThreads) bt_hist_kernel(const uint16_t* __restrict__ pre, int64_t ld,
                                                           const float* __restrict__ b_enc, int F, int segs,
                                                           int seg_len, const int* state, int level,
                                                           unsigned* __restrict__ ghist, int* npos_out) {
  if (state[2]) return;  // decided at an earlier level
  __shared__ int s_hist[kBins];
  __shared__ int s_scan[33];
  for (int i = threadIdx.x; i < kBins; i += blockDim.x) s_hist[i] = 0;
  __syncthreads();
  const int row = blockIdx.x / segs, seg = blockIdx.x % segs;
  const int begin = seg * seg_len, end = min(F, begin + seg_len);
  const unsigned prefix = unsigned(state[0]), pm = lvl_pmask(level), dm = lvl_dmask(level);
  const int sh = lvl_shift(level);
  int npos = 0;
  for_each_key(pre + int64_t(row) * ld, b_enc, nullptr, begin, end, [&](int, unsigned key) {
    if (key && (key & pm) == prefix) {
      atomicAdd(&s_hist[(key >> sh) & dm], 1);
      ++npos;
    }
  });
  int total;
  block_inclusive_scan(npos, s_scan, &total);  // also the barrier after the atomics
  for (int i = threadIdx.x; i < kBins; i += blockDim.x)
    if (s_hist[i]) atomicAdd(&ghist[i], unsigned(s_hist[i]));
  if (level == 0 && threadIdx.x == 0 && total) atomicAdd(npos_out, total);
}

__global__ void __launch_bounds__(kThreads) bt_pick_kernel(unsigned* ghist, int* state, int level) {
  __shared__ int s_scan[33];
  __shared__ int s_pick[3];
  if (state[2]) return;
  const int needed = state[1];
  if (level == 0 && state[3] <= needed) {
    // Every positive key and the first (needed - positives) zeros.
    __syncthreads();
    if (threadIdx.x == 0) {
      state[4] = 0;
      state[5] = needed - state[3];
      state[2] = 1;
    }
  } else {
    if (threadIdx.x == 0) s_pick[0] = s_pick[1] = s_pick[2] = 0;
    __syncthreads();
    find_bin(reinterpret_cast<const int*>(ghist), needed, s_scan, s_pick);
    if (threadIdx.x == 0) {
      const unsigned new_prefix = unsigned(state[0]) | (unsigned(s_pick[0]) << lvl_shift(level));
      if (level == 2) {
        state[4] = int(new_prefix);
        state[5] = needed - s_pick[1];
        state[2] = 1;
      } else {
        state[0] = int(new_prefix);
        state[1] = needed - s_pick[1];
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBins; i += blockDim.x) ghist[i] = 0u;
}

__global__ void __launch_bounds__(kThreads) bt_count_kernel(const uint16_t* __restrict__ pre, int64_t ld,
                                                            const float* __restrict__ b_enc, int F,
                                                            const int* state, int* cnt_gt, int* cnt_eq) {
  __shared__ int s_scan[33];
  const unsigned T = unsigned(state[4]);
  int gt = 0, eq = 0;
  for_each_key(pre + int64_t(blockIdx.x) * ld, b_enc, nullptr, 0, F, [&](int, unsigned key) {
    gt += key > T;
    eq += key == T;
  });
  int tg, te;
  block_inclusive_scan(gt, s_scan, &tg);
  block_inclusive_scan(eq, s_scan, &te);
  if (threadIdx.x == 0) {
    cnt_gt[blockIdx.x] = tg;
    cnt_eq[blockIdx.x] = te;
  }
}

__global__ void __launch_bounds__(kThreads) bt_collect_kernel(const uint16_t* __restrict__ pre, int64_t ld,
                                                              const float* __restrict__ b_enc, int F,
                                                              const int* state, const int64_t* row_ptr,
                                                              const int64_t* take_eq, int* latents, float* values,
                                                              int* tok) {
  __shared__ int s_scan[33];
  const int n = blockIdx.x;
  const uint16_t* row = pre + int64_t(n) * ld;
  const unsigned T = unsigned(state[4]);
  const int64_t out = row_ptr[n];
  const int take = int(take_eq[n]);
  int gt_base = 0, eq_base = 0;
  for (int tile = 0; tile < F; tile += blockDim.x * 8) {
    const int f0 = tile + threadIdx.x * 8;
    unsigned key[8];
    int cg = 0, ce = 0;
    if (f0 < F) {
      keys8(row, b_enc, nullptr, f0, key);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        cg += key[i] > T;
        ce += key[i] == T;
      }
    }
    const int packed = cg | (ce << 16);  // per-tile totals <= 8 * 1024 fit 16 bits
    int total;
    const int excl = block_inclusive_scan(packed, s_scan, &total) - packed;
    int eq_seen = eq_base + (excl >> 16);
    int64_t pos = out + gt_base + (excl & 0xffff) + min(eq_seen, take);
    if (f0 < F) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        bool in = key[i] > T;
        if (key[i] == T) in = eq_seen++ < take;
        if (in) {
          latents[pos] = f0 + i;
          values[pos] = __uint_as_float(key[i]);
          tok[pos] = n;
          ++pos;
        }
      }
    }
    gt_base += total & 0xffff;
    eq_base += total >> 16;
  }
}

}  // namespace

cudaError_t topk_rows(const void* pre, int64_t ld, const float* b_enc, int rows, int F, int k, int out_row0,
                      int* latents, float* values, int* tok, cudaStream_t stream, const uint8_t* mask,
                      const int* enabled, const float* guess, float* kth_out) {
  if (rows <= 0) return cudaSuccess;
  if (k < 1 || k > kTopkMaxK || k > F || F % 8 || ld % 8) return cudaErrorInvalidValue;
  const size_t smem = topk_smem_bytes(k);
  if (smem + 1024 > 48 * 1024) {  // past the default limit (static shared memory counts too)
    const cudaError_t err =
        cudaFuncSetAttribute(topk_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  MLXTERP_LAUNCH_SMEM(topk_rows_kernel, rows, kThreads, smem, stream, static_cast<const uint16_t*>(pre), ld, b_enc,
                      mask, enabled, F, k, out_row0, latents, values, tok, guess, kth_out);
  return cudaGetLastError();
}

cudaError_t batch_topk_threshold(const void* pre, int64_t ld, const float* b_enc, int N, int F, int64_t total_k,
                                 int* state, unsigned* hist, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (F % 8 || ld % 8 || total_k > int64_t(N) * F || total_k >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(hist, 0, kBins * sizeof(unsigned), stream);
  if (err != cudaSuccess) return err;
  MLXTERP_LAUNCH(bt_init_kernel, 1, 32, stream, state, total_k);
  // Each block takes a 16K-latent segment of one row.
  const int seg_len = 16384, segs = (F + seg_len - 1) / seg_len;
  const int64_t blocks = int64_t(N) * segs;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  const auto* p = static_cast<const uint16_t*>(pre);
  for (int level = 0; level < 3; ++level) {
    MLXTERP_LAUNCH(bt_hist_kernel, unsigned(blocks), kThreads, stream, p, ld, b_enc, F, segs, seg_len, state, level,
                   hist, state + 3);
    MLXTERP_LAUNCH(bt_pick_kernel, 1, kThreads, stream, hist, state, level);
  }
  return cudaGetLastError();
}

cudaError_t batch_topk_count(const void* pre, int64_t ld, const float* b_enc, int N, int F, const int* state,
                             int* cnt_gt, int* cnt_eq, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  MLXTERP_LAUNCH(bt_count_kernel, N, kThreads, stream, static_cast<const uint16_t*>(pre), ld, b_enc, F, state,
                 cnt_gt, cnt_eq);
  return cudaGetLastError();
}

cudaError_t batch_topk_collect(const void* pre, int64_t ld, const float* b_enc, int N, int F, const int* state,
                               const int64_t* row_ptr, const int64_t* take, int* latents, float* values, int* tok,
                               cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  MLXTERP_LAUNCH(bt_collect_kernel, N, kThreads, stream, static_cast<const uint16_t*>(pre), ld, b_enc, F, state,
                 row_ptr, take, latents, values, tok);
  return cudaGetLastError();
}

}  // namespace mlxterp::cuda_kernels

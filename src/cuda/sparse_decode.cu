// Sparse decoder forward (k gathered bf16 rows per token), grouping of (token, latent) pairs by latent,
// and the small element-wise kernels of the step.
#include <algorithm>

#include "cuda/common.cuh"
#ifndef MLXTERP_CUDA_EMULATE
#include <cub/device/device_radix_sort.cuh>
#endif

namespace mlxterp::cuda_kernels {
namespace {

constexpr int kStage = 256;  // (latent, value) pairs staged in shared memory at a time

template <int CH, bool XBF16>
__global__ void __launch_bounds__(512) decode_kernel(int d, int k, const int64_t* __restrict__ row_ptr,
                                                     const int* __restrict__ latents,
                                                     const float* __restrict__ values,
                                                     const uint16_t* __restrict__ W, const float* __restrict__ b_dec,
                                                     const void* __restrict__ x, float* __restrict__ e32,
                                                     uint16_t* __restrict__ e16, float* __restrict__ err2) {
  __shared__ int s_lat[kStage];
  __shared__ float s_val[kStage];
  __shared__ float s_red[34];
  const int n = blockIdx.x, t = threadIdx.x, T = blockDim.x;
  const int64_t beg = row_ptr ? row_ptr[n] : int64_t(n) * k;
  const int64_t end = row_ptr ? row_ptr[n + 1] : beg + k;

  float acc[CH][8];
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int e0 = (c * T + t) * 8;
    if (e0 < d && b_dec) {
      load_f8_ro(b_dec + e0, acc[c]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[c][i] = 0.f;
    }
  }

  for (int64_t p0 = beg; p0 < end; p0 += kStage) {
    const int cnt = int(min(int64_t(kStage), end - p0));
    for (int i = t; i < cnt; i += T) {
      s_lat[i] = latents[p0 + i];
      s_val[i] = values[p0 + i];
    }
    __syncthreads();
    int j = 0;
    for (; j + 4 <= cnt; j += 4) {  // four rows in flight
      uint4 w[4][CH];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const uint16_t* rowp = W + int64_t(s_lat[j + u]) * d;
        const bool zero = s_val[j + u] == 0.f;  // nothing to add (AuxK: mostly zeros): skip the row
#pragma unroll
        for (int c = 0; c < CH; ++c) {
          const int e0 = (c * T + t) * 8;
          w[u][c] = make_uint4(0u, 0u, 0u, 0u);
          if (e0 < d && !zero) w[u][c] = ld_ro(rowp + e0);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const float a = s_val[j + u];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
          const int e0 = (c * T + t) * 8;
          if (e0 < d) {
            float f[8];
            unpack_bf16x8(w[u][c], f);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[c][i] = fmaf(a, f[i], acc[c][i]);
          }
        }
      }
    }
    for (; j < cnt; ++j) {
      const uint16_t* rowp = W + int64_t(s_lat[j]) * d;
      const float a = s_val[j];
      if (a == 0.f) continue;
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        const int e0 = (c * T + t) * 8;
        if (e0 < d) {
          float f[8];
          unpack_bf16x8(ld_ro(rowp + e0), f);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[c][i] = fmaf(a, f[i], acc[c][i]);
        }
      }
    }
    __syncthreads();
  }

  float sq = 0.f;
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int e0 = (c * T + t) * 8;
    if (e0 < d) {
      const int64_t off = int64_t(n) * d + e0;
      float xv[8];
      if constexpr (XBF16)
        unpack_bf16x8(ld_ro(static_cast<const uint16_t*>(x) + off), xv);
      else
        load_f8_ro(static_cast<const float*>(x) + off, xv);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        acc[c][i] -= xv[i];
        sq = fmaf(acc[c][i], acc[c][i], sq);
      }
      store_f8(e32 + off, acc[c]);
      *reinterpret_cast<uint4*>(e16 + off) = pack_bf16x8(acc[c]);
    }
  }
  sq = block_sum1(sq, s_red);
  if (t == 0) err2[n] = sq;
}

template <int CH>
cudaError_t launch_decode(int N, int d, int k, const int64_t* row_ptr, const int* latents, const float* values,
                          const void* W, const float* b_dec, const void* x, bool x_is_bf16, float* e32, void* e16,
                          float* err2, int threads, cudaStream_t stream) {
  const auto* w = static_cast<const uint16_t*>(W);
  auto* o16 = static_cast<uint16_t*>(e16);
  auto kernel = x_is_bf16 ? decode_kernel<CH, true> : decode_kernel<CH, false>;
  MLXTERP_LAUNCH(kernel, N, threads, stream, d, k, row_ptr, latents, values, w, b_dec, x, e32, o16, err2);
  return cudaGetLastError();
}

__global__ void pack_pairs_kernel(const int* tok, const int* latents, const float* values, int n, int tok_offset,
                                  bool sentinel_zero, int F, int* keys, uint64_t* packed) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = values[i];
  packed[i] = (uint64_t(unsigned(tok[i] + tok_offset)) << 32) | uint64_t(__float_as_uint(v));
  keys[i] = sentinel_zero && !(v > 0.f) ? F : latents[i];
}

__global__ void offsets_kernel(const int* __restrict__ keys, int n, int F, int* __restrict__ offsets) {
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  if (f > F) return;
  int lo = 0, hi = n;  // first position with keys[pos] >= f
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (keys[mid] < f)
      lo = mid + 1;
    else
      hi = mid;
  }
  offsets[f] = lo;
}

__global__ void adam_vector_kernel(int n, float* p, float* m, float* v, const float* g, AdamArgs a,
                                   const float* clip, const int* gate) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n || (gate && *gate == 0)) return;
  const float c = clip ? *clip : 1.f;
  float mi = m[i], vi = v[i];
  p[i] = adam_update(p[i], g[i] * c, mi, vi, a);
  m[i] = mi;
  v[i] = vi;
}

__global__ void to_bf16_kernel(const float* __restrict__ src, uint16_t* __restrict__ dst, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float f[8];
    load_f8_stream(src + i * 8, f);
    st_stream_u4(dst + i * 8, pack_bf16x8(f));
  }
}

int key_bits(int F) {  // keys are 0..F (F: the sentinel)
  int bits = 1;
  while ((int64_t(1) << bits) <= F) ++bits;
  return bits;
}

}  // namespace

cudaError_t sparse_decode(int N, int d, int k, const int64_t* row_ptr, const int* latents, const float* values,
                          const void* W, const float* b_dec, const void* x, bool x_is_bf16, float* e32, void* e16,
                          float* err2, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (d % 8 || d > kMaxDim) return cudaErrorInvalidValue;
  const RowLayout L = row_layout(d);
  switch (L.ch) {
    case 1: return launch_decode<1>(N, d, k, row_ptr, latents, values, W, b_dec, x, x_is_bf16, e32, e16, err2, L.threads, stream);
    case 2: return launch_decode<2>(N, d, k, row_ptr, latents, values, W, b_dec, x, x_is_bf16, e32, e16, err2, L.threads, stream);
    default: return launch_decode<4>(N, d, k, row_ptr, latents, values, W, b_dec, x, x_is_bf16, e32, e16, err2, L.threads, stream);
  }
}

cudaError_t pack_pairs(const int* tok, const int* latents, const float* values, int n, int tok_offset,
                       bool sentinel_zero, int F, int* keys, uint64_t* packed, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  MLXTERP_LAUNCH(pack_pairs_kernel, (n + 255) / 256, 256, stream, tok, latents, values, n, tok_offset, sentinel_zero,
                 F, keys, packed);
  return cudaGetLastError();
}

#ifdef MLXTERP_CUDA_EMULATE
size_t sort_pairs_temp_bytes(int, int) { return 1; }

cudaError_t sort_pairs(void*, size_t, const int* keys_in, int* keys_out, const uint64_t* vals_in, uint64_t* vals_out,
                       int n, int, cudaStream_t) {
  return ::mlxterp_emu::stable_sort_pairs(keys_in, keys_out, vals_in, vals_out, n);
}
#else
size_t sort_pairs_temp_bytes(int n, int F) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const unsigned*>(nullptr),
                                  static_cast<unsigned*>(nullptr), static_cast<const uint64_t*>(nullptr),
                                  static_cast<uint64_t*>(nullptr), n, 0, key_bits(F));
  return bytes;
}

cudaError_t sort_pairs(void* temp, size_t temp_bytes, const int* keys_in, int* keys_out, const uint64_t* vals_in,
                       uint64_t* vals_out, int n, int F, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, reinterpret_cast<const unsigned*>(keys_in),
                                         reinterpret_cast<unsigned*>(keys_out), vals_in, vals_out, n, 0,
                                         key_bits(F), stream);
}
#endif

cudaError_t segment_offsets(const int* sorted_keys, int n, int F, int* offsets, cudaStream_t stream) {
  MLXTERP_LAUNCH(offsets_kernel, (F + 1 + 255) / 256, 256, stream, sorted_keys, n, F, offsets);
  return cudaGetLastError();
}

cudaError_t adam_vector(int n, float* p, float* m, float* v, const float* g, AdamArgs adam, const float* clip,
                        const int* gate, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  MLXTERP_LAUNCH(adam_vector_kernel, (n + 255) / 256, 256, stream, n, p, m, v, g, adam, clip, gate);
  return cudaGetLastError();
}

cudaError_t to_bf16(const float* src, void* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (n % 8) return cudaErrorInvalidValue;
  const int64_t n8 = n / 8;
  const int64_t blocks = std::min<int64_t>((n8 + 255) / 256, 65536);
  MLXTERP_LAUNCH(to_bf16_kernel, unsigned(blocks), 256, stream, src, static_cast<uint16_t*>(dst), n8);
  return cudaGetLastError();
}

}  // namespace mlxterp::cuda_kernels

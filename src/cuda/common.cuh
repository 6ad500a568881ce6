// Device helpers shared by the SAE kernels: bf16 packing, 16-byte loads, block reductions and scans.
// CUDA headers only (no libtorch), so the .cu files compile with plain nvcc.
#pragma once

#include <cstdint>

#ifdef MLXTERP_CUDA_EMULATE
// tests/emu: the kernels run on CPU threads (one std::thread per CUDA thread) to check their logic.
#include "emu/cuda_emu.h"
#define MLXTERP_LAUNCH(kernel, grid, block, stream, ...) \
  ::mlxterp_emu::launch((grid), (block), [&] { kernel(__VA_ARGS__); })
#define MLXTERP_LAUNCH_SMEM(kernel, grid, block, smem, stream, ...) \
  ::mlxterp_emu::launch((grid), (block), [&] { kernel(__VA_ARGS__); })
#define MLXTERP_DYNAMIC_SMEM(name) alignas(16) static unsigned char name[256 * 1024]
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
// kernel<<<grid, block, 0, stream>>>(args...); `kernel` may be a pointer to a (template) kernel.
#define MLXTERP_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#define MLXTERP_LAUNCH_SMEM(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
// The kernel's dynamic shared memory (16-byte aligned).
#define MLXTERP_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include "cuda/kernels.h"

namespace mlxterp::cuda_kernels {

constexpr int kWarp = 32;

// ---- bf16 <-> float, eight at a time (one 16-byte word) ----------------------------------------------

// bf16 is the top half of a float: element 0 sits in the low 16 bits of each 32-bit word.
__device__ __forceinline__ void unpack_bf16x8(const uint4& u, float f[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x = lo (low half), round to nearest even
  return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ uint4 pack_bf16x8(const float f[8]) {
  return make_uint4(pack_bf16x2(f[0], f[1]), pack_bf16x2(f[2], f[3]), pack_bf16x2(f[4], f[5]),
                    pack_bf16x2(f[6], f[7]));
}

// ---- 16-byte loads and stores ------------------------------------------------------------------------

// Read-only data reused by other blocks (gathered rows, biases): through the non-coherent path.
__device__ __forceinline__ uint4 ld_ro(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ float4 ld_ro_f4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
// Streamed once (weights and optimizer state): evict-first, so the gathered rows stay in L2.
__device__ __forceinline__ float4 ld_stream_f4(const float* p) { return __ldcs(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ void st_stream_f4(float* p, float4 v) { __stcs(reinterpret_cast<float4*>(p), v); }
__device__ __forceinline__ void st_stream_u4(void* p, uint4 v) { __stcs(reinterpret_cast<uint4*>(p), v); }

__device__ __forceinline__ void load_f8_stream(const float* p, float f[8]) {
  float4 a = ld_stream_f4(p), b = ld_stream_f4(p + 4);
  f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void load_f8_ro(const float* p, float f[8]) {
  float4 a = ld_ro_f4(p), b = ld_ro_f4(p + 4);
  f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void store_f8(float* p, const float f[8]) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}

// ---- L2 eviction hints (sm_80+) --------------------------------------------------------------------
// evict_last for small arrays every block gathers from (the gradient rows), so the weights streaming past
// (loaded and stored with the evict-first .cs hints above) do not push them out of L2.
#ifdef MLXTERP_CUDA_EMULATE
__device__ __forceinline__ uint64_t l2_evict_last() { return 0; }
__device__ __forceinline__ uint64_t l2_evict_first() { return 0; }
__device__ __forceinline__ uint2 ld_ro_hint8(const void* p, uint64_t) { return __ldg(reinterpret_cast<const uint2*>(p)); }
#else
__device__ __forceinline__ uint64_t l2_evict_last() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  return p;
}
// evict_first for rows read once (the dense AuxK gradient rows).
__device__ __forceinline__ uint64_t l2_evict_first() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
// 8 read-only bytes with an L2 policy.
__device__ __forceinline__ uint2 ld_ro_hint8(const void* p, uint64_t policy) {
  uint2 v;
  asm("ld.global.nc.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;" : "=r"(v.x), "=r"(v.y) : "l"(p), "l"(policy));
  return v;
}
#endif

// ---- split row layout (the per-latent update kernels) ----------------------------------------------
// Thread t of T owns 8 elements per chunk c as two groups of 4: at split_offset(c, 0) and split_offset(c, 1).
// A warp's 16-byte access then covers 512 contiguous bytes, whole 32-byte sectors in one instruction (with
// 8 consecutive elements per thread, each instruction half-writes every sector it touches).
__device__ __forceinline__ int split_offset(int c, int h) { return ((2 * c + h) * int(blockDim.x) + int(threadIdx.x)) * 4; }

__device__ __forceinline__ void put4(float f[8], int h, float4 a) {
  f[4 * h] = a.x; f[4 * h + 1] = a.y; f[4 * h + 2] = a.z; f[4 * h + 3] = a.w;
}
__device__ __forceinline__ float4 get4(const float f[8], int h) {
  return make_float4(f[4 * h], f[4 * h + 1], f[4 * h + 2], f[4 * h + 3]);
}
// p[e .. e+4) for the chunk's two groups (streamed, evict-first); groups at or past d read as 0.
__device__ __forceinline__ void load_split_stream(const float* p, int c, int d, float f[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    put4(f, h, e < d ? ld_stream_f4(p + e) : make_float4(0.f, 0.f, 0.f, 0.f));
  }
}
__device__ __forceinline__ void store_split_stream(float* p, int c, int d, const float f[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    if (e < d) st_stream_f4(p + e, get4(f, h));
  }
}
__device__ __forceinline__ void store_split(float* p, int c, int d, const float f[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    if (e < d) *reinterpret_cast<float4*>(p + e) = get4(f, h);
  }
}
// The same elements of a bf16 row: two 8-byte words.
__device__ __forceinline__ void store_split_bf16_stream(uint16_t* p, int c, int d, const float f[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    if (e < d) {
      const uint2 v = make_uint2(pack_bf16x2(f[4 * h], f[4 * h + 1]), pack_bf16x2(f[4 * h + 2], f[4 * h + 3]));
      __stcs(reinterpret_cast<uint2*>(p + e), v);
    }
  }
}
// Gathered bf16 row (read-only, kept in L2 by `policy`), as floats; groups past d read as 0.
__device__ __forceinline__ void gather_split_bf16(const uint16_t* p, int c, int d, uint64_t policy, float f[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    uint2 u = make_uint2(0u, 0u);
    if (e < d) u = ld_ro_hint8(p + e, policy);
    f[4 * h] = __uint_as_float(u.x << 16);
    f[4 * h + 1] = __uint_as_float(u.x & 0xffff0000u);
    f[4 * h + 2] = __uint_as_float(u.y << 16);
    f[4 * h + 3] = __uint_as_float(u.y & 0xffff0000u);
  }
}

// ---- bfloat16 Adam moments (sae_kernels.hpp: moment_hash, round_bf16_stochastic) ------------------------

__device__ __forceinline__ uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}
// The stochastic rounding's random bits for flat element i of a moment matrix.
__device__ __forceinline__ uint32_t moment_hash(uint32_t seed, int64_t i) {
  return fmix32((uint32_t(i) * 0x9E3779B9u) ^ (seed + uint32_t(uint64_t(i) >> 32) * 0x85EBCA77u));
}
// x rounded to bf16 bits: up with probability (discarded bits) / 2^16 for r uniform in [0, 2^16).
__device__ __forceinline__ uint32_t round_bf16_sr(float x, uint32_t r) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : (b + r) >> 16;  // NaN -> the canonical bf16 NaN
}
// This thread's elements of a bf16 row (split layout), streamed; groups past d read as 0.
__device__ __forceinline__ void load_split_bf16_stream(const uint16_t* p, int c, int d, float f[8]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    uint2 u = make_uint2(0u, 0u);
    if (e < d) u = __ldcs(reinterpret_cast<const uint2*>(p + e));
    f[4 * h] = __uint_as_float(u.x << 16);
    f[4 * h + 1] = __uint_as_float(u.x & 0xffff0000u);
    f[4 * h + 2] = __uint_as_float(u.y << 16);
    f[4 * h + 3] = __uint_as_float(u.y & 0xffff0000u);
  }
}
// m and v of row elements [row0 + split_offset ...] stored stochastically rounded to bf16 (m: the hash's low
// 16 bits, v: its high 16), streamed.
__device__ __forceinline__ void store_split_moments_bf16(uint16_t* M, uint16_t* V, int64_t row0, int c, int d,
                                                         const float m[8], const float v[8], uint32_t seed) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int e = split_offset(c, h);
    if (e >= d) continue;
    uint32_t mb[4], vb[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t r = moment_hash(seed, row0 + e + j);
      mb[j] = round_bf16_sr(m[4 * h + j], r & 0xffffu);
      vb[j] = round_bf16_sr(v[4 * h + j], r >> 16);
    }
    __stcs(reinterpret_cast<uint2*>(M + row0 + e), make_uint2(mb[0] | (mb[1] << 16), mb[2] | (mb[3] << 16)));
    __stcs(reinterpret_cast<uint2*>(V + row0 + e), make_uint2(vb[0] | (vb[1] << 16), vb[2] | (vb[3] << 16)));
  }
}

// ---- row layout ------------------------------------------------------------------------------------------
// A block works on one row of d elements: thread t owns chunks c = 0..CH-1 of 8 consecutive elements at
// (c * blockDim.x + t) * 8. CH grows with d so that blockDim.x stays <= 512 (d <= kMaxDim = 16384).
struct RowLayout {
  int ch, threads;
};
inline RowLayout row_layout(int d) {
  const int d8 = d / 8;
  const int ch = d8 <= 512 ? 1 : (d8 <= 1024 ? 2 : 4);
  const int per = (d8 + ch - 1) / ch;
  return {ch, (per + 31) / 32 * 32};
}

// ---- reductions and scans over a block (blockDim.x a multiple of 32, at most 1024) -------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sums N values over the block (every thread gets the N totals; smem: at least 33 * N floats), with two
// barriers: for smem that only calls of block_sum_2sync<N> with this same N touch. Safe back to back: a
// call writes its partials before, and its totals after, its first barrier, and every thread has read the
// previous call's totals before it reaches that barrier.
template <int N>
__device__ __forceinline__ void block_sum_2sync(float (&v)[N], float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(v[i]);
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) smem[i * 32 + warp] = v[i];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float s = lane < nw ? smem[i * 32 + lane] : 0.f;
      s = warp_sum(s);
      if (lane == 0) smem[32 * N + i] = s;
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = smem[32 * N + i];
}

// Sums N values over the block; every thread gets the N totals. smem: at least 33 * N floats, free for
// reuse when it returns.
template <int N>
__device__ __forceinline__ void block_sum(float (&v)[N], float* smem) {
  block_sum_2sync<N>(v, smem);
  __syncthreads();
}

__device__ __forceinline__ float block_sum1(float v, float* smem) {
  float a[1] = {v};
  block_sum<1>(a, smem);
  return a[0];
}

// Inclusive prefix sum of one int per thread, in thread order; *total gets the block total.
// smem: at least 33 ints.
__device__ __forceinline__ int block_inclusive_scan(int v, int* smem, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  if (lane == 31) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nw ? smem[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int u = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += u;
    }
    smem[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int before = warp > 0 ? smem[warp - 1] : 0;
  *total = smem[nw - 1];
  __syncthreads();
  return v + before;
}

// ---- Adam ---------------------------------------------------------------------------------------------

// torch.optim.AdamW's update for one element (AdamArgs: kernels.h).
__device__ __forceinline__ float adam_update(float w, float g, float& m, float& v, const AdamArgs& a) {
  w *= a.decay;
  m += (1.f - a.beta1) * (g - m);  // torch: exp_avg.lerp_(grad, 1 - beta1)
  v = a.beta2 * v + (1.f - a.beta2) * g * g;
  const float denom = sqrtf(v) * a.inv_sqrt_bc2 + a.eps;
  return w - a.step_size * m / denom;
}

}  // namespace mlxterp::cuda_kernels

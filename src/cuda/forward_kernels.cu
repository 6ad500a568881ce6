// Fused elementwise ops of the transformer forward (bf16): RMSNorm, SiLU(gate) * up, rotary embedding.
// Each reproduces the rounding of the libtorch op sequence it replaces (HF's order of bf16 roundings),
// in one read and one write of its tensors instead of the 3-8 passes of the unfused ops.
#include <algorithm>

#include "cuda/common.cuh"

namespace mlxterp::cuda_kernels {

namespace {

// f rounded to bf16 (nearest even), as a float.
__device__ __forceinline__ float round_bf16(float f) { return __uint_as_float(pack_bf16x2(f, 0.f) << 16); }
__device__ __forceinline__ float bf16_at(const uint16_t* p) { return __uint_as_float(uint32_t(*p) << 16); }
__device__ __forceinline__ uint16_t to_bf16_bits(float f) { return uint16_t(pack_bf16x2(f, 0.f) & 0xffffu); }

// One block per row of x [rows, d] (d % 8 == 0).
//   xf = float(x); inv = rsqrt(sum(xf^2) * (1/d) + eps)
//   plus_one: out = bf16((xf * inv) * (1 + float(w)))       (Gemma: the product in float32, one rounding)
//   else:     out = bf16(float(w) * float(bf16(xf * inv)))  (Llama: normalised row rounded, then scaled)
template <bool kPlusOne>
__global__ void __launch_bounds__(256) rms_norm_kernel(const uint16_t* __restrict__ x, const uint16_t* __restrict__ w,
                                                        uint16_t* __restrict__ out, int d, float inv_d, float eps) {
  __shared__ float smem[33];
  const uint16_t* xr = x + int64_t(blockIdx.x) * d;
  uint16_t* orow = out + int64_t(blockIdx.x) * d;
  float ss = 0.f;
  for (int c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
    float f[8];
    unpack_bf16x8(ld_ro(xr + c), f);
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
  }
  ss = block_sum1(ss, smem);
  const float inv = rsqrtf(ss * inv_d + eps);
  for (int c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
    float f[8], wf[8];
    unpack_bf16x8(ld_ro(xr + c), f);  // the row again, from L1/L2
    unpack_bf16x8(ld_ro(w + c), wf);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = kPlusOne ? (f[i] * inv) * (1.f + wf[i]) : wf[i] * round_bf16(f[i] * inv);
    *reinterpret_cast<uint4*>(orow + c) = pack_bf16x8(f);
  }
}

// out = bf16(float(bf16(silu(float(g)))) * float(u)), eight elements per thread and step.
__global__ void __launch_bounds__(256) silu_mul_kernel(const uint16_t* __restrict__ g, const uint16_t* __restrict__ u,
                                                        uint16_t* __restrict__ out, int64_t n8) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float gf[8], uf[8];
    unpack_bf16x8(__ldcs(reinterpret_cast<const uint4*>(g) + i), gf);
    unpack_bf16x8(__ldcs(reinterpret_cast<const uint4*>(u) + i), uf);
#pragma unroll
    for (int j = 0; j < 8; ++j) gf[j] = round_bf16(gf[j] / (1.f + expf(-gf[j]))) * uf[j];
    __stcs(reinterpret_cast<uint4*>(out) + i, pack_bf16x8(gf));
  }
}

// One work item per rotated pair (j, j + rot/2) of a row, then one per pass-through element (rot .. d).
//   a = x[j], b = x[j + h] (h = rot / 2); c_i = bf16(cos[i]), s_i = bf16(sin[i])
//   out[j]     = bf16(bf16(a * c_j)     + bf16(-b * s_j))
//   out[j + h] = bf16(bf16(b * c_{j+h}) + bf16(a * s_{j+h}))
__global__ void __launch_bounds__(256) rope_kernel(const uint16_t* __restrict__ x, uint16_t* __restrict__ out,
                                                    const float* __restrict__ cos, const float* __restrict__ sin,
                                                    RopeShape s, int64_t items) {
  const int h = s.rot / 2;
  const int per_row = h + (s.d - s.rot);
  for (int64_t it = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = it / per_row;
    const int j = int(it - row * per_row);
    const int64_t t = row % s.T, bh = row / s.T, hd = bh % s.H, b = bh / s.H;
    const uint16_t* xr = x + b * s.xs[0] + hd * s.xs[1] + t * s.xs[2];
    uint16_t* orow = out + b * s.os[0] + hd * s.os[1] + t * s.os[2];
    if (j >= h) {  // past the rotary dimensions: copied
      const int e = s.rot + (j - h);
      orow[e] = xr[e];
      continue;
    }
    const int64_t cr = b * s.cs[0] + t * s.cs[1];
    const float a = bf16_at(xr + j), bb = bf16_at(xr + j + h);
    const float c1 = round_bf16(cos[cr + j]), s1 = round_bf16(sin[cr + j]);
    const float c2 = round_bf16(cos[cr + j + h]), s2 = round_bf16(sin[cr + j + h]);
    orow[j] = to_bf16_bits(round_bf16(a * c1) + round_bf16(-bb * s1));
    orow[j + h] = to_bf16_bits(round_bf16(bb * c2) + round_bf16(a * s2));
  }
}

// Blocks for a grid-stride loop over `items`: one per `threads` items, at most 4224 (32 per SM of a 132-SM
// H100/H200; more only adds scheduling).
int grid_for(int64_t items, int threads) {
  constexpr int64_t kMaxBlocks = 132 * 32;
  const int64_t blocks = (items + threads - 1) / threads;
  return int(std::clamp<int64_t>(blocks, 1, kMaxBlocks));
}

}  // namespace

cudaError_t rms_norm_bf16(const void* x, const void* w, void* out, int64_t rows, int d, float eps, bool plus_one,
                          cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  int threads = (d / 8 + 31) / 32 * 32;
  threads = threads < 32 ? 32 : (threads > 256 ? 256 : threads);
  const auto* xp = static_cast<const uint16_t*>(x);
  const auto* wp = static_cast<const uint16_t*>(w);
  auto* op = static_cast<uint16_t*>(out);
  const float inv_d = 1.f / float(d);
  if (plus_one)
    MLXTERP_LAUNCH(rms_norm_kernel<true>, unsigned(rows), threads, stream, xp, wp, op, d, inv_d, eps);
  else
    MLXTERP_LAUNCH(rms_norm_kernel<false>, unsigned(rows), threads, stream, xp, wp, op, d, inv_d, eps);
  return cudaGetLastError();
}

cudaError_t silu_mul_bf16(const void* g, const void* u, void* out, int64_t n, cudaStream_t stream) {
  const int64_t n8 = n / 8;
  if (n8 == 0) return cudaSuccess;
  MLXTERP_LAUNCH(silu_mul_kernel, grid_for(n8, 256), 256, stream, static_cast<const uint16_t*>(g),
                 static_cast<const uint16_t*>(u), static_cast<uint16_t*>(out), n8);
  return cudaGetLastError();
}

cudaError_t rope_bf16(const void* x, void* out, const float* cos, const float* sin, const RopeShape& s,
                      cudaStream_t stream) {
  const int64_t items = s.B * s.H * s.T * int64_t(s.rot / 2 + (s.d - s.rot));
  if (items == 0) return cudaSuccess;
  MLXTERP_LAUNCH(rope_kernel, grid_for(items, 256), 256, stream, static_cast<const uint16_t*>(x),
                 static_cast<uint16_t*>(out), cos, sin, s, items);
  return cudaGetLastError();
}

}  // namespace mlxterp::cuda_kernels

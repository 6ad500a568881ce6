// Shared by the microbenchmarks in this folder: error checking, device allocation, deterministic fills
// and synthetic TopK pairs (N tokens x k distinct latents each, uniform over F) grouped by latent the way
// the step's sort leaves them. Include after the kernel sources.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#define CK(x)                                                                                \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

template <class T>
T* dalloc(size_t n) {
  T* p = nullptr;
  CK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

__global__ void fill_kernel(float* p, size_t n, float scale, uint32_t seed, bool absval) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint32_t h1 = mlxterp::cuda_kernels::fmix32(uint32_t(i) * 0x9E3779B9u ^ seed), h2 = mlxterp::cuda_kernels::fmix32(h1 ^ 0x85EBCA6Bu);
    // sum of two uniforms - 1: a cheap symmetric bump
    float x = (float(h1 >> 8) + float(h2 >> 8)) * (1.f / 16777216.f) - 1.f;
    p[i] = (absval ? fabsf(x) : x) * scale;
  }
}
__global__ void fill_bf16_kernel(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint32_t h1 = mlxterp::cuda_kernels::fmix32(uint32_t(i) * 0x9E3779B9u ^ seed), h2 = mlxterp::cuda_kernels::fmix32(h1 ^ 0x85EBCA6Bu);
    const float x = (float(h1 >> 8) + float(h2 >> 8)) * (1.f / 16777216.f) - 1.f;
    p[i] = uint16_t(__float_as_uint(x) >> 16);
  }
}
// Number of differing 16-bit words.
__global__ void count_diff_kernel(const uint16_t* a, const uint16_t* b, size_t n, unsigned long long* out) {
  unsigned long long c = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    c += a[i] != b[i];
  atomicAdd(out, c);
}
static void fill_rand(float* d, size_t n, float scale, uint64_t seed, bool absval = false) {
  fill_kernel<<<1024, 256>>>(d, n, scale, uint32_t(seed), absval);
  CK(cudaDeviceSynchronize());
}
static void fill_rand_bf16(uint16_t* d, size_t n, uint64_t seed) {
  fill_bf16_kernel<<<1024, 256>>>(d, n, uint32_t(seed));
  CK(cudaDeviceSynchronize());
}

// Synthetic TopK pairs on the device, grouped by latent: offsets [F + 1], packed (token << 32 | value bits).
inline mlxterp::cuda_kernels::LatentPairs make_pairs(int N, int F, int k, int* P_out) {
  std::mt19937_64 rng(7);
  std::vector<std::vector<uint64_t>> by(F);
  std::uniform_real_distribution<float> ud(0.01f, 1.f);
  std::vector<int> pick(F);
  for (int f = 0; f < F; ++f) pick[f] = f;
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < k; ++j) std::swap(pick[j], pick[j + rng() % (F - j)]);
    for (int j = 0; j < k; ++j) {
      float a = ud(rng);
      uint32_t b;
      std::memcpy(&b, &a, 4);
      by[pick[j]].push_back((uint64_t(n) << 32) | b);
    }
  }
  std::vector<int> off(F + 1, 0);
  std::vector<uint64_t> sorted;
  sorted.reserve(size_t(N) * k);
  for (int f = 0; f < F; ++f) {
    off[f] = int(sorted.size());
    sorted.insert(sorted.end(), by[f].begin(), by[f].end());
  }
  off[F] = int(sorted.size());
  const int P = off[F];
  int* d_off = dalloc<int>(F + 1);
  uint64_t* d_sorted = dalloc<uint64_t>(P);
  CK(cudaMemcpy(d_off, off.data(), (F + 1) * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_sorted, sorted.data(), size_t(P) * 8, cudaMemcpyHostToDevice));
  *P_out = P;
  return {d_off, d_sorted, N};
}

// Microbenchmark of the per-latent update kernels (src/cuda/latent_update.cu) without libtorch: synthetic
// TopK pairs (N tokens x k latents, uniform), times decoder_update / encoder_update and experimental
// variants with CUDA events. Built and run on the GPU machine in seconds:
//
//   nvcc -std=c++20 -arch=sm_90 -O3 -I src bench/micro/latent_micro.cu -o /tmp/latent_micro && /tmp/latent_micro
//
// Prints ms per call and the effective bandwidth at 26 bytes per parameter (W, m, v read and written, bf16
// copy written).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <random>
#include <functional>
#include <string>
#include <vector>

#include "cuda/latent_update.cu"
#include "cuda/sparse_decode.cu"
#include "latent_tma_variants.cuh"
#include "micro_common.cuh"

using namespace mlxterp::cuda_kernels;

int main(int argc, char** argv) {
  const int d = argc > 1 ? std::atoi(argv[1]) : 4096;
  const int F = argc > 2 ? std::atoi(argv[2]) : 131072;
  const int k = argc > 3 ? std::atoi(argv[3]) : 128;
  const int N = 4096, reps = 20;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s  d=%d F=%d k=%d N=%d\n", prop.name, d, F, k, N);

  // Pairs: each token picks k distinct latents; sorted by latent (token order within a latent).
  int P = 0;
  const LatentPairs pairs = make_pairs(N, F, k, &P);

  const size_t FD = size_t(F) * d;
  float *W = dalloc<float>(FD), *m = dalloc<float>(FD), *v = dalloc<float>(FD);
  uint16_t *W16 = dalloc<uint16_t>(FD), *mb = dalloc<uint16_t>(FD), *vb = dalloc<uint16_t>(FD);
  uint16_t* G16 = dalloc<uint16_t>(size_t(N) * d);
  float* gval = dalloc<float>(P);
  float *b = dalloc<float>(F), *bm = dalloc<float>(F), *bv = dalloc<float>(F);
  int* fire = dalloc<int>(F);
  float* gb_scratch = dalloc<float>(F);
  const int grid = std::max(latent_grid_size(d), 2 * prop.multiProcessorCount);
  float* bdec_part = dalloc<float>(size_t(grid) * d);
  float* norm_part = dalloc<float>(grid);
  float* coef = dalloc<float>(2);
  fill_rand(W, FD, 0.02f, 1);
  fill_rand(m, FD, 1e-4f, 2);
  fill_rand(v, FD, 1e-8f, 3, true);
  CK(cudaMemset(mb, 0, FD * 2));
  CK(cudaMemset(vb, 0, FD * 2));
  fill_rand_bf16(G16, size_t(N) * d, 4);
  fill_rand(gval, P, 1e-3f, 5);
  fill_rand(b, F, 0.01f, 6);
  CK(cudaMemset(bm, 0, F * 4));
  CK(cudaMemset(bv, 0, F * 4));
  const float hcoef[2] = {1.f / N, 1.f / N};
  CK(cudaMemcpy(coef, hcoef, 8, cudaMemcpyHostToDevice));
  AdamArgs adam{0.9f, 0.999f, 1e-8f, 1.f, 1e-4f / (1 - 0.9f), 1.f / std::sqrt(1 - 0.999f)};
  MomentArgs mo32{m, v, false, 0}, mo16{mb, vb, true, 12345};

  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const double bytes32 = 26.0 * double(FD), bytes16 = 18.0 * double(FD);
  auto timeit = [&](const char* name, double bytes, auto&& launch) {
    for (int i = 0; i < 3; ++i) CK(launch());
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(e0));
    for (int i = 0; i < reps; ++i) CK(launch());
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0.f;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    ms /= reps;
    std::printf("%-40s %8.3f ms  %6.2f TB/s\n", name, ms, bytes / (ms * 1e-3) / 1e12);
    return ms;
  };
  DenseRows none{};
  auto dec = [&](MomentArgs mo) {
    return [&, mo] {
      return decoder_update(LatentMode::Fused, F, d, pairs, G16, coef, W, W16, mo, gval, adam, nullptr, nullptr,
                            true, true, norm_part, none, 0);
    };
  };
  // Copy peer: read and write 26 B per parameter with a plain vectorised kernel (cudaMemcpy of 3 arrays).
  timeit("memcpy W,m,v (24 B/param)", 24.0 * double(FD), [&] {
    cudaMemcpyAsync(m, W, FD * 4, cudaMemcpyDeviceToDevice);
    cudaMemcpyAsync(W, v, FD * 4, cudaMemcpyDeviceToDevice);
    return cudaMemcpyAsync(v, m, FD * 4, cudaMemcpyDeviceToDevice);
  });
  // restore sane values after the copies
  fill_rand(W, FD, 0.02f, 1);
  fill_rand(m, FD, 1e-4f, 2);
  fill_rand(v, FD, 1e-8f, 3, true);
  // A variant updates (W, W16, moments, b, bm, bv) and writes bdec / norm partials.
  using Fn = std::function<cudaError_t(float* W, uint16_t* W16, MomentArgs mo, float* b, float* bm, float* bv,
                                       float* bdec, float* norm)>;
  std::vector<std::pair<std::string, Fn>> variants;
  variants.push_back({"encoder", [&](float* W_, uint16_t* W16_, MomentArgs mo, float* b_, float* bm_, float* bv_,
                                     float* bd, float* nm) {
                        return encoder_update(LatentMode::Fused, F, d, pairs, G16, gval, W_, W16_, mo, b_, bm_, bv_,
                                              adam, adam, nullptr, nullptr, 1e-6f, fire, bd, nm, none, 0);
                      }});
  for (int st : {2, 3}) {
    if (!encoder_tma_fits(d, st, false, false)) continue;
    variants.push_back({"encoder TMA S=" + std::to_string(st),
                        [&, st](float* W_, uint16_t* W16_, MomentArgs mo, float* b_, float* bm_, float* bv_,
                                float* bd, float* nm) {
                          return encoder_update_tma(LatentMode::Fused, F, d, pairs, G16, gval, W_, W16_, mo, b_,
                                                    bm_, bv_, adam, adam, nullptr, nullptr, 1e-6f, fire, bd, nm,
                                                    none, st, false, 0);
                        }});
  }
  for (int st : {1, 2, 3, 4}) {
    if (st > 1 && !encoder_tma_fits(d, st, false, false)) continue;
    variants.push_back({"encoder TMA2 S=" + std::to_string(st),
                        [&, st](float* W_, uint16_t* W16_, MomentArgs mo, float* b_, float* bm_, float* bv_,
                                float* bd, float* nm) {
                          return encoder_update_tma2(LatentMode::Fused, F, d, pairs, G16, gval, W_, W16_, mo, b_,
                                                     bm_, bv_, adam, adam, nullptr, nullptr, 1e-6f, fire, bd, nm,
                                                     none, st, gb_scratch, 0);
                        }});
  }
  for (int rep = 0; rep < 2; ++rep) {
    timeit("decoder fp32 moments", bytes32, dec(mo32));
    timeit("decoder bf16 moments", bytes16, dec(mo16));
    for (auto& [name, fn] : variants) {
      for (bool bf : {false, true}) {
        const MomentArgs mo = bf ? mo16 : mo32;
        timeit((name + (bf ? " bf16" : " fp32")).c_str(), bf ? bytes16 : bytes32,
               [&] { return fn(W, W16, mo, b, bm, bv, bdec_part, norm_part); });
      }
    }
  }
  // Correctness: every variant must leave the same W, m, v, W16, b as the plain encoder from the same start.
  {
    float *W0 = dalloc<float>(FD), *m0 = dalloc<float>(FD), *v0 = dalloc<float>(FD);
    float *b0 = dalloc<float>(F), *bm0 = dalloc<float>(F), *bv0 = dalloc<float>(F);
    uint16_t *mb0 = dalloc<uint16_t>(FD), *vb0 = dalloc<uint16_t>(FD);
    CK(cudaMemcpy(W0, W, FD * 4, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(m0, m, FD * 4, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(v0, v, FD * 4, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(mb0, mb, FD * 2, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(vb0, vb, FD * 2, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(b0, b, F * 4, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(bm0, bm, F * 4, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(bv0, bv, F * 4, cudaMemcpyDeviceToDevice));
    float* Wr = dalloc<float>(FD);
    uint16_t *W16r = dalloc<uint16_t>(FD), *W16x = dalloc<uint16_t>(FD);
    float *mr = dalloc<float>(FD), *vr = dalloc<float>(FD), *br = dalloc<float>(F);
    std::vector<double> ref_cols(d);
    float* bd = dalloc<float>(size_t(grid) * d);
    unsigned long long* ndiff = dalloc<unsigned long long>(1);
    for (bool bf : {false, true}) {
      for (size_t vi = 0; vi < variants.size(); ++vi) {
        auto& [name, fn] = variants[vi];
        CK(cudaMemcpy(W, W0, FD * 4, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(m, m0, FD * 4, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(v, v0, FD * 4, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(mb, mb0, FD * 2, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(vb, vb0, FD * 2, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(b, b0, F * 4, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(bm, bm0, F * 4, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(bv, bv0, F * 4, cudaMemcpyDeviceToDevice));
        CK(cudaMemset(bd, 0, size_t(grid) * d * 4));
        CK(fn(W, vi == 0 ? W16r : W16x, bf ? mo16 : mo32, b, bm, bv, bd, norm_part));
        CK(cudaDeviceSynchronize());
        std::vector<float> parts(size_t(grid) * d);
        CK(cudaMemcpy(parts.data(), bd, parts.size() * 4, cudaMemcpyDeviceToHost));
        std::vector<double> cols(d, 0.0);
        for (int r = 0; r < grid; ++r)
          for (int j = 0; j < d; ++j) cols[j] += parts[size_t(r) * d + j];
        const void* mm = bf ? (void*)mb : (void*)m;
        const void* vv = bf ? (void*)vb : (void*)v;
        const size_t mbytes = FD * (bf ? 2 : 4);
        if (vi == 0) {
          CK(cudaMemcpy(Wr, W, FD * 4, cudaMemcpyDeviceToDevice));
          CK(cudaMemcpy(mr, mm, mbytes, cudaMemcpyDeviceToDevice));
          CK(cudaMemcpy(vr, vv, mbytes, cudaMemcpyDeviceToDevice));
          CK(cudaMemcpy(br, b, F * 4, cudaMemcpyDeviceToDevice));
          ref_cols = cols;
          continue;
        }
        auto cmp = [&](const char*, const void* x_, const void* y_, size_t bytes) {
          CK(cudaMemset(ndiff, 0, sizeof(unsigned long long)));
          count_diff_kernel<<<1024, 256>>>(static_cast<const uint16_t*>(x_), static_cast<const uint16_t*>(y_),
                                           bytes / 2, ndiff);
          unsigned long long h = 0;
          CK(cudaMemcpy(&h, ndiff, sizeof h, cudaMemcpyDeviceToHost));
          return size_t(h);
        };
        const size_t dW = cmp("W", Wr, W, FD * 4), dm = cmp("m", mr, mm, mbytes), dv = cmp("v", vr, vv, mbytes);
        const size_t d16 = cmp("W16", W16r, W16x, FD * 2), db = cmp("b", br, b, F * 4);
        double maxrel = 0;
        for (int j = 0; j < d; ++j)
          maxrel = std::max(maxrel, std::fabs(cols[j] - ref_cols[j]) / (std::fabs(ref_cols[j]) + 1e-20));
        std::printf("check %-24s %s: 16-bit words differing W %zu m %zu v %zu W16 %zu b %zu; bdec sum rel %.1e  %s\n",
                    name.c_str(), bf ? "bf16" : "fp32", dW, dm, dv, d16, db, maxrel,
                    (dW | dm | dv | d16 | db) == 0 && maxrel < 1e-4 ? "OK" : "MISMATCH");
      }
    }
  }
  CK(cudaDeviceSynchronize());
  return 0;
}

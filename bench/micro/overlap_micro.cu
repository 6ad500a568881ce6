// Can a per-latent update kernel run under the encoder GEMM of the next step? Times, without libtorch:
// the step's encoder GEMM (cuBLAS bf16, N = 4096 tokens in chunks of 512 rows, [512, d] x [d, F]), the
// shipped decoder_update / encoder_update kernels on synthetic TopK pairs, the two one after the other,
// and the two at once on two streams with the GEMM held to a number of SMs (cublasSetSmCountTarget).
//
//   nvcc -std=c++20 -arch=sm_90 -O3 -I src bench/micro/overlap_micro.cu -lcublas -o /tmp/om && /tmp/om 4096 131072 128
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/latent_update.cu"
#include "micro_common.cuh"

using namespace mlxterp::cuda_kernels;

#define CB(x)                                                                         \
  do {                                                                                \
    cublasStatus_t s_ = (x);                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
      std::fprintf(stderr, "%s:%d: %s: cublas status %d\n", __FILE__, __LINE__, #x, int(s_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

int main(int argc, char** argv) {
  const int d = argc > 1 ? std::atoi(argv[1]) : 4096;
  const int F = argc > 2 ? std::atoi(argv[2]) : 131072;
  const int k = argc > 3 ? std::atoi(argv[3]) : 128;
  const int N = 4096, chunk = 512, reps = 10;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s (%d SMs)  d=%d F=%d k=%d N=%d, GEMM in %d-row chunks\n", prop.name, sms, d, F, k, N, chunk);

  int P = 0;
  const LatentPairs pairs = make_pairs(N, F, k, &P);
  const size_t FD = size_t(F) * d;
  float *W = dalloc<float>(FD), *m = dalloc<float>(FD), *v = dalloc<float>(FD);
  float *We = dalloc<float>(FD), *me = dalloc<float>(FD), *ve = dalloc<float>(FD);
  uint16_t *W16 = dalloc<uint16_t>(FD), *We16 = dalloc<uint16_t>(FD);
  uint16_t *G16 = dalloc<uint16_t>(size_t(N) * d), *x16 = dalloc<uint16_t>(size_t(N) * d);
  uint16_t* pre = dalloc<uint16_t>(size_t(chunk) * F);
  float* gval = dalloc<float>(P);
  float *b = dalloc<float>(F), *bm = dalloc<float>(F), *bv = dalloc<float>(F);
  int* fire = dalloc<int>(F);
  const int grid = std::max(latent_grid_size(d), 2 * sms);
  float* bdec_part = dalloc<float>(size_t(grid) * d);
  float* norm_part = dalloc<float>(grid);
  float* coef = dalloc<float>(2);
  for (float* p : {W, We}) fill_rand(p, FD, 0.02f, 1);
  for (float* p : {m, me}) fill_rand(p, FD, 1e-4f, 2);
  for (float* p : {v, ve}) fill_rand(p, FD, 1e-8f, 3, true);
  fill_rand_bf16(W16, FD, 7);
  fill_rand_bf16(We16, FD, 8);
  fill_rand_bf16(G16, size_t(N) * d, 4);
  fill_rand_bf16(x16, size_t(N) * d, 9);
  fill_rand(gval, P, 1e-3f, 5);
  fill_rand(b, F, 0.01f, 6);
  CK(cudaMemset(bm, 0, F * 4));
  CK(cudaMemset(bv, 0, F * 4));
  const float hcoef[2] = {1.f / N, 1.f / N};
  CK(cudaMemcpy(coef, hcoef, 8, cudaMemcpyHostToDevice));
  const AdamArgs adam{0.9f, 0.999f, 1e-8f, 1.f, 1e-4f / (1 - 0.9f), 1.f / std::sqrt(1 - 0.999f)};
  const MomentArgs mo{m, v, false, 0}, moe{me, ve, false, 0};
  const DenseRows none{};

  cudaStream_t s0, s1, s2;
  CK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cublasHandle_t h;
  CB(cublasCreate(&h));
  CB(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  // pre[rows, F] = x16[rows, d] . We16[F, d]^T, column-major: pre^T [F, rows] = We16^T(op T of [d, F]) . x^T
  auto gemm = [&](cudaStream_t s, int sm_target) {
    CB(cublasSetStream(h, s));
    CB(cublasSetSmCountTarget(h, sm_target));
    const float one = 1.f, zero = 0.f;
    for (int r0 = 0; r0 < N; r0 += chunk)
      CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, F, chunk, d, &one, We16, CUDA_R_16BF, d, x16 + size_t(r0) * d,
                      CUDA_R_16BF, d, &zero, pre, CUDA_R_16BF, F, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  auto dec = [&](cudaStream_t s) {
    CK(decoder_update(LatentMode::Fused, F, d, pairs, G16, coef, W, W16, mo, gval, adam, nullptr, nullptr, true, true,
                      norm_part, none, s));
  };
  auto enc = [&](cudaStream_t s) {
    CK(encoder_update(LatentMode::Fused, F, d, pairs, x16, gval, We, We16, moe, b, bm, bv, adam, adam, nullptr,
                      nullptr, 1e-6f, fire, bdec_part, norm_part, none, s));
  };
  cudaEvent_t e0, e1, fork, j1, j2;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&j1, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&j2, cudaEventDisableTiming));
  // One case = body(i) run on s0 (forking to s1 / s2 as it likes), timed over reps after 2 warm-ups.
  auto timeit = [&](const std::string& name, auto&& body) {
    for (int i = 0; i < 2; ++i) body();
    CK(cudaStreamSynchronize(s0));
    CK(cudaEventRecord(e0, s0));
    for (int i = 0; i < reps; ++i) body();
    CK(cudaEventRecord(e1, s0));
    CK(cudaEventSynchronize(e1));
    float ms = 0.f;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    std::printf("%-52s %8.3f ms\n", name.c_str(), ms / reps);
  };
  // GEMM on s1 and `upd` on s2, both after everything before on s0; s0 waits for both.
  auto together = [&](int sm_target, auto&& upd, bool upd_first) {
    return [&, sm_target, upd_first] {
      CK(cudaEventRecord(fork, s0));
      CK(cudaStreamWaitEvent(s1, fork));
      CK(cudaStreamWaitEvent(s2, fork));
      if (upd_first) upd(s2);
      gemm(s1, sm_target);
      if (!upd_first) upd(s2);
      CK(cudaEventRecord(j1, s1));
      CK(cudaEventRecord(j2, s2));
      CK(cudaStreamWaitEvent(s0, j1));
      CK(cudaStreamWaitEvent(s0, j2));
    };
  };
  for (int rep = 0; rep < 2; ++rep) {
    std::printf("-- round %d\n", rep + 1);
    timeit("GEMM (8 chunks), all SMs", [&] { gemm(s0, 0); });
    for (int t : {sms - 16, sms - 24, sms - 32}) timeit("GEMM, SM target " + std::to_string(t), [&] { gemm(s0, t); });
    timeit("decoder_update", [&] { dec(s0); });
    timeit("encoder_update", [&] { enc(s0); });
    timeit("GEMM then decoder_update (serial)", [&] {
      gemm(s0, 0);
      dec(s0);
    });
    for (bool first : {false, true})
      for (int t : {0, sms - 8, sms - 16, sms - 24, sms - 32, sms - 44})
        timeit(std::string("GEMM || decoder_update, ") + (first ? "update launched first" : "GEMM first") +
                   ", SM target " + std::to_string(t),
               together(t, dec, first));
    for (int t : {0, sms - 24})
      timeit("GEMM || encoder_update, GEMM first, SM target " + std::to_string(t), together(t, enc, false));
  }
  CK(cudaDeviceSynchronize());
  cublasDestroy(h);
  return 0;
}

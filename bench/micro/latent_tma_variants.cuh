// Measured and not kept (bench/NOTES.md, session 9): the encoder's per-latent update with its streamed rows (W, m, v) brought into shared memory
// by the Tensor Memory Accelerator (one cp.async.bulk per array per row, S stages ahead), instead of six
// 16-byte loads per thread. Optionally the updated rows go back the same way (in place in the stage, one
// bulk store per array). Included after latent_update.cu's helpers (same translation unit).
#pragma once

namespace mlxterp::cuda_kernels {
namespace {

constexpr int kMaxStages = 4;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar,
                                          uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
      "%4;" ::"r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void bulk_store(void* dst, const void* src, uint32_t bytes, uint64_t policy) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group.L2::cache_hint [%0], [%1], %2, %3;" ::"l"(dst),
               "r"(smem_u32(src)), "r"(bytes), "l"(policy)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait0() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Bytes of one stage: W (float32), m and v (float32 or bf16), and with bulk stores the bf16 copy of W.
__host__ __device__ inline size_t tma_stage_bytes(int d, bool bf, bool ts) {
  return size_t(d) * (4 + (bf ? 4 : 8) + (ts ? 2 : 0));
}

template <bool BF, bool TS>
__global__ void __launch_bounds__(512, 2)
    encoder_tma_kernel(LatentMode mode, int F, int d, LatentPairs P, const uint16_t* __restrict__ xc16,
                       const float* __restrict__ gval, float* __restrict__ W, uint16_t* __restrict__ W16,
                       MomentArgs mo, float* __restrict__ b, float* __restrict__ bm, float* __restrict__ bv,
                       AdamArgs adam, AdamArgs bias_adam, const float* __restrict__ clip_p,
                       const int* __restrict__ gate, float fire_threshold, int* __restrict__ fire_count,
                       float* __restrict__ bdec_partial, float* __restrict__ norm_partial, DenseRows dense, int S) {
  MLXTERP_DYNAMIC_SMEM(smem);
  __shared__ __align__(8) uint64_t full[kMaxStages];
  __shared__ float s_red[34];
  const int t = threadIdx.x;
  const float clip = clip_p ? *clip_p : 1.f;
  const bool update = mode != LatentMode::NormOnly && (!gate || *gate != 0);
  const bool first_pass = mode != LatentMode::UpdateOnly;
  const uint64_t keep = l2_evict_last();
  const uint64_t stream = l2_evict_first();
  const size_t sb = tma_stage_bytes(d, BF, TS);
  const uint32_t mbytes = uint32_t(d) * (BF ? 2 : 4);
  // Stage s: W at 0, m at 4d, v at 4d + mbytes, the bf16 copy of W after them (TS).
  auto sW = [&](int s) { return reinterpret_cast<float*>(smem + s * sb); };
  auto sM = [&](int s) { return smem + s * sb + size_t(d) * 4; };
  auto sV = [&](int s) { return smem + s * sb + size_t(d) * 4 + mbytes; };
  auto sW16 = [&](int s) { return reinterpret_cast<uint16_t*>(smem + s * sb + size_t(d) * 4 + 2 * mbytes); };
  if (t == 0) {
    for (int s = 0; s < S; ++s) mbar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto issue = [&](int i) {  // thread 0: row i of this block into stage i % S
    const int f = int(blockIdx.x) + i * int(gridDim.x);
    if (f >= F) return;
    const int s = i % S;
    const int64_t row = int64_t(f) * d;
    mbar_expect_tx(&full[s], uint32_t(d) * 4 + (update ? 2 * mbytes : 0));
    bulk_load(sW(s), W + row, uint32_t(d) * 4, &full[s], stream);
    if (update) {
      bulk_load(sM(s), static_cast<const unsigned char*>(mo.m) + row * (BF ? 2 : 4), mbytes, &full[s], stream);
      bulk_load(sV(s), static_cast<const unsigned char*>(mo.v) + row * (BF ? 2 : 4), mbytes, &full[s], stream);
    }
  };
  if (t == 0)
    for (int i = 0; i < S - 1; ++i) issue(i);

  float bacc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) bacc[i] = 0.f;
  float nacc = 0.f;
  PairRanges ranges(P, F);
  int it = 0;
  for (int f = blockIdx.x; f < F; f += gridDim.x, ++it) {
    const int s = it % S;
    const int64_t row = int64_t(f) * d;
    if (t == 0) {
      if constexpr (TS) bulk_wait_read0();  // the stage refilled next was stored from at the end of the last row
      issue(it + S - 1);
    }
    int beg, end;
    ranges.take(f, beg, end);
    float g[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = 0.f;
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
          const float gp = a > 0.f ? gval[p0 + q] : 0.f;
          fired += main && a > fire_threshold;
          gb += gp;
          if (gp != 0.f) {
            float xv[8];
            gather_split_bf16(xc16 + int64_t(main ? n : n - P.n_main) * d, 0, d, keep, xv);
#pragma unroll
            for (int i = 0; i < 8; ++i) g[i] = fmaf(gp, xv[i], g[i]);
          }
        }
      }
    }
    if (const int slot = dense.slot ? dense.slot[f] : -1; slot >= 0) {
      float (&g1)[1][8] = *reinterpret_cast<float (*)[1][8]>(&g);
      add_row_bf16<1>(dense.enc + int64_t(slot) * d, d, 1.f, g1);
      gb += dense.gb[slot];
    }
    mbar_wait(&full[s], uint32_t(it / S) & 1u);
    float w[8];
    const bool live = split_offset(0, 0) < d;  // threads past d own nothing (d not a multiple of 4 * blockDim)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int e = split_offset(0, h);
      put4(w, h, e < d ? *reinterpret_cast<const float4*>(sW(s) + e) : make_float4(0.f, 0.f, 0.f, 0.f));
    }
    if (first_pass) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        bacc[i] = fmaf(gb, w[i], bacc[i]);
        nacc = fmaf(g[i], g[i], nacc);
      }
      if (t == 0) nacc = fmaf(gb, gb, nacc);
    }
    if (mode != LatentMode::NormOnly && t == 0 && fire_count) fire_count[f] = fired;
    if (update) {
      float m[8], v[8];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int e = split_offset(0, h);
        if (e >= d) continue;
        if constexpr (BF) {
          const uint2 um = *reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(sM(s)) + e);
          const uint2 uv = *reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(sV(s)) + e);
          m[4 * h] = __uint_as_float(um.x << 16), m[4 * h + 1] = __uint_as_float(um.x & 0xffff0000u);
          m[4 * h + 2] = __uint_as_float(um.y << 16), m[4 * h + 3] = __uint_as_float(um.y & 0xffff0000u);
          v[4 * h] = __uint_as_float(uv.x << 16), v[4 * h + 1] = __uint_as_float(uv.x & 0xffff0000u);
          v[4 * h + 2] = __uint_as_float(uv.y << 16), v[4 * h + 3] = __uint_as_float(uv.y & 0xffff0000u);
        } else {
          put4(m, h, *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(sM(s)) + e));
          put4(v, h, *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(sV(s)) + e));
        }
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) w[i] = adam_update(w[i], g[i] * clip, m[i], v[i], adam);
      if constexpr (TS) {
        if (live) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int e = split_offset(0, h);
            if (e >= d) continue;
            *reinterpret_cast<float4*>(sW(s) + e) = get4(w, h);
            *reinterpret_cast<uint2*>(sW16(s) + e) =
                make_uint2(pack_bf16x2(w[4 * h], w[4 * h + 1]), pack_bf16x2(w[4 * h + 2], w[4 * h + 3]));
            if constexpr (BF) {
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                const uint32_t r = moment_hash(mo.seed, row + e + j);
                reinterpret_cast<uint16_t*>(sM(s))[e + j] = uint16_t(round_bf16_sr(m[4 * h + j], r & 0xffffu));
                reinterpret_cast<uint16_t*>(sV(s))[e + j] = uint16_t(round_bf16_sr(v[4 * h + j], r >> 16));
              }
            } else {
              *reinterpret_cast<float4*>(reinterpret_cast<float*>(sM(s)) + e) = get4(m, h);
              *reinterpret_cast<float4*>(reinterpret_cast<float*>(sV(s)) + e) = get4(v, h);
            }
          }
        }
        fence_proxy_async();
      } else {
        float (&w1)[8] = w;
        store_split_stream(W + row, 0, d, w1);
        store_moments<BF>(mo, row, 0, d, m, v);
        store_split_bf16_stream(W16 + row, 0, d, w1);
      }
    }
    __syncthreads();  // stage s consumed (and, with TS, written): it is refilled for row it + S
    if (TS && update && t == 0) {
      bulk_store(W + row, sW(s), uint32_t(d) * 4, stream);
      bulk_store(static_cast<unsigned char*>(mo.m) + row * (BF ? 2 : 4), sM(s), mbytes, stream);
      bulk_store(static_cast<unsigned char*>(mo.v) + row * (BF ? 2 : 4), sV(s), mbytes, stream);
      bulk_store(W16 + row, sW16(s), uint32_t(d) * 2, stream);
      bulk_commit();
    }
    if (update && t == 0) {
      float bmf = bm[f], bvf = bv[f];
      b[f] = adam_update(b[f], gb * clip, bmf, bvf, bias_adam);
      bm[f] = bmf;
      bv[f] = bvf;
    }
  }
  if (TS && t == 0) bulk_wait0();
  if (first_pass) {
    store_split(bdec_partial + int64_t(blockIdx.x) * d, 0, d, bacc);
    nacc = block_sum1(nacc, s_red);
    if (t == 0) norm_partial[blockIdx.x] = nacc;
  }
}

// The same with no block-wide barrier per row: each warp releases a stage when it has read it (an "empty"
// mbarrier counting the warps), thread 0 refills a stage once every warp has released it, and each warp's
// lanes hold the next row's first 32 pairs and their gval (read a row ahead, handed out with shuffles), so a
// row's dependent chain is just the gather of its pairs' input rows.
template <bool BF>
__global__ void __launch_bounds__(512, 2)
    encoder_tma2_kernel(LatentMode mode, int F, int d, LatentPairs P, const uint16_t* __restrict__ xc16,
                        const float* __restrict__ gval, float* __restrict__ W, uint16_t* __restrict__ W16,
                        MomentArgs mo, float* __restrict__ b, float* __restrict__ bm, float* __restrict__ bv,
                        AdamArgs adam, AdamArgs bias_adam, const float* __restrict__ clip_p,
                        const int* __restrict__ gate, float fire_threshold, int* __restrict__ fire_count,
                        float* __restrict__ bdec_partial, float* __restrict__ norm_partial, DenseRows dense, int S,
                        float* __restrict__ gb_out) {
  MLXTERP_DYNAMIC_SMEM(smem);
  __shared__ __align__(8) uint64_t full[kMaxStages];
  __shared__ __align__(8) uint64_t empty[kMaxStages];
  __shared__ float s_red[34];
  const int t = threadIdx.x, lane = t & 31;
  const float clip = clip_p ? *clip_p : 1.f;
  const bool update = mode != LatentMode::NormOnly && (!gate || *gate != 0);
  const bool first_pass = mode != LatentMode::UpdateOnly;
  const uint64_t keep = l2_evict_last();
  const uint64_t stream = l2_evict_first();
  const size_t sb = tma_stage_bytes(d, BF, false);
  const uint32_t mbytes = uint32_t(d) * (BF ? 2 : 4);
  auto sW = [&](int s) { return reinterpret_cast<float*>(smem + s * sb); };
  auto sM = [&](int s) { return smem + s * sb + size_t(d) * 4; };
  auto sV = [&](int s) { return smem + s * sb + size_t(d) * 4 + mbytes; };
  if (t == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], blockDim.x / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto issue = [&](int i) {  // thread 0: row i of this block into stage i % S, once its previous use is read
    const int f = int(blockIdx.x) + i * int(gridDim.x);
    if (f >= F) return;
    const int s = i % S;
    if (i >= S) mbar_wait(&empty[s], uint32_t(i / S - 1) & 1u);
    const int64_t row = int64_t(f) * d;
    mbar_expect_tx(&full[s], uint32_t(d) * 4 + (update ? 2 * mbytes : 0));
    bulk_load(sW(s), W + row, uint32_t(d) * 4, &full[s], stream);
    if (update) {
      bulk_load(sM(s), static_cast<const unsigned char*>(mo.m) + row * (BF ? 2 : 4), mbytes, &full[s], stream);
      bulk_load(sV(s), static_cast<const unsigned char*>(mo.v) + row * (BF ? 2 : 4), mbytes, &full[s], stream);
    }
  };
  if (t == 0)
    for (int i = 0; i < S - 1; ++i) issue(i);

  // Row it's range and first 32 pairs (lane j: pair j) and the next row's range, all loaded a row ahead.
  auto row_of = [&](int i) { return int(blockIdx.x) + i * int(gridDim.x); };
  int beg = 0, end = 0, beg_n = 0, end_n = 0;
  uint64_t pk = 0;
  float gvl = 0.f;
  if (row_of(0) < F) {
    beg = P.offsets[row_of(0)];
    end = P.offsets[row_of(0) + 1];
    if (beg + lane < end) pk = P.sorted[beg + lane], gvl = gval[beg + lane];
  }
  if (row_of(1) < F) beg_n = P.offsets[row_of(1)], end_n = P.offsets[row_of(1) + 1];

  float bacc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) bacc[i] = 0.f;
  float nacc = 0.f;
  int it = 0;
  for (int f = blockIdx.x; f < F; f += gridDim.x, ++it) {
    const int s = it % S;
    const int64_t row = int64_t(f) * d;
    if (t == 0) issue(it + S - 1);
    // Next row's pairs and range after it (their loads overlap this row's work).
    uint64_t pk_n = 0;
    float gv_n = 0.f;
    int beg_nn = 0, end_nn = 0;
    if (f + int(gridDim.x) < F) {
      if (beg_n + lane < end_n) pk_n = P.sorted[beg_n + lane], gv_n = gval[beg_n + lane];
      if (f + 2 * int(gridDim.x) < F)
        beg_nn = P.offsets[f + 2 * gridDim.x], end_nn = P.offsets[f + 2 * gridDim.x + 1];
    }
    float g[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = 0.f;
    float gb = 0.f;
    int fired = 0;
    const int cnt_all = end - beg;
    for (int p0 = 0; p0 < cnt_all; p0 += kPairBatch) {
#pragma unroll
      for (int q = 0; q < kPairBatch; ++q) {
        const int p = p0 + q;
        if (p < cnt_all) {
          uint64_t pq;
          float gq;
          if (p < 32) {
            pq = __shfl_sync(0xffffffffu, pk, p);
            gq = __shfl_sync(0xffffffffu, gvl, p);
          } else {
            pq = P.sorted[beg + p];
            gq = gval[beg + p];
          }
          int n;
          float a;
          unpack_pair(pq, n, a);
          const bool main = n < P.n_main;
          const float gp = a > 0.f ? gq : 0.f;
          fired += main && a > fire_threshold;
          gb += gp;
          if (gp != 0.f) {
            float xv[8];
            gather_split_bf16(xc16 + int64_t(main ? n : n - P.n_main) * d, 0, d, keep, xv);
#pragma unroll
            for (int i = 0; i < 8; ++i) g[i] = fmaf(gp, xv[i], g[i]);
          }
        }
      }
    }
    if (const int slot = dense.slot ? dense.slot[f] : -1; slot >= 0) {
      float (&g1)[1][8] = *reinterpret_cast<float (*)[1][8]>(&g);
      add_row_bf16<1>(dense.enc + int64_t(slot) * d, d, 1.f, g1);
      gb += dense.gb[slot];
    }
    mbar_wait(&full[s], uint32_t(it / S) & 1u);
    if (mode != LatentMode::NormOnly && t == 0) {
      if (fire_count) fire_count[f] = fired;
      gb_out[f] = gb;  // b_enc's Adam runs after the kernel (adam_vector)
    }
    if (first_pass && t == 0) nacc = fmaf(gb, gb, nacc);
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // one group of 4 at a time: fewer live registers
      const int e = split_offset(0, h);
      if (e >= d) continue;
      float4 w = *reinterpret_cast<const float4*>(sW(s) + e);
      float wv[4] = {w.x, w.y, w.z, w.w}, m[4], v[4];
      if (update) {
        if constexpr (BF) {
          const uint2 um = *reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(sM(s)) + e);
          const uint2 uv = *reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(sV(s)) + e);
          m[0] = __uint_as_float(um.x << 16), m[1] = __uint_as_float(um.x & 0xffff0000u);
          m[2] = __uint_as_float(um.y << 16), m[3] = __uint_as_float(um.y & 0xffff0000u);
          v[0] = __uint_as_float(uv.x << 16), v[1] = __uint_as_float(uv.x & 0xffff0000u);
          v[2] = __uint_as_float(uv.y << 16), v[3] = __uint_as_float(uv.y & 0xffff0000u);
        } else {
          const float4 m4 = *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(sM(s)) + e);
          const float4 v4 = *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(sV(s)) + e);
          m[0] = m4.x, m[1] = m4.y, m[2] = m4.z, m[3] = m4.w;
          v[0] = v4.x, v[1] = v4.y, v[2] = v4.z, v[3] = v4.w;
        }
      }
      if (first_pass) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          bacc[4 * h + j] = fmaf(gb, wv[j], bacc[4 * h + j]);
          nacc = fmaf(g[4 * h + j], g[4 * h + j], nacc);
        }
      }
      if (!update) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[j] = adam_update(wv[j], g[4 * h + j] * clip, m[j], v[j], adam);
      st_stream_f4(W + row + e, make_float4(wv[0], wv[1], wv[2], wv[3]));
      __stcs(reinterpret_cast<uint2*>(W16 + row + e),
             make_uint2(pack_bf16x2(wv[0], wv[1]), pack_bf16x2(wv[2], wv[3])));
      if constexpr (BF) {
        uint32_t mb[4], vb[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t r = moment_hash(mo.seed, row + e + j);
          mb[j] = round_bf16_sr(m[j], r & 0xffffu);
          vb[j] = round_bf16_sr(v[j], r >> 16);
        }
        __stcs(reinterpret_cast<uint2*>(static_cast<uint16_t*>(mo.m) + row + e),
               make_uint2(mb[0] | (mb[1] << 16), mb[2] | (mb[3] << 16)));
        __stcs(reinterpret_cast<uint2*>(static_cast<uint16_t*>(mo.v) + row + e),
               make_uint2(vb[0] | (vb[1] << 16), vb[2] | (vb[3] << 16)));
      } else {
        st_stream_f4(static_cast<float*>(mo.m) + row + e, make_float4(m[0], m[1], m[2], m[3]));
        st_stream_f4(static_cast<float*>(mo.v) + row + e, make_float4(v[0], v[1], v[2], v[3]));
      }
    }
    __syncwarp();  // the warp has read stage s: release it
    if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(&empty[s])) : "memory");
    beg = beg_n, end = end_n, beg_n = beg_nn, end_n = end_nn;
    pk = pk_n, gvl = gv_n;
  }
  if (first_pass) {
    store_split(bdec_partial + int64_t(blockIdx.x) * d, 0, d, bacc);
    nacc = block_sum1(nacc, s_red);
    if (t == 0) norm_partial[blockIdx.x] = nacc;
  }
}

template <bool BF>
int tma2_blocks_per_sm(int d, int S) {
  const size_t smem = size_t(S) * tma_stage_bytes(d, BF, false);
  auto k = encoder_tma2_kernel<BF>;
  if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, row_layout(d).threads, smem) != cudaSuccess) return 0;
  return n;
}

template <bool BF, bool TS>
int tma_blocks_per_sm(int d, int S) {
  const size_t smem = size_t(S) * tma_stage_bytes(d, BF, TS);
  auto k = encoder_tma_kernel<BF, TS>;
  if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, row_layout(d).threads, smem) != cudaSuccess) return 0;
  return n;
}

}  // namespace

// Whether the TMA encoder variant runs this shape (one chunk per thread, S stages fit in shared memory).
inline bool encoder_tma_fits(int d, int S, bool ts, bool bf) {
  if (d % 8 || d / 8 > 512 || S < 1 || S > kMaxStages) return false;
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  return size_t(S) * tma_stage_bytes(d, bf, ts) + 1024 <= size_t(optin);
}

inline int encoder_tma_grid(int d, int S, bool ts, bool bf) {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  int per = bf ? (ts ? tma_blocks_per_sm<true, true>(d, S) : tma_blocks_per_sm<true, false>(d, S))
               : (ts ? tma_blocks_per_sm<false, true>(d, S) : tma_blocks_per_sm<false, false>(d, S));
  return sms * std::max(per, 0);
}

inline cudaError_t encoder_update_tma(LatentMode mode, int F, int d, LatentPairs pairs, const void* xc16,
                                      const float* gval, float* W, void* W16, MomentArgs mo, float* b, float* bm,
                                      float* bv, AdamArgs adam, AdamArgs bias_adam, const float* clip,
                                      const int* gate, float fire_threshold, int* fire_count, float* bdec_partial,
                                      float* norm_partial, DenseRows dense, int S, bool ts, cudaStream_t stream) {
  if (!encoder_tma_fits(d, S, ts, mo.bf16)) return cudaErrorInvalidValue;
  const int grid = encoder_tma_grid(d, S, ts, mo.bf16);
  if (grid <= 0) return cudaErrorInvalidConfiguration;
  const size_t smem = size_t(S) * tma_stage_bytes(d, mo.bf16, ts);
  auto kernel = mo.bf16 ? (ts ? encoder_tma_kernel<true, true> : encoder_tma_kernel<true, false>)
                        : (ts ? encoder_tma_kernel<false, true> : encoder_tma_kernel<false, false>);
  kernel<<<grid, row_layout(d).threads, smem, stream>>>(
      mode, F, d, pairs, static_cast<const uint16_t*>(xc16), gval, W, static_cast<uint16_t*>(W16), mo, b, bm, bv,
      adam, bias_adam, clip, gate, fire_threshold, fire_count, bdec_partial, norm_partial, dense, S);
  return cudaGetLastError();
}

inline int encoder_tma2_grid(int d, int S, bool bf) {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms * std::max(bf ? tma2_blocks_per_sm<true>(d, S) : tma2_blocks_per_sm<false>(d, S), 0);
}

inline cudaError_t encoder_update_tma2(LatentMode mode, int F, int d, LatentPairs pairs, const void* xc16,
                                       const float* gval, float* W, void* W16, MomentArgs mo, float* b, float* bm,
                                       float* bv, AdamArgs adam, AdamArgs bias_adam, const float* clip,
                                       const int* gate, float fire_threshold, int* fire_count, float* bdec_partial,
                                       float* norm_partial, DenseRows dense, int S, float* gb_scratch,
                                       cudaStream_t stream) {
  if (!encoder_tma_fits(d, S, false, mo.bf16)) return cudaErrorInvalidValue;
  const int grid = encoder_tma2_grid(d, S, mo.bf16);
  if (grid <= 0) return cudaErrorInvalidConfiguration;
  const size_t smem = size_t(S) * tma_stage_bytes(d, mo.bf16, false);
  auto kernel = mo.bf16 ? encoder_tma2_kernel<true> : encoder_tma2_kernel<false>;
  kernel<<<grid, row_layout(d).threads, smem, stream>>>(
      mode, F, d, pairs, static_cast<const uint16_t*>(xc16), gval, W, static_cast<uint16_t*>(W16), mo, b, bm, bv,
      adam, bias_adam, clip, gate, fire_threshold, fire_count, bdec_partial, norm_partial, dense, S, gb_scratch);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (mode == LatentMode::NormOnly) return cudaSuccess;
  return adam_vector(F, b, bm, bv, gb_scratch, bias_adam, clip, gate, stream);
}

}  // namespace mlxterp::cuda_kernels

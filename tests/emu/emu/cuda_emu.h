// A tiny CUDA emulator for checking the logic of src/cuda/*.cu on a machine without a GPU: each CUDA thread
// of a block is a cooperative context (ucontext) on one OS thread, __syncthreads and warp shuffles are
// barriers, __shared__ variables are function statics (blocks run one after another). It checks indexing, barriers, reductions and the algorithms; not speed, not the memory model
// of a real GPU. Used only by tests/emu/run_emu.sh (compiled with -DMLXTERP_CUDA_EMULATE).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <vector>

// ---- runtime API subset --------------------------------------------------------------------------------
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
using cudaStream_t = void*;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 3;  // a small "GPU": grid-stride loops get exercised
  return cudaSuccess;
}
template <class F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int bytes) {
  return bytes <= 256 * 1024 ? cudaSuccess : cudaErrorInvalidValue;  // MLXTERP_DYNAMIC_SMEM's size
}

// ---- qualifiers -----------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ---- vector types ------------------------------------------------------------------------------------------
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct __nv_bfloat162 { uint16_t x, y; };

inline uint16_t emu_f2bf_rn(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                            // round to nearest even
  return uint16_t(u >> 16);
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {emu_f2bf_rn(lo), emu_f2bf_rn(hi)}; }

inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __popc(unsigned v) { return std::popcount(v); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::max;
using std::min;

template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }

// ---- threads, blocks and barriers ----------------------------------------------------------------------------
// Cooperative: every CUDA thread of a block is a ucontext on one OS thread. A thread runs until it reaches a
// barrier (__syncthreads, or a warp shuffle, which syncs its warp), then the next ready thread runs, in a
// shuffled order each round (so a missing barrier shows up as a wrong result). A barrier only some of its
// threads reach is a deadlock: reported, then abort().
#include <cstdio>
#include <random>
#include <ucontext.h>

struct EmuDim { unsigned x = 0, y = 1, z = 1; };
inline EmuDim threadIdx, blockIdx, blockDim, gridDim;

namespace mlxterp_emu {

enum class State { Ready, WaitBlock, WaitWarp, Done };

struct Scheduler {
  std::vector<ucontext_t> ctx;
  std::vector<State> state;
  std::vector<uint32_t> warp_buf;
  ucontext_t main_ctx;
  unsigned current = 0;
  std::function<void()> body;
  std::mt19937 rng{12345};
};
inline Scheduler* g_sched = nullptr;

// Thread stacks, allocated once (untouched pages cost nothing) and reused by every launch.
constexpr size_t kStackBytes = 128 * 1024;
inline char* stack_for(unsigned t) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while (pool.size() <= t) pool.emplace_back(new char[kStackBytes]);
  return pool[t].get();
}

inline void yield_as(State s) {
  Scheduler& S = *g_sched;
  const unsigned me = S.current;
  S.state[me] = s;
  swapcontext(&S.ctx[me], &S.main_ctx);
  threadIdx.x = me;
}

inline void thread_entry() {
  g_sched->body();
  g_sched->state[g_sched->current] = State::Done;
  // returning resumes uc_link (the scheduler)
}

template <class F>
void launch(unsigned grid, unsigned block, F&& body) {
  if (block == 0 || block % 32 != 0 || block > 1024) std::abort();  // the kernels use whole warps
  Scheduler S;
  S.body = [&body] { body(); };
  S.ctx.resize(block);
  S.state.resize(block);
  S.warp_buf.assign(block, 0);
  g_sched = &S;
  gridDim.x = grid;
  blockDim.x = block;
  std::vector<unsigned> order(block);
  std::iota(order.begin(), order.end(), 0u);
  for (unsigned g = 0; g < grid; ++g) {
    blockIdx.x = g;
    for (unsigned t = 0; t < block; ++t) {
      getcontext(&S.ctx[t]);
      S.ctx[t].uc_stack.ss_sp = stack_for(t);
      S.ctx[t].uc_stack.ss_size = kStackBytes;
      S.ctx[t].uc_link = &S.main_ctx;
      makecontext(&S.ctx[t], thread_entry, 0);
      S.state[t] = State::Ready;
    }
    for (;;) {
      std::shuffle(order.begin(), order.end(), S.rng);
      bool ran = false;
      for (unsigned t : order) {
        if (S.state[t] != State::Ready) continue;
        ran = true;
        S.current = t;
        threadIdx.x = t;
        swapcontext(&S.main_ctx, &S.ctx[t]);
      }
      if (ran) continue;
      // Everyone is waiting or done: release a warp that is all at a shuffle, else the block barrier.
      bool released = false;
      for (unsigned w = 0; w < block / 32; ++w) {
        bool all = true;
        for (unsigned l = 0; l < 32; ++l) all = all && S.state[w * 32 + l] == State::WaitWarp;
        if (all) {
          for (unsigned l = 0; l < 32; ++l) S.state[w * 32 + l] = State::Ready;
          released = true;
        }
      }
      if (released) continue;
      unsigned waiting = 0, done = 0;
      for (State s : S.state) waiting += s == State::WaitBlock, done += s == State::Done;
      if (done == block) break;
      if (waiting == block) {
        for (State& s : S.state) s = State::Ready;
        continue;
      }
      std::fprintf(stderr, "cuda_emu: deadlock in block %u: %u threads at __syncthreads, %u done, %u at a warp "
                           "shuffle (a barrier under divergent control flow)\n", g, waiting, done,
                   block - waiting - done);
      std::abort();
    }
  }
  g_sched = nullptr;
}

// Two-phase exchange through the warp's buffer: publish, barrier, read, barrier.
template <class T>
inline T exchange(T v, int src_lane, bool keep_own) {
  static_assert(sizeof(T) == 4);
  const unsigned t = threadIdx.x, warp = t >> 5;
  g_sched->warp_buf[t] = std::bit_cast<uint32_t>(v);
  yield_as(State::WaitWarp);
  T r = keep_own ? v : std::bit_cast<T>(g_sched->warp_buf[warp * 32 + unsigned(src_lane)]);
  yield_as(State::WaitWarp);
  return r;
}

inline cudaError_t stable_sort_pairs(const int* kin, int* kout, const uint64_t* vin, uint64_t* vout, int n) {
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return unsigned(kin[a]) < unsigned(kin[b]); });
  for (int i = 0; i < n; ++i) {
    kout[i] = kin[idx[i]];
    vout[i] = vin[idx[i]];
  }
  return cudaSuccess;
}

}  // namespace mlxterp_emu

inline void __syncthreads() { mlxterp_emu::yield_as(mlxterp_emu::State::WaitBlock); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
  const int lane = int(threadIdx.x & 31);
  return mlxterp_emu::exchange(v, lane ^ o, false);
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, int o) {
  const int lane = int(threadIdx.x & 31);
  return mlxterp_emu::exchange(v, lane - o, lane < o);
}

// One OS thread, and threads switch only at barriers: a plain add is atomic here.
template <class T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}

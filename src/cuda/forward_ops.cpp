// Dispatch for the fused forward kernels (forward_ops.hpp). Compiled in every build: without the CUDA
// kernels every op declines (returns an undefined tensor) and the models run their libtorch ops.
#include "cuda/forward_ops.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

#ifdef MLXTERP_HAVE_CUDA_KERNELS
#include "cuda/binding.hpp"
#endif

namespace mlxterp::forward_ops {

namespace {
std::atomic<int> g_enabled{-1};  // -1: not read from the environment yet
}  // namespace

bool enabled() {
  int e = g_enabled.load(std::memory_order_relaxed);
  if (e < 0) {
    const char* env = std::getenv("MLXTERP_FUSED_FORWARD");
    e = (env && std::strcmp(env, "0") == 0) ? 0 : 1;
    g_enabled.store(e, std::memory_order_relaxed);
  }
  return e == 1;
}

void set_enabled(bool on) { g_enabled.store(on ? 1 : 0, std::memory_order_relaxed); }

#ifndef MLXTERP_HAVE_CUDA_KERNELS

bool built() { return false; }
at::Tensor rms_norm(const at::Tensor&, const at::Tensor&, double, bool) { return {}; }
at::Tensor silu_mul(const at::Tensor&, const at::Tensor&) { return {}; }
at::Tensor rope(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }

#else

namespace K = mlxterp::cuda_kernels;

namespace {

using cuda_binding::current_stream;

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// A bf16 device tensor the kernels can take; no autograd (the fused ops have no backward).
bool usable(const at::Tensor& t) {
  return MLXTERP_ON_GPU(t) && t.scalar_type() == at::kBFloat16 && !t.requires_grad() && t.numel() > 0;
}

}  // namespace

bool built() { return true; }

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one) {
  if (!enabled() || !usable(x) || !usable(w) || x.device() != w.device() || x.dim() < 1) return {};
  const int64_t d = x.size(-1);
  if (d % 8 != 0 || w.dim() != 1 || w.size(0) != d || !x.is_contiguous() || !w.is_contiguous() || !aligned16(x) ||
      !aligned16(w))
    return {};
  MLXTERP_DEVICE_GUARD(x.device());
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  MLXTERP_CUDA_OK_IN("forward_ops", K::rms_norm_bf16(x.data_ptr(), w.data_ptr(), out.data_ptr(), x.numel() / d,
                                                    int(d), float(eps), plus_one, current_stream()));
  return out;
}

at::Tensor silu_mul(const at::Tensor& g, const at::Tensor& u) {
  if (!enabled() || !usable(g) || !usable(u) || g.device() != u.device() || !g.sizes().equals(u.sizes())) return {};
  if (!g.is_contiguous() || !u.is_contiguous() || g.numel() % 8 != 0 || !aligned16(g) || !aligned16(u)) return {};
  MLXTERP_DEVICE_GUARD(g.device());
  at::Tensor out = at::empty_like(g, at::MemoryFormat::Contiguous);
  MLXTERP_CUDA_OK_IN("forward_ops",
                     K::silu_mul_bf16(g.data_ptr(), u.data_ptr(), out.data_ptr(), g.numel(), current_stream()));
  return out;
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (!enabled() || !usable(x) || x.dim() != 4 || x.stride(3) != 1) return {};
  for (const at::Tensor* t : {&cos, &sin})
    if (!MLXTERP_ON_GPU(*t) || t->device() != x.device() || t->scalar_type() != at::kFloat || t->dim() != 3 ||
        t->stride(2) != 1 || t->requires_grad())
      return {};
  const int64_t B = x.size(0), T = x.size(2), d = x.size(3), rot = cos.size(2);
  if (!cos.sizes().equals(sin.sizes()) || cos.stride(0) != sin.stride(0) || cos.stride(1) != sin.stride(1) ||
      (cos.size(0) != B && cos.size(0) != 1) || cos.size(1) != T || rot % 2 != 0 || rot < 2 || rot > d)
    return {};
  MLXTERP_DEVICE_GUARD(x.device());
  at::Tensor out = at::empty_like(x);  // x's layout (a transposed view stays one): SDPA reads either
  if (out.stride(3) != 1) out = at::empty(x.sizes(), x.options());
  K::RopeShape s{};
  s.B = B;
  s.H = x.size(1);
  s.T = T;
  s.d = int(d);
  s.rot = int(rot);
  for (int i = 0; i < 3; ++i) {
    s.xs[i] = x.stride(i);
    s.os[i] = out.stride(i);
  }
  s.cs[0] = cos.size(0) == 1 ? 0 : cos.stride(0);
  s.cs[1] = cos.stride(1);
  MLXTERP_CUDA_OK_IN("forward_ops", K::rope_bf16(x.data_ptr(), out.data_ptr(), cos.data_ptr<float>(),
                                                sin.data_ptr<float>(), s, current_stream()));
  return out;
}

#endif  // MLXTERP_HAVE_CUDA_KERNELS

}  // namespace mlxterp::forward_ops

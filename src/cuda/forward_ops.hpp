// Fused CUDA kernels for the elementwise parts of the transformer forward (RMSNorm, SiLU(gate) * up,
// rotary embedding) on bf16 tensors. Each function returns an undefined tensor when it does not apply
// (no CUDA kernels in this build, a CPU tensor, another dtype or layout, or turned off), and the caller then
// runs the libtorch ops it stands for. Results equal those ops' (same bf16 roundings, in HF's order); the
// RMSNorm's sum of squares is reduced in another order, so an element can differ by one bf16 ulp.
#pragma once

#include <ATen/ATen.h>

namespace mlxterp::forward_ops {

// True in a build with the CUDA kernels (-DMLXTERP_CUDA=ON).
bool built();
// On unless MLXTERP_FUSED_FORWARD=0 is set; set_enabled overrides it (tests and benchmarks compare both).
bool enabled();
void set_enabled(bool on);

// x [..., d] bf16, w [d] bf16: blocks::rms_norm(x, w, eps, plus_one).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one);
// g, u same shape, bf16: at::silu(g) * u.
at::Tensor silu_mul(const at::Tensor& g, const at::Tensor& u);
// x [B, H, T, d] bf16 (last dim contiguous), cos / sin [B, T, rot] float32: blocks::apply_rope(x, cos, sin).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace mlxterp::forward_ops

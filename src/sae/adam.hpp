// The SAE trainer's AdamW on one tensor (src/sae/step.cpp). Internal: declared here for the tests, which run
// both of its branches on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "mlxterp/sae_step.hpp"

namespace mlxterp::sae_detail {

// AdamW with SaeStepArgs' lr, betas and eps (and weight_decay when `decay`) at Adam step t >= 1 (bias
// corrections 1 - beta^t), where ok ([] bool) is true; p, m, v unchanged elsewhere. p, g: float32, any shape.
//   in_place: read ok on the host and update in place (CPU tensors: free to read, torch.optim.Adam's order);
//             else compute, then select with at::where (no synchronisation with the device).
// bfloat16 m, v (the weight matrices' moments: matrix = 0 W_enc, 1 W_dec): upcast, updated in float32 by the
// same formulas, used unrounded for p, then stored with sae_kernels::round_bf16_stochastic and the hash of
// moment_seed(t, matrix) (sae_kernels.hpp), so the CUDA step and this one store the same bits.
void adam_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const at::Tensor& ok,
                 const SaeStepArgs& a, int64_t t, bool decay, int matrix, bool in_place);

}  // namespace mlxterp::sae_detail

// Shared by the reference step (sae_kernels.cpp) and the CUDA binding (sae_kernels_cuda.cpp).
#pragma once

#include "mlxterp/sae_kernels.hpp"

namespace mlxterp::sae_kernels::detail {

// Shapes, dtypes and devices of a step's inputs; throws mlxterp::Error naming `where`.
void check_step_inputs(const Params& p, const AdamState& s, const at::Tensor& since_fired, const at::Tensor& x,
                       const StepConfig& c, const char* where);

}  // namespace mlxterp::sae_kernels::detail
